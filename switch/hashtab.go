package l4

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// htab is the hash table of a Table's IPv6 rules, keyed by a compact key
// (key6) that holds a rule's whole Key. (IPv4 rules, the bulk of the
// traffic, live in ftab, hashtab4.go, whose buckets hold no pointer;
// BenchmarkTableLayout compares the two with IPv4 keys.) It is a table of
// buckets, each a small immutable array of slots behind an atomic pointer.
//
// Readers (get) take no lock and write nothing: one atomic load of the
// table's state, one of the bucket pointer, and the bucket's slots, which
// for an IPv6 key span seven cache lines, of which a lookup reads one to
// three (the table holds 2 to 4 rules per bucket).
//
// Writers lock the stripe of the key's hash (nStripes mutexes), copy the
// one bucket they change (at most bucketSlots slots, a chain only when a
// bucket overflows) and publish the copy. A write therefore costs the same
// however many rules share a local port or however big the table is.
//
// Growth is incremental: when the table holds more than maxLoad rules per
// bucket, a writer publishes a state with a new array of twice the buckets and the
// old one; every later write first moves the bucket it needs and then two
// more (migrateSome), so that no write pays for the whole table. A reader
// that finds a bucket of the new array not yet moved (nil) reads the old
// array's, which stays valid until its bucket is moved. A moved bucket is
// never nil: an empty one is t.empty.
type htab[K comparable] struct {
	state atomic.Pointer[hstate[K]]
	n     atomic.Int64 // rules held
	hash  func(*K) uint64
	empty *bucket[K] // an empty bucket: in a resized array, nil means "not moved yet"
	smask uint64     // stripe of a hash: hash & smask

	// resizeMu is taken by a writer that starts a resize (TryLock: a writer
	// never waits for it) and by walks that must not race with one
	// (removeIf).
	resizeMu sync.Mutex
	stripes  [nStripes]sync.Mutex
}

const (
	// nStripes writer locks per table: bucket indices are hash & mask and
	// stripes hash & smask, and smask is at most the first array's mask
	// (arrays only grow), so all keys of a bucket (and of the buckets it
	// splits into) share a stripe.
	nStripes   = 512
	minBuckets = nStripes
	// bucketSlots slots per bucket, and the table doubles its buckets when
	// it holds more than maxLoad rules per bucket: 2 to 4 rules per bucket,
	// so that the array of bucket pointers is small (256 KB at 100,000
	// rules) and stays in a core's L2 cache, and a lookup's one likely miss
	// is the bucket itself. A bucket overflows into a chain rarely
	// (Poisson(4): 2% of buckets just before a resize, less after).
	// Measured against 4 slots and one rule per bucket: unbatched lookups
	// at 100,000 rules took about 20% less CPU (BENCHMARKS.md).
	bucketSlots = 8
	maxLoad     = 4
)

// hstate is a table's array, and during a resize the array it grows from.
type hstate[K comparable] struct {
	cur, old *barray[K]
	// Of the resize: the next old bucket to claim, and how many are moved.
	cursor, moved atomic.Int64
}

type barray[K comparable] struct {
	mask uint64
	b    []atomic.Pointer[bucket[K]]
}

type slot[K comparable] struct {
	k K
	e entry
}

// bucket is immutable once published. For IPv4 keys (BenchmarkTableLayout)
// it is 208 bytes: the count and the first two slots share the first
// cache line.
type bucket[K comparable] struct {
	n    int
	s    [bucketSlots]slot[K]
	next *bucket[K] // more slots, when this bucket overflowed
}

func newBarray[K comparable](n int) *barray[K] {
	return &barray[K]{mask: uint64(n - 1), b: make([]atomic.Pointer[bucket[K]], n)}
}

// init makes an empty table of n buckets (a power of two).
func (t *htab[K]) init(hash func(*K) uint64, n int) {
	t.hash = hash
	t.empty = &bucket[K]{}
	t.smask = uint64(min(n, nStripes) - 1)
	t.state.Store(&hstate[K]{cur: newBarray[K](n)})
}

// find returns the bucket where a key with hash h lives, for reading.
func (t *htab[K]) find(h uint64) *bucket[K] {
	st := t.state.Load()
	b := st.cur.b[h&st.cur.mask].Load()
	if b == nil && st.old != nil {
		b = st.old.b[h&st.old.mask].Load()
	}
	return b
}

