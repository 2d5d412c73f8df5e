package l4

import (
	"encoding/binary"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
)

// Buffer pool.
//
// Frames travel through the pipeline as *Buf: references into one big
// preallocated []byte, never copied between RX and TX. A BufPool is created
// once with a fixed number of buffers and never grows: Get returns nil when
// it is exhausted, and the caller counts a drop.
//
// Free buffers live in two places:
//
//   - per-goroutine BufCaches: a plain LIFO array owned by one goroutine
//     (an RX worker that gets buffers, a TX goroutine that releases them).
//     Get and Release on a cache touch no shared memory except the buffer
//     itself;
//   - the pool's shared store: a lock-free stack (Treiber stack with a
//     generation tag against ABA) of *chains* of up to BufCacheBatch
//     buffers. A cache refills and flushes a whole chain with one CAS, so
//     the only shared, contended word is touched once per 64 buffers.
//
// Buffers flow RX cache → ring → TX cache → shared store → RX cache. A chain
// is linked through the buffers' own headers, so the store needs no memory
// of its own and nothing is ever allocated after NewBufPool.
//
// Reference counting: a buffer handed out by Get has a count of 1. A frame
// flooded to N ports is Retain(N-1)'d and then released N times; the last
// release returns it. Releasing a free buffer (count already 0) is a bug in
// the caller; it is never allowed to corrupt the pool: the release is
// ignored and counted in BufPoolStats.DoubleFree, which tests assert to be 0.
// (A stale release of a buffer that was already handed out again cannot be
// told apart from a legitimate one; the API makes it hard to hold such a
// reference: the pipeline's only way to give up a buffer is Release.)
//
// The reserve. SetReserve(n) keeps n buffers of the shared store for
// unlimited caches (NewCache: the NIC's RX workers): a limited cache
// (NewLimitedCache: endpoints' RX workers) refills only while the shared
// store holds more than the reserve plus two chains, and limited refills
// are serialised, so that the reserve can be dipped into by at most one
// chain, when an unlimited cache pops between the check and the pop. So
// however many endpoints send at once, the NIC's receive path finds
// buffers.

// DefaultBufSize is the capacity of a buffer when NewBufPool is given 0:
// a full 1518-byte Ethernet frame (with VLAN tag) and room to spare, and
// half of a 4 KiB page, as AF_XDP UMEM frames are.
const DefaultBufSize = 2048

// BufCacheBatch is the number of buffers a BufCache moves to or from the
// pool's shared store at a time. A cache holds at most 2*BufCacheBatch
// buffers; size a pool as (sum of ring capacities) + (buffers in flight in
// workers) + (number of caches) * 2 * BufCacheBatch.
const BufCacheBatch = 64

// bufMaxSize bounds the capacity of one buffer (jumbo frames are 9 KiB; a
// GSO super-packet is 64 KiB).
const bufMaxSize = 1 << 20

// bufMaxCount bounds the number of buffers (16 Mi: 32 GiB of 2 KiB
// buffers); indices are stored +1 in 32 bits.
const bufMaxCount = 1 << 24

// bufStride aligns each buffer's data to a cache line.
const bufStride = 64

// ErrBufPoolConfig is returned (wrapped) by NewBufPool for an invalid count or size.
var ErrBufPoolConfig = errors.New("l4: invalid buffer pool configuration")

type bufConfigError string

func (e bufConfigError) Error() string { return ErrBufPoolConfig.Error() + ": " + string(e) }
func (e bufConfigError) Unwrap() error { return ErrBufPoolConfig }

// Buf is one frame buffer of a BufPool. Its zero value (and a nil *Buf) is
// safe to call methods on: it has no capacity and releasing it does nothing.
//
// The header is exactly 64 bytes so that the reference counts of
// neighbouring buffers, touched by different TX goroutines, do not share a
// cache line (the []Buf array of a large pool is page-aligned).
type Buf struct {
	data      []byte        // full capacity; len(data) == cap(data), fixed
	n         int32         // used length, 0 <= n <= len(data)
	ref       atomic.Int32  // 0: free (in a cache or the shared store)
	idx       uint32        // index of this buffer in its pool
	next      uint32        // chain link, idx+1 of the next buffer (0: end); owner-written
	nextChain atomic.Uint32 // stack link, idx+1 of the next chain's head (0: end)
	chainLen  uint32        // number of buffers in the chain this buffer heads
	pool      *BufPool
	ts        int64 // receive time, Unix nanoseconds, when the pipeline has a Tap
}

