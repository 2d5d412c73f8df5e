package l4

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// ftab is the hash table of IPv4 rules (key4): a flat array of 64-byte
// buckets with no pointer in it, so that a lookup reads one cache line
// (its bucket) and nothing else, and the garbage collector has nothing in
// it to mark.
//
// A bucket is eight words:
//
//	w0     the bucket's sequence number (low 32 bits: odd while a writer
//	       changes the bucket) and its overflow count (high 32 bits)
//	w1-w3  slot 0: the key's two words and the entry (entry|usedBit;
//	       0 when the slot is free)
//	w4-w6  slot 1
//	w7     unused
//
// A key lives in its home bucket (hash & mask) or, when that is full, in
// the first bucket after it with a free slot (linear probing). The
// overflow count of a bucket is the number of keys whose probe passed it,
// i.e. that live further on although their home bucket is this one or one
// before it: a lookup stops at the first bucket that neither holds its key
// nor has an overflow count, so a miss costs one bucket too, usually.
// Keys never move once placed (removal frees the slot and lowers the
// overflow counts along the key's path), except into a new array when the
// table grows.
//
// Readers take no lock and write nothing: per bucket they load w0, the six
// slot words and w0 again, and retry when w0 changed or was odd (a
// seqlock); every shared word is read and written with sync/atomic, so
// the race detector sees no race. Writers hold mu (one per table: a write
// changes at most a few buckets and takes a few hundred nanoseconds), make
// w0 odd, change the slot, and make w0 even again.
//
// Growth: when the table holds more than maxLoad4 rules per bucket, a
// goroutine makes an array of twice the buckets, publishes it next to the
// old one (readers then look in both) and copies the old array's rules
// into it, a chunk of buckets per hold of mu, so that writers (the data
// path's learning among them) wait for at most one chunk. The old array
// is left intact, minus the rules removed meanwhile (a remove deletes from
// both arrays), so a reader that still holds it finds every rule that
// lived there. A write therefore costs the same whatever the size of the
// table; only an insert into an array with a single free slot left (the
// table grew faster than the copy, or a walk held growth off) waits for
// the resize.
type ftab struct {
	state atomic.Pointer[fstate]
	n     atomic.Int64 // rules held
	hash  func(*key4) uint64
	mu    sync.Mutex // writers

	// resizeMu is held by a resize from its start to its end and by the
	// walks (each, removeIf), which must not see rules move.
	resizeMu sync.Mutex
}

type fstate struct {
	cur, old *farray // old: the array a resize under way copies from
}

type farray struct {
	mask uint64
	w    []atomic.Uint64 // bucketWords per bucket
}

const (
	bucketWords = 8
	slots4      = 2
	usedBit     = 1 << 63
	// A table grows at 1.5 rules per bucket (75 % of its slots): then a
	// lookup of a held key reads 1.3 buckets on average, in practice one
	// line, since a probe's next bucket is the next line.
	maxLoadNum, maxLoadDen = 3, 2
	// growChunk buckets are copied per hold of the writers' lock.
	growChunk = 256
)

func newFarray(nb int) *farray {
	return &farray{mask: uint64(nb - 1), w: make([]atomic.Uint64, nb*bucketWords)}
}

// bucket returns the words of bucket i&mask.
func (a *farray) bucket(i uint64) []atomic.Uint64 {
	o := (i & a.mask) * bucketWords
	return a.w[o : o+bucketWords : o+bucketWords]
}

func (a *farray) slots() int64 { return int64(a.mask+1) * slots4 }

// init makes an empty table of n buckets (a power of two).
func (t *ftab) init(hash func(*key4) uint64, n int) {
	t.hash = hash
	t.state.Store(&fstate{cur: newFarray(n)})
}

// get finds key k of hash h. It takes no lock, writes nothing and does
// not allocate.
func (t *ftab) get(h uint64, k *key4) (entry, bool) {
	st := t.state.Load()
	if st.old != nil {
		if e, ok := st.old.get(h, k); ok {
			return e, true
		}
	}
	return st.cur.get(h, k)
}

// first returns the first word of h's bucket in the current array, for a
// prefetch or a touching load.
func (t *ftab) first(h uint64) *atomic.Uint64 {
	a := t.state.Load().cur
	return &a.w[(h&a.mask)*bucketWords]
}

func (a *farray) get(h uint64, k *key4) (entry, bool) {
	i := h
	for range a.mask + 1 {
		b := a.bucket(i)
		s := b[0].Load()
		a0, b0, e0 := b[1].Load(), b[2].Load(), b[3].Load()
		a1, b1, e1 := b[4].Load(), b[5].Load(), b[6].Load()
		if s&1 != 0 || b[0].Load() != s {
			return a.getSlow(h, k) // a writer is changing a bucket: read carefully
		}
		if e0 != 0 && a0 == k.a && b0 == k.b {
			return entry(e0 &^ usedBit), true
		}
		if e1 != 0 && a1 == k.a && b1 == k.b {
			return entry(e1 &^ usedBit), true
		}
		if s>>32 == 0 {
			return 0, false
		}
		i++
	}
	return 0, false
}