// get finds key k of hash h. It takes no lock and does not allocate.
func (t *htab[K]) get(h uint64, k *K) (entry, bool) {
	for b := t.find(h); b != nil; b = b.next {
		for i := range b.n {
			if b.s[i].k == *k {
				return b.s[i].e, true
			}
		}
	}
	return 0, false
}

// lockedBucket locks the stripe of h and returns the pointer of h's bucket
// in the current array, moved there first if a resize is under way. The
// caller unlocks the stripe.
func (t *htab[K]) lockedBucket(h uint64) (*atomic.Pointer[bucket[K]], *sync.Mutex) {
	mu := &t.stripes[h&t.smask]
	mu.Lock()
	// The state is loaded under the stripe lock: moving a bucket takes the
	// lock too, so the bucket cannot move to a newer array while we hold it.
	st := t.state.Load()
	if st.old != nil {
		t.migrateLocked(st, h&st.old.mask)
	}
	return &st.cur.b[h&st.cur.mask], mu
}

// insert adds k with e unless k is held; then it returns the held entry.
func (t *htab[K]) insert(h uint64, k K, e entry) (entry, bool) {
	t.migrateSome()
	p, mu := t.lockedBucket(h)
	old := p.Load()
	for b := old; b != nil; b = b.next {
		for i := range b.n {
			if b.s[i].k == k {
				mu.Unlock()
				return b.s[i].e, false
			}
		}
	}
	p.Store(old.with(slot[K]{k, e}))
	mu.Unlock()
	t.n.Add(1)
	t.maybeGrow()
	return 0, true
}

// remove deletes k if ok(its entry) and returns the entry.
func (t *htab[K]) remove(h uint64, k K, ok func(entry) bool) (entry, bool) {
	p, mu := t.lockedBucket(h)
	defer mu.Unlock()
	old := p.Load()
	var gone entry
	found := false
	nb := old.without(t.empty, func(s *slot[K]) bool {
		if !found && s.k == k && ok(s.e) {
			gone, found = s.e, true
			return true
		}
		return false
	})
	if found {
		p.Store(nb)
		t.n.Add(-1)
	}
	return gone, found
}

// removeIf deletes every slot for which drop is true and returns how many;
// drop is called with a stripe lock held. removed is called for each
// deleted slot once its bucket is published without it.
func (t *htab[K]) removeIf(drop func(*K, entry) bool, removed func(*K, entry)) int {
	t.resizeMu.Lock() // no resize starts during the walk
	defer t.resizeMu.Unlock()
	t.finishResize()
	st := t.state.Load()
	n := 0
	var gone []slot[K]
	for i := range st.cur.b {
		mu := &t.stripes[uint64(i)&t.smask]
		mu.Lock()
		p := &st.cur.b[i]
		gone = gone[:0]
		nb := p.Load().without(t.empty, func(s *slot[K]) bool {
			if drop(&s.k, s.e) {
				gone = append(gone, *s)
				return true
			}
			return false
		})
		if len(gone) > 0 {
			p.Store(nb)
			t.n.Add(int64(-len(gone)))
			n += len(gone)
		}
		mu.Unlock()
		for j := range gone {
			removed(&gone[j].k, gone[j].e)
		}
	}
	return n
}

// each calls f for every slot. It sees each bucket at one instant.
func (t *htab[K]) each(f func(*K, entry)) {
	st := t.state.Load()
	for i := range st.cur.b {
		b := st.cur.b[i].Load()
		if b == nil && st.old != nil {
			// Not moved yet: its slots are in the old bucket, which holds
			// those of this bucket's sibling too; take only ours.
			for ob := st.old.b[uint64(i)&st.old.mask].Load(); ob != nil; ob = ob.next {
				for j := range ob.n {
					if t.hash(&ob.s[j].k)&st.cur.mask == uint64(i) {
						f(&ob.s[j].k, ob.s[j].e)
					}
				}
			}
			continue
		}
		for ; b != nil; b = b.next {
			for j := range b.n {
				f(&b.s[j].k, b.s[j].e)
			}
		}
	}
}

