// Rings, buffers and wake-ups: the concurrency contract.
//
// The pipeline moves frames as *Buf from RX goroutines to TX goroutines
// through Rings, one Ring per (producer, consumer) pair. Who may call what:
//
//   - Ring: exactly one producer goroutine calls PushBatch/TryPushBatch and
//     exactly one consumer goroutine calls PopBatch, for the life of the
//     ring (handing an end to another goroutine needs a happens-before edge,
//     such as a channel send, between the old and the new owner). Len, Cap
//     and Stats are safe from any goroutine (metrics).
//   - Ownership of a *Buf moves with it: after a successful push the
//     producer must not touch the buffer; the frames PushBatch did not take
//     are still the caller's, to release. The consumer owns what it pops and
//     releases each buffer once (after Retain(n), n+1 times in total, by
//     whoever holds the references).
//   - BufPool: Stats, NewCache and Buf.Release are safe from any goroutine.
//     A BufCache belongs to one goroutine (RX workers Get from theirs, TX
//     goroutines Release into theirs); buffers move between caches through
//     the pool's lock-free shared store.
//   - Waker: one consumer goroutine calls Wait; any number of producers call
//     Wake after they push to a ring that this consumer drains.
//
// Nothing here blocks a producer, allocates after construction, makes a
// system call or panics on bad input: a full ring drops and counts, an
// exhausted pool returns nil, a double release is counted and ignored.

package l4

import (
	"errors"
	"strconv"
	"sync/atomic"
)

// ringPad separates the producer's and the consumer's fields. A cache line
// is 64 bytes, but Intel's adjacent-line (spatial) prefetcher fetches lines
// in aligned 128-byte pairs, so two hot fields 64 bytes apart still bounce
// between cores as a pair. The Go allocator does not align a Ring to 128
// bytes, so instead of aligning we put at least 128 bytes of padding
// between groups: no aligned 128-byte block can then hold fields of two
// groups.
const ringPad = 128

// ringMaxSize bounds the number of slots of a Ring.
const ringMaxSize = 1 << 30

// ErrRingSize is returned (wrapped) by NewRing for a size that is not a
// power of two in [2, 2^30].
var ErrRingSize = errors.New("l4: ring size must be a power of two in [2, 2^30]")

type ringSizeError int

func (e ringSizeError) Error() string {
	return ErrRingSize.Error() + ", got " + strconv.Itoa(int(e))
}
func (e ringSizeError) Unwrap() error { return ErrRingSize }

// Ring is a bounded single-producer single-consumer queue of *Buf.
//
// Indices are free-running uint64 counters (they never wrap in practice),
// masked into the slot array. The producer owns tail, the consumer owns
// head; each publishes its index with one atomic store per batch, and keeps
// a private copy of the other's index that it refreshes only when that copy
// says the ring is full (producer) or has fewer entries than asked for
// (consumer). So in steady state each side reads the other's cache line at
// most once per batch, often less.
//
// Counters: Pushed is the tail index and Popped the head index (no extra
// writes). PushBatch counts what it cannot enqueue as DroppedFull itself:
// the design (docs/architecture.md, "a full ring never blocks its producer") makes
// every frame that does not fit a drop, so the count cannot be forgotten by
// a caller; TryPushBatch is the variant that does not count, for producers
// that keep what did not fit and retry.
//
// HighWater is sampled where a side already reads the other's index (the
// consumer when it refreshes its copy of tail, the producer when it
// refreshes its copy of head for lack of space, which also records a full
// ring) and when Stats is called, so it costs no extra cross-core traffic.
// It is exact at each sample but can miss a short peak between samples.
type Ring struct {
	_ [ringPad]byte

	// Read-only after NewRing.
	slots []*Buf
	mask  uint64
	_     [ringPad]byte

	// Producer's group: written by the producer only.
	tail      atomic.Uint64 // next slot to fill; total pushed
	headCache uint64        // producer's copy of head
	dropped   atomic.Uint64
	hwProd    atomic.Uint64
	_         [ringPad]byte

	// Consumer's group: written by the consumer only.
	head      atomic.Uint64 // next slot to read; total popped
	tailCache uint64        // consumer's copy of tail
	hwCons    atomic.Uint64
	_         [ringPad]byte
}