// getSlow is get that waits out a writer bucket by bucket.
func (a *farray) getSlow(h uint64, k *key4) (entry, bool) {
	i := h
	for range a.mask + 1 {
		b := a.bucket(i)
		for spin := 1; ; spin++ {
			s := b[0].Load()
			a0, b0, e0 := b[1].Load(), b[2].Load(), b[3].Load()
			a1, b1, e1 := b[4].Load(), b[5].Load(), b[6].Load()
			if s&1 != 0 || b[0].Load() != s {
				if spin%64 == 0 {
					runtime.Gosched() // the writer may have lost its core
				}
				continue
			}
			if e0 != 0 && a0 == k.a && b0 == k.b {
				return entry(e0 &^ usedBit), true
			}
			if e1 != 0 && a1 == k.a && b1 == k.b {
				return entry(e1 &^ usedBit), true
			}
			if s>>32 == 0 {
				return 0, false
			}
			break
		}
		i++
	}
	return 0, false
}

// The writers' side: the caller holds t.mu.

// locate returns the position (probe counter, not masked) and slot of k,
// if held.
func (a *farray) locate(h uint64, k *key4) (uint64, int, bool) {
	i := h
	for range a.mask + 1 {
		b := a.bucket(i)
		for j := range slots4 {
			if b[3+3*j].Load() != 0 && b[1+3*j].Load() == k.a && b[2+3*j].Load() == k.b {
				return i, j, true
			}
		}
		if b[0].Load()>>32 == 0 {
			break
		}
		i++
	}
	return 0, 0, false
}

// setSlot writes slot j of bucket i inside the bucket's odd phase.
func (a *farray) setSlot(i uint64, j int, ka, kb, e uint64) {
	b := a.bucket(i)
	s := b[0].Load()
	b[0].Store(s&^0xffffffff | uint64(uint32(s)+1))
	b[1+3*j].Store(ka)
	b[2+3*j].Store(kb)
	b[3+3*j].Store(e)
	b[0].Store(s&^0xffffffff | uint64(uint32(s)+2))
}

// addOverflow adds d to bucket i's overflow count (one store: readers
// see w0 change and re-read the bucket).
func (a *farray) addOverflow(i uint64, d int64) {
	b := a.bucket(i)
	s := b[0].Load()
	b[0].Store(uint64(int64(s>>32)+d)<<32 | uint64(uint32(s)+2))
}

// place puts a key of hash h that the array does not hold into the first
// free slot from its home bucket on. The array has a free slot. The
// overflow counts along the way go up before the key is visible.
func (a *farray) place(h, ka, kb, e uint64) {
	for i := h; ; i++ {
		b := a.bucket(i)
		for j := range slots4 {
			if b[3+3*j].Load() == 0 {
				for d := h; d != i; d++ {
					a.addOverflow(d, 1)
				}
				a.setSlot(i, j, ka, kb, e)
				return
			}
		}
	}
}

// free empties slot j of the bucket at position i of a key of hash h and
// lowers the overflow counts along its path.
func (a *farray) free(h, i uint64, j int) {
	a.setSlot(i, j, 0, 0, 0)
	for d := h; d != i; d++ {
		a.addOverflow(d, -1)
	}
}

// heldLocked returns the entry of k in st's arrays.
func (st *fstate) heldLocked(h uint64, k *key4) (entry, bool) {
	for _, a := range [2]*farray{st.cur, st.old} {
		if a == nil {
			continue
		}
		if i, j, ok := a.locate(h, k); ok {
			return entry(a.bucket(i)[3+3*j].Load() &^ usedBit), true
		}
	}
	return 0, false
}

// insert adds k with e unless k is held; then it returns the held entry.
func (t *ftab) insert(h uint64, k key4, e entry) (entry, bool) {
	t.mu.Lock()
	var st *fstate
	for {
		st = t.state.Load()
		if held, ok := st.heldLocked(h, &k); ok {
			t.mu.Unlock()
			return held, false
		}
		// One slot always stays free, so that probes end.
		if t.n.Load()+1 < st.cur.slots() {
			break
		}
		t.mu.Unlock()
		t.growNow()
		t.mu.Lock()
	}
	st.cur.place(h, k.a, k.b, uint64(e)|usedBit)
	t.n.Add(1)
	if st.old == nil && t.n.Load()*maxLoadDen > st.cur.slots()/slots4*maxLoadNum && t.resizeMu.TryLock() {
		go t.grow(st.cur) // a walk holds resizeMu: a later insert grows
	}
	t.mu.Unlock()
	return 0, true
}