// TapRecord is what the pipeline noted about a frame it handed to its Tap:
// the port it came from and the switch's verdict.
type TapRecord struct {
	In      Owner   // the port the frame came from
	Verdict Verdict // Release is not kept
}

// Pool returns the pool the buffer belongs to (nil for a nil Buf): the
// PCAP_LOG writer tells the frames of the switch domains apart by it.
func (b *Buf) Pool() *BufPool {
	if b == nil {
		return nil
	}
	return b.pool
}

// Tapped returns the record of a frame that the pipeline handed to its
// Tap (Tap.Drain's frames); the zero record otherwise. The records live
// beside the buffers (the pool's tap array, made only for a pipeline with
// a Tap), so that a Buf stays one cache line.
func (b *Buf) Tapped() TapRecord {
	if b == nil || b.pool == nil || b.pool.tap == nil {
		return TapRecord{}
	}
	return b.pool.tap[b.idx]
}

// setTapped notes rec for b; the pool has a tap array.
func (b *Buf) setTapped(rec TapRecord) { b.pool.tap[b.idx] = rec }

// Time returns the receive time in Unix nanoseconds that the pipeline
// stamped on the frame (only when it has a Tap), or 0.
func (b *Buf) Time() int64 {
	if b == nil {
		return 0
	}
	return b.ts
}

// Bytes returns the frame: the first Len bytes of the buffer.
func (b *Buf) Bytes() []byte {
	if b == nil {
		return nil
	}
	return b.data[:b.n]
}

// Len returns the length of the frame.
func (b *Buf) Len() int {
	if b == nil {
		return 0
	}
	return int(b.n)
}

// SetLen sets the length of the frame, after receiving into Data. n is
// clamped to [0, Cap()]; SetLen never panics.
func (b *Buf) SetLen(n int) {
	if b == nil {
		return
	}
	if n < 0 {
		n = 0
	} else if n > len(b.data) {
		n = len(b.data)
	}
	b.n = int32(n)
}

// Cap returns the capacity of the buffer: the largest frame it holds.
func (b *Buf) Cap() int {
	if b == nil {
		return 0
	}
	return len(b.data)
}

// Data returns the whole buffer (length Cap()), to receive a frame into;
// call SetLen afterwards. Its capacity is limited to Cap(), so an append
// can never run into the neighbouring buffer.
func (b *Buf) Data() []byte {
	if b == nil {
		return nil
	}
	return b.data
}

// Index returns the position of the buffer in its pool, 0 <= Index() <
// BufPoolStats.Bufs: the data starts at byte Index()*stride of the pool's
// backing array (for backends that register it as UMEM, say).
func (b *Buf) Index() int {
	if b == nil {
		return 0
	}
	return int(b.idx)
}

// Refs returns the current reference count (0 when free). For tests and
// assertions; racy by nature when other goroutines hold references.
func (b *Buf) Refs() int32 {
	if b == nil {
		return 0
	}
	return b.ref.Load()
}

// Retain adds n references to a buffer that the caller holds, for fan-out:
// a frame sent to N ports is retained N-1 times and released once by each
// port. n <= 0 does nothing. Retaining a free buffer is a bug; it is ignored
// and counted as a DoubleFree, never resurrecting the buffer.
func (b *Buf) Retain(n int32) {
	if b == nil || n <= 0 {
		return
	}
	for {
		r := b.ref.Load()
		if r <= 0 || r > bufMaxRefs-n {
			b.misuse()
			return
		}
		if b.ref.CompareAndSwap(r, r+n) {
			return
		}
	}
}

// bufMaxRefs keeps the count far from overflow.
const bufMaxRefs = 1 << 30

// Release drops one reference; the last one returns the buffer straight to
// its pool's shared store (one CAS on the shared stack). Goroutines that
// release at a high rate (TX) should call BufCache.Release or ReleaseBatch
// instead, which keep the buffer in a local cache.
func (b *Buf) Release() {
	if b.unref() && b.pool != nil {
		b.pool.pushChain(b, b, 1)
	}
}