// RingStats are a ring's counters; see Ring.
type RingStats struct {
	Pushed      uint64 // frames enqueued since NewRing
	Popped      uint64 // frames dequeued since NewRing
	DroppedFull uint64 // frames PushBatch could not enqueue because the ring was full
	HighWater   uint64 // highest fill level sampled
	Len         int    // current fill level
	Cap         int    // number of slots
}

// NewRing returns an empty ring with size slots. size must be a power of
// two in [2, 2^30].
func NewRing(size int) (*Ring, error) {
	if size < 2 || size > ringMaxSize || size&(size-1) != 0 {
		return nil, ringSizeError(size)
	}
	return &Ring{
		slots: make([]*Buf, size),
		mask:  uint64(size - 1),
	}, nil
}

// Cap returns the number of slots.
func (r *Ring) Cap() int { return len(r.slots) }

// Len returns the number of frames in the ring. Safe from any goroutine;
// from a goroutine other than the two ends the value may be stale.
func (r *Ring) Len() int {
	h := r.head.Load()
	t := r.tail.Load()
	// head is loaded first, so t >= h; but the consumer may have popped and
	// the producer pushed in between, so t-h may exceed the capacity.
	return int(min(t-h, uint64(len(r.slots))))
}

// PushBatch enqueues as many frames of bufs as fit, in order, and returns
// how many it took: bufs[:n] now belong to the consumer, bufs[n:] are still
// the caller's, who must release them. The frames that did not fit are
// counted in DroppedFull. PushBatch never blocks. Producer only.
func (r *Ring) PushBatch(bufs []*Buf) int {
	n := r.push(bufs)
	if n < len(bufs) {
		r.dropped.Add(uint64(len(bufs) - n))
	}
	return n
}

// TryPushBatch is PushBatch without counting drops: for a producer that
// keeps the frames that did not fit and retries them. Producer only.
func (r *Ring) TryPushBatch(bufs []*Buf) int {
	return r.push(bufs)
}

func (r *Ring) push(bufs []*Buf) int {
	want := uint64(len(bufs))
	if want == 0 {
		return 0
	}
	size := uint64(len(r.slots))
	t := r.tail.Load() // own index: a plain load on amd64/arm64
	free := size - (t - r.headCache)
	refreshed := false
	if free < want {
		r.headCache = r.head.Load()
		free = size - (t - r.headCache)
		refreshed = true
	}
	k := min(want, free)
	if k > 0 {
		i := t & r.mask
		// Copy in at most two runs: up to the end of the slot array, then
		// from its start.
		c := copy(r.slots[i:], bufs[:k])
		copy(r.slots, bufs[c:k])
		r.tail.Store(t + k) // publishes the slots to the consumer
	}
	if refreshed {
		if fill := t + k - r.headCache; fill > r.hwProd.Load() {
			r.hwProd.Store(fill)
		}
	}
	return int(k)
}

// PopBatch dequeues up to len(dst) frames into dst, in order, and returns
// how many. The caller owns them and releases each. Consumer only.
func (r *Ring) PopBatch(dst []*Buf) int {
	want := uint64(len(dst))
	if want == 0 {
		return 0
	}
	h := r.head.Load() // own index
	avail := r.tailCache - h
	if avail < want {
		r.tailCache = r.tail.Load()
		avail = r.tailCache - h
		if avail > r.hwCons.Load() {
			r.hwCons.Store(avail)
		}
	}
	k := min(want, avail)
	if k == 0 {
		return 0
	}
	i := h & r.mask
	c := copy(dst[:k], r.slots[i:])
	copy(dst[c:k], r.slots)
	r.head.Store(h + k) // hands the slots back to the producer
	return int(k)
}

// Stats returns the ring's counters. Safe from any goroutine.
func (r *Ring) Stats() RingStats {
	popped := r.head.Load()
	pushed := r.tail.Load()
	n := min(pushed-popped, uint64(len(r.slots)))
	return RingStats{
		Pushed:      pushed,
		Popped:      popped,
		DroppedFull: r.dropped.Load(),
		HighWater:   max(r.hwProd.Load(), r.hwCons.Load(), n),
		Len:         int(n),
		Cap:         len(r.slots),
	}
}