// growNow waits for a resize or walk under way, then grows the table
// unless that made room.
func (t *ftab) growNow() {
	t.resizeMu.Lock()
	t.mu.Lock()
	st := t.state.Load()
	if st.old == nil && t.n.Load()+1 >= st.cur.slots() {
		t.mu.Unlock()
		t.grow(st.cur)
		return
	}
	t.mu.Unlock()
	t.resizeMu.Unlock()
}

// grow makes the table twice as big as from, the current array. The
// caller holds resizeMu, which grow releases when it is done.
func (t *ftab) grow(from *farray) {
	defer t.resizeMu.Unlock()
	to := t.startGrow(from)
	for start := uint64(0); start <= from.mask; start += growChunk {
		t.copyChunk(from, to, start)
	}
	t.endGrow(to)
}

// startGrow publishes a new array of twice from's buckets next to from.
func (t *ftab) startGrow(from *farray) *farray {
	to := newFarray(2 * int(from.mask+1)) // zeroed: outside the lock
	t.mu.Lock()
	t.state.Store(&fstate{cur: to, old: from})
	t.mu.Unlock()
	return to
}

// copyChunk copies the rules of growChunk buckets of from, from bucket
// start on, into to.
func (t *ftab) copyChunk(from, to *farray, start uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := start; i <= min(start+growChunk-1, from.mask); i++ {
		b := from.bucket(i)
		for j := range slots4 {
			if e := b[3+3*j].Load(); e != 0 {
				k := key4{b[1+3*j].Load(), b[2+3*j].Load()}
				to.place(t.hash(&k), k.a, k.b, e)
			}
		}
	}
}

// endGrow retires the old array: readers that start now read only to.
func (t *ftab) endGrow(to *farray) {
	t.mu.Lock()
	t.state.Store(&fstate{cur: to})
	t.mu.Unlock()
}

// remove deletes k if ok(its entry) and returns the entry.
func (t *ftab) remove(h uint64, k key4, ok func(entry) bool) (entry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.state.Load()
	e, held := st.heldLocked(h, &k)
	if !held || !ok(e) {
		return 0, false
	}
	for _, a := range [2]*farray{st.cur, st.old} {
		if a == nil {
			continue
		}
		if i, j, found := a.locate(h, &k); found {
			a.free(h, i, j)
		}
	}
	t.n.Add(-1)
	return e, true
}

// removeIf deletes every rule for which drop is true and returns how many;
// drop is called with the writers' lock held. removed is called for each
// deleted rule once it is gone, without the lock.
func (t *ftab) removeIf(drop func(*key4, entry) bool, removed func(*key4, entry)) int {
	t.resizeMu.Lock() // waits out a resize; none starts during the walk
	defer t.resizeMu.Unlock()
	a := t.state.Load().cur
	n := 0
	var gone []slot[key4]
	for start := uint64(0); start <= a.mask; start += growChunk {
		gone = gone[:0]
		t.mu.Lock()
		for i := start; i <= min(start+growChunk-1, a.mask); i++ {
			b := a.bucket(i)
			for j := range slots4 {
				ev := b[3+3*j].Load()
				if ev == 0 {
					continue
				}
				k := key4{b[1+3*j].Load(), b[2+3*j].Load()}
				if e := entry(ev &^ usedBit); drop(&k, e) {
					h := t.hash(&k)
					a.free(h, h+(i-h)&a.mask, j)
					gone = append(gone, slot[key4]{k, e})
				}
			}
		}
		t.n.Add(int64(-len(gone)))
		t.mu.Unlock()
		n += len(gone)
		for j := range gone {
			removed(&gone[j].k, gone[j].e)
		}
	}
	return n
}

// each calls f for every rule, without a lock: it sees each bucket at one
// instant. No resize runs meanwhile (f must not insert).
func (t *ftab) each(f func(*key4, entry)) {
	t.resizeMu.Lock()
	defer t.resizeMu.Unlock()
	a := t.state.Load().cur
	for i := range a.mask + 1 {
		b := a.bucket(i)
		var s [slots4]slot[key4]
		for {
			w := b[0].Load()
			for j := range slots4 {
				s[j] = slot[key4]{key4{b[1+3*j].Load(), b[2+3*j].Load()}, entry(b[3+3*j].Load())}
			}
			if w&1 == 0 && b[0].Load() == w {
				break
			}
			runtime.Gosched()
		}
		for j := range s {
			if s[j].e != 0 {
				f(&s[j].k, s[j].e&^usedBit)
			}
		}
	}
}