// unref drops one reference and reports whether it was the last one. A
// release of a free buffer is counted and ignored.
func (b *Buf) unref() bool {
	if b == nil {
		return false
	}
	for {
		r := b.ref.Load()
		if r <= 0 {
			b.misuse()
			return false
		}
		if b.ref.CompareAndSwap(r, r-1) {
			return r == 1
		}
	}
}

func (b *Buf) misuse() {
	if b.pool != nil {
		b.pool.doubleFree.Add(1)
	}
}

// BufPool is a fixed set of preallocated buffers. Its methods are safe for
// concurrent use; hot paths go through a BufCache per goroutine.
type BufPool struct {
	_ [bufPad]byte
	// The shared store: a Treiber stack of chains. head packs a generation
	// tag (high 32 bits, incremented by every successful CAS, so a stale
	// CAS fails even if the same buffer is on top again: no ABA) and the
	// index+1 of the top chain's first buffer (low 32 bits, 0: empty).
	head   atomic.Uint64
	shared atomic.Int64 // buffers in the shared store
	_      [bufPad]byte

	bufs    []Buf
	backing []byte
	size    int
	stride  int
	tap     []TapRecord // per buffer, with a Tap only (enableTap): written by the RX worker that taps it, read by the tap's consumer

	// Slow-path counters, shared: touched only on misuse or exhaustion.
	doubleFree atomic.Uint64
	exhausted  atomic.Uint64
	refused    atomic.Uint64 // limited refills refused to keep the reserve
	reserve    atomic.Int64  // buffers of the shared store kept for unlimited caches
	limitedMu  sync.Mutex    // serialises limited refills
	_          [bufPad]byte
}

// enableTap makes the per-buffer tap records (before any frame moves).
func (p *BufPool) enableTap() { p.tap = make([]TapRecord, len(p.bufs)) }

// bufPad separates groups of fields written by different goroutines; see
// ringPad for why 128 rather than 64 bytes.
const bufPad = 128

// BufPoolStats are a pool's counters; safe to read from any goroutine.
type BufPoolStats struct {
	Bufs       int    // number of buffers
	BufSize    int    // capacity of each buffer
	SharedFree int    // free buffers in the shared store (not counting caches)
	Exhausted  uint64 // times a cache found itself and the shared store empty (Get nil, GetBatch short)
	DoubleFree uint64 // releases or retains of a free buffer: a bug, must stay 0
	Reserve    int    // buffers of the shared store kept for unlimited caches (SetReserve)
	Reserved   uint64 // refills of limited caches refused because only the reserve was left
}

// NewBufPool allocates count buffers of size bytes each (0: DefaultBufSize)
// in one backing array. All buffers start in the shared store.
func NewBufPool(count, size int) (*BufPool, error) {
	if size == 0 {
		size = DefaultBufSize
	}
	if count <= 0 || count > bufMaxCount {
		return nil, bufConfigError("count " + strconv.Itoa(count) + " not in [1, 2^24]")
	}
	if size < 0 || size > bufMaxSize {
		return nil, bufConfigError("size " + strconv.Itoa(size) + " not in [1, 1 MiB]")
	}
	stride := (size + bufStride - 1) / bufStride * bufStride
	maxInt := int(^uint(0) >> 1)
	if count > maxInt/stride {
		return nil, bufConfigError("count*size overflows int") // 32-bit platforms
	}
	p := &BufPool{
		bufs:    make([]Buf, count),
		backing: make([]byte, count*stride),
		size:    size,
		stride:  stride,
	}
	for i := range p.bufs {
		b := &p.bufs[i]
		off := i * stride
		b.data = p.backing[off : off+size : off+size]
		b.idx = uint32(i)
		b.pool = p
	}
	// Seed the shared store with chains of BufCacheBatch buffers.
	var chain [BufCacheBatch]*Buf
	for i := 0; i < count; i += BufCacheBatch {
		j := min(i+BufCacheBatch, count)
		for k := i; k < j; k++ {
			chain[k-i] = &p.bufs[k]
		}
		p.linkChain(chain[:j-i])
		p.pushChain(&p.bufs[i], &p.bufs[j-1], uint32(j-i))
	}
	return p, nil
}