// maybeGrow starts a resize when the table holds more than maxLoad rules
// per bucket.
func (t *htab[K]) maybeGrow() {
	st := t.state.Load()
	if st.old != nil || t.n.Load() <= maxLoad*int64(len(st.cur.b)) || !t.resizeMu.TryLock() {
		return
	}
	defer t.resizeMu.Unlock()
	st = t.state.Load()
	if st.old != nil || t.n.Load() <= maxLoad*int64(len(st.cur.b)) {
		return
	}
	// The new array is zeroed memory (nil: not moved yet), so starting a
	// resize costs an allocation, not a pass over the table.
	t.state.Store(&hstate[K]{cur: newBarray[K](2 * len(st.cur.b)), old: st.cur})
}

// migrateSome moves two buckets of a resize under way, if any: a resize
// of n buckets is done after n/2 writes at the latest, long before the
// table (then maxLoad*n rules) has doubled again.
func (t *htab[K]) migrateSome() {
	st := t.state.Load()
	if st.old == nil {
		return
	}
	for range 2 {
		i := st.cursor.Add(1) - 1
		if i >= int64(len(st.old.b)) {
			return
		}
		mu := &t.stripes[uint64(i)&t.smask]
		mu.Lock()
		t.migrateLocked(st, uint64(i))
		mu.Unlock()
	}
}

// finishResize moves every bucket left of a resize under way and waits
// until it is complete. The caller holds resizeMu, so no other starts.
func (t *htab[K]) finishResize() {
	for {
		st := t.state.Load()
		if st.old == nil {
			return
		}
		for i := range st.old.b {
			mu := &t.stripes[uint64(i)&t.smask]
			mu.Lock()
			t.migrateLocked(st, uint64(i))
			mu.Unlock()
		}
	}
}

// migrateLocked moves old bucket i of st into its two buckets of the new
// array, unless that was done. The caller holds i's stripe lock.
func (t *htab[K]) migrateLocked(st *hstate[K], i uint64) {
	lo := &st.cur.b[i]
	if lo.Load() != nil {
		return // moved already
	}
	half := uint64(len(st.old.b))
	var a, b *bucket[K]
	for ob := st.old.b[i].Load(); ob != nil; ob = ob.next {
		for j := range ob.n {
			if t.hash(&ob.s[j].k)&half == 0 {
				a = a.with(ob.s[j])
			} else {
				b = b.with(ob.s[j])
			}
		}
	}
	if b == nil {
		b = t.empty
	}
	if a == nil {
		a = t.empty
	}
	// The high bucket first: a reader of it that sees nil reads the old
	// bucket, which is still complete; the low one last, since it is the
	// "moved" mark that writers check.
	st.cur.b[i+half].Store(b)
	lo.Store(a)
	if st.moved.Add(1) == int64(half) {
		t.state.CompareAndSwap(st, &hstate[K]{cur: st.cur})
	}
}

// with returns a copy of b with s added (b may be nil or empty).
func (b *bucket[K]) with(s slot[K]) *bucket[K] {
	switch {
	case b == nil || b.n == 0 && b.next == nil:
		nb := &bucket[K]{n: 1}
		nb.s[0] = s
		return nb
	case b.n < bucketSlots:
		nb := *b
		nb.s[nb.n] = s
		nb.n++
		return &nb
	}
	nb := &bucket[K]{n: 1, next: b} // full: a new head, the old chain shared
	nb.s[0] = s
	return nb
}

// without returns b without the slots for which drop is true (empty when
// none are left), or b itself when drop is true for none.
func (b *bucket[K]) without(empty *bucket[K], drop func(*slot[K]) bool) *bucket[K] {
	var keep [2 * bucketSlots]slot[K]
	var more []slot[K]
	k, gone := 0, false
	for c := b; c != nil; c = c.next {
		for i := range c.n {
			s := &c.s[i]
			switch {
			case drop(s):
				gone = true
			case k < len(keep):
				keep[k] = *s
				k++
			default:
				more = append(more, *s)
			}
		}
	}
	if !gone {
		return b
	}
	var nb *bucket[K]
	for _, s := range keep[:k] {
		nb = nb.with(s)
	}
	for _, s := range more {
		nb = nb.with(s)
	}
	if nb == nil {
		return empty
	}
	return nb
}

// mix is the multiply-and-fold step of the table's hash: the 128-bit
// product of x and y, its halves xored.
func mix(x, y uint64) uint64 {
	hi, lo := bits.Mul64(x, y)
	return hi ^ lo
}