// Stats returns the pool's counters.
func (p *BufPool) Stats() BufPoolStats {
	return BufPoolStats{
		Bufs:       len(p.bufs),
		BufSize:    p.size,
		SharedFree: int(max(p.shared.Load(), 0)), // transiently off while a push or pop is in flight
		Exhausted:  p.exhausted.Load(),
		DoubleFree: p.doubleFree.Load(),
		Reserve:    int(p.reserve.Load()),
		Reserved:   p.refused.Load(),
	}
}

// SetReserve keeps n buffers of the shared store for unlimited caches (see
// the reserve above); n is clamped to [0, number of buffers].
func (p *BufPool) SetReserve(n int) {
	p.reserve.Store(int64(max(0, min(n, len(p.bufs)))))
}

// Backing returns the pool's whole backing array; buffer i is
// Backing()[i*Stride() : i*Stride()+BufSize]. For backends that register
// the memory with a device once (AF_XDP UMEM); never for per-frame access.
func (p *BufPool) Backing() []byte { return p.backing }

// Stride returns the distance in bytes between the starts of two buffers.
func (p *BufPool) Stride() int { return p.stride }

// A chain's members are listed in the data area of its first buffer (a
// free buffer's data is unused), as little-endian uint32 indices, when the
// buffers are large enough (bufListMin); otherwise they are linked through
// next. The list lets refill take a chain without walking it: the walk was
// a string of dependent cache misses on headers last written by another
// core, the largest cost in the pipeline's profile.
const bufListMin = 4 * BufCacheBatch

// linkChain makes bufs (at most BufCacheBatch, all free and owned by the
// caller) one chain headed by bufs[0].
func (p *BufPool) linkChain(bufs []*Buf) {
	if p.size >= bufListMin {
		d := bufs[0].data
		for i, b := range bufs[1:] {
			binary.LittleEndian.PutUint32(d[4*i:], b.idx)
		}
		return
	}
	for i := 0; i < len(bufs)-1; i++ {
		bufs[i].next = bufs[i+1].idx + 1
	}
	bufs[len(bufs)-1].next = 0
}

// pushChain pushes the chain headed by first (linked by linkChain; last is
// its last buffer, n its length) onto the shared store. The buffers must be
// free and owned by the caller.
func (p *BufPool) pushChain(first, last *Buf, n uint32) {
	if p.size < bufListMin {
		last.next = 0
	}
	first.chainLen = n
	for {
		old := p.head.Load()
		first.nextChain.Store(uint32(old))
		nw := (old>>32+1)<<32 | uint64(first.idx+1)
		if p.head.CompareAndSwap(old, nw) {
			p.shared.Add(int64(n))
			return
		}
	}
}

// popChain takes the top chain off the shared store, or returns nil.
func (p *BufPool) popChain() *Buf {
	for {
		old := p.head.Load()
		top := uint32(old)
		if top == 0 {
			return nil
		}
		b := &p.bufs[top-1]
		// b may be popped, used and pushed again by others between the
		// Load above and the CAS below; then the tag has changed and the
		// CAS fails. nextChain is atomic because it is read racily here.
		next := b.nextChain.Load()
		nw := (old>>32+1)<<32 | uint64(next)
		if p.head.CompareAndSwap(old, nw) {
			p.shared.Add(-int64(b.chainLen))
			return b
		}
	}
}

// NewCache returns a cache of free buffers for the calling goroutine. It
// may take the pool's reserve.
func (p *BufPool) NewCache() *BufCache {
	return &BufCache{pool: p}
}

// NewLimitedCache returns a cache that never takes the pool's reserve: it
// refills only while the shared store holds more than the reserve (see
// SetReserve).
func (p *BufPool) NewLimitedCache() *BufCache {
	return &BufCache{pool: p, limited: true}
}

// BufCache is a goroutine-local cache of free buffers of one pool: Get and
// Release use no atomics on shared memory and never lock. A BufCache must
// be used by one goroutine at a time (it is not safe for concurrent use).
// Buffers sitting in a cache are unavailable to other goroutines: call
// Flush when the owner goes idle for long or stops, or they are lost to
// the pool (not to the garbage collector) until then.
type BufCache struct {
	pool    *BufPool
	limited bool
	n       int
	bufs    [2 * BufCacheBatch]*Buf
}

// Get returns a buffer with a reference count of 1 and length 0, or nil if
// the pool is exhausted. It never blocks and never allocates.
func (c *BufCache) Get() *Buf {
	if c.n == 0 && !c.refill() {
		return nil
	}
	c.n--
	b := c.bufs[c.n]
	b.n = 0
	b.ref.Store(1)
	return b
}

// GetBatch fills dst with buffers as Get does and returns how many it got;
// fewer than len(dst) means the pool is exhausted.
func (c *BufCache) GetBatch(dst []*Buf) int {
	got := 0
	for got < len(dst) {
		if c.n == 0 && !c.refill() {
			break
		}
		k := min(c.n, len(dst)-got)
		for _, b := range c.bufs[c.n-k : c.n] {
			b.n = 0
			b.ref.Store(1)
		}
		copy(dst[got:], c.bufs[c.n-k:c.n])
		c.n -= k
		got += k
	}
	return got
}

// refill takes chains from the shared store until the cache holds at least
// BufCacheBatch buffers. Chains hold at most BufCacheBatch buffers, so the
// cache never overflows.
func (c *BufCache) refill() bool {
	if c.pool == nil {
		return false
	}
	for c.n < BufCacheBatch {
		b := c.pop()
		if b == nil {
			break
		}
		c.bufs[c.n] = b
		c.n++
		if c.pool.size >= bufListMin {
			d := b.data
			for i := range int(b.chainLen) - 1 {
				c.bufs[c.n] = &c.pool.bufs[binary.LittleEndian.Uint32(d[4*i:])]
				c.n++
			}
			continue
		}
		for b.next != 0 {
			b = &c.pool.bufs[b.next-1]
			c.bufs[c.n] = b
			c.n++
		}
	}
	if c.n == 0 {
		c.pool.exhausted.Add(1)
		return false
	}
	return true
}

// pop takes a chain for the cache: for a limited cache only while more
// than the reserve is left.
func (c *BufCache) pop() *Buf {
	p := c.pool
	if !c.limited {
		return p.popChain()
	}
	p.limitedMu.Lock()
	defer p.limitedMu.Unlock()
	if p.shared.Load() < p.reserve.Load()+2*BufCacheBatch {
		p.refused.Add(1)
		return nil
	}
	return p.popChain()
}

// Release drops one reference to b; the last one puts b into the cache.
// A buffer of another pool goes to that pool's shared store.
func (c *BufCache) Release(b *Buf) {
	if !b.unref() {
		return
	}
	c.put(b)
}

// ReleaseBatch releases every buffer of bufs (nil entries are skipped).
func (c *BufCache) ReleaseBatch(bufs []*Buf) {
	for _, b := range bufs {
		if b.unref() {
			c.put(b)
		}
	}
}

func (c *BufCache) put(b *Buf) {
	if b.pool != c.pool {
		if b.pool != nil {
			b.pool.pushChain(b, b, 1)
		}
		return
	}
	if c.n == len(c.bufs) {
		// Flush the oldest half (the bottom of the LIFO); the most recently
		// released buffers are the ones still warm in this core's cache.
		c.flushBottom(BufCacheBatch)
	}
	c.bufs[c.n] = b
	c.n++
}

// flushBottom moves the k oldest buffers to the shared store as one chain.
func (c *BufCache) flushBottom(k int) {
	if k <= 0 {
		return
	}
	k = min(k, c.n)
	c.pool.linkChain(c.bufs[:k])
	c.pool.pushChain(c.bufs[0], c.bufs[k-1], uint32(k))
	copy(c.bufs[:], c.bufs[k:c.n])
	for i := c.n - k; i < c.n; i++ {
		c.bufs[i] = nil
	}
	c.n -= k
}

// Flush returns every cached buffer to the pool's shared store.
func (c *BufCache) Flush() {
	for c.n > 0 {
		c.flushBottom(BufCacheBatch)
	}
}

// Len returns the number of free buffers held by the cache.
func (c *BufCache) Len() int { return c.n }

// Buf returns buffer i of the pool (the inverse of Buf.Index), or nil when i
// is out of range. The pipeline uses it to turn the handles of held
// fragments back into buffers.
func (p *BufPool) Buf(i int) *Buf {
	if i < 0 || i >= len(p.bufs) {
		return nil
	}
	return &p.bufs[i]
}
