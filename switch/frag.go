package l4

import (
	"sync"
	"sync/atomic"
)

// Fragments: only the first fragment of an IP datagram carries the ports,
// so the switch remembers the first fragment's verdict by (source,
// destination, protocol, id) and sends the later fragments the same way.
// A later fragment that comes before its first (reordering) is held, up to
// FragHoldPerDatagram per datagram and FragMaxDatagrams datagrams, until the
// first one decides; the original dropped those.
//
// Held fragments pin pool buffers, and a remote sender chooses how many:
// so the store is bounded in bytes (each held fragment counts as a whole
// buffer), as Linux bounds its reassembly queues with ipfrag_high_thresh
// and ipfrag_low_thresh: when holding one more fragment would take the
// store over its limit, the datagrams that started holding first are
// evicted, oldest first, until a quarter of the limit is free; one source
// address may hold at most its own limit, and above it loses its own
// oldest datagrams. Evicted fragments are freed and counted
// (DropFragEvicted). A fragment is not held at all while the pool is down
// to the NIC's reserve.
//
// Fragments are rare, so this table is a plain mutex-protected map; it is
// never on the path of unfragmented frames.

const (
	// FragHoldPerDatagram bounds the fragments held for one datagram.
	FragHoldPerDatagram = 16
	// FragMaxDatagrams bounds the datagrams remembered at once.
	FragMaxDatagrams = 4096
	// FragTimeoutTicks is how many FragSweep calls an entry survives:
	// with one sweep a second, 30 s as Linux's ipfrag_time.
	FragTimeoutTicks = 30
)

// Default fragment store limits of a Switch used without a Pipeline
// (which configures them from its buffer pool).
const (
	defaultFragMemory    = 4 << 20
	defaultFragPerSource = defaultFragMemory / 4
)

type fragKey struct {
	src, dst Addr
	id       uint32
	proto    uint8
}

type fragEntry struct {
	key     fragKey
	decided bool
	verdict Verdict
	from    PortID // the port whose first fragment decided
	tick    uint32
	nheld   uint8
	held    [FragHoldPerDatagram]uint64

	// While nheld > 0 the entry is on two lists, oldest first: the
	// store's and its source's.
	prev, next   *fragEntry
	sprev, snext *fragEntry
	src          *fragSource
}

// fragSource is what one source address holds.
type fragSource struct {
	bytes      int64
	head, tail *fragEntry
}

// fragLimits bound the store; see PipelineConfig.FragMemory.
type fragLimits struct {
	total, perSource int64
	bufSize          int64 // bytes a held fragment counts for
	// mayHold reports whether a fragment may be held now (nil: always).
	mayHold func() bool
	// free releases an evicted fragment's handle. Without it the store
	// refuses fragments beyond its limits instead of evicting.
	free func(h uint64)
}

type fragTable struct {
	mu         sync.Mutex
	m          map[fragKey]*fragEntry
	srcs       map[Addr]*fragSource
	head, tail *fragEntry // entries holding fragments, oldest first
	bytes      int64
	lim        fragLimits
	spare      []*fragEntry  // forgotten entries, reused: a flood allocates nothing
	spareSrc   []*fragSource // the same for sources

	tick    atomic.Uint32
	evicted atomic.Uint64
	heldB   atomic.Int64 // bytes, for Stats without the lock
}

func newFragTable() *fragTable {
	return &fragTable{
		m:    make(map[fragKey]*fragEntry),
		srcs: make(map[Addr]*fragSource),
		lim:  fragLimits{total: defaultFragMemory, perSource: defaultFragPerSource, bufSize: DefaultBufSize},
	}
}

// configure sets the limits; the pipeline calls it before any frame.
func (t *fragTable) configure(l fragLimits) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l.bufSize <= 0 {
		l.bufSize = DefaultBufSize
	}
	t.lim = l
}

func keyOfFrag(f *Frame) fragKey {
	return fragKey{src: f.Src, dst: f.Dst, id: f.FragID, proto: f.FragProto}
}

func (t *fragTable) now() uint32 { return t.tick.Load() }

// remember stores the verdict of the first fragment that port from sent,
// and reports whether later fragments are held and wait for TakeHeld.
func (t *fragTable) remember(f *Frame, v Verdict, from PortID) (release bool) {
	k := keyOfFrag(f)
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[k]
	if e == nil {
		if len(t.m) >= FragMaxDatagrams {
			return false // forgetting a verdict only costs the later fragments
		}
		e = t.newEntry(k, now)
	}
	e.decided, e.verdict, e.from = true, v, from
	return e.nheld > 0
}

// sentBy returns the verdict of a later fragment f that port from sent: its
// datagram's, when from sent the first fragment (which passed the
// checks); otherwise
// DropFragForeign (an endpoint's fragments are never held: it sends its
// first fragment first).
func (t *fragTable) sentBy(f *Frame, from PortID) Verdict {
	k := keyOfFrag(f)
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.m[k]; e != nil && e.decided && e.from == from {
		v := e.verdict
		v.Release = false
		return v
	}
	return drop(DropFragForeign)
}

// follow returns the verdict of f's datagram, or holds f (as handle h) when
// the first fragment has not been seen. held reports that the switch took h.
func (t *fragTable) follow(f *Frame, h uint64) (v Verdict, held bool) {
	k := keyOfFrag(f)
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[k]
	if e != nil && e.decided {
		return e.verdict, false
	}
	if e != nil && int(e.nheld) >= len(e.held) {
		return drop(DropFragHoldFull), false
	}
	if t.lim.mayHold != nil && !t.lim.mayHold() {
		return drop(DropFragHoldFull), false
	}
	if e == nil {
		if len(t.m) >= FragMaxDatagrams && !t.evictForEntry() {
			return drop(DropFragHoldFull), false
		}
		e = t.newEntry(k, now)
	}
	if !t.makeRoom(e) {
		if e.nheld == 0 {
			t.forget(e)
		}
		return drop(DropFragHoldFull), false
	}
	if e.nheld == 0 {
		t.link(e)
	}
	e.held[e.nheld] = h
	e.nheld++
	t.bytes += t.lim.bufSize
	e.src.bytes += t.lim.bufSize
	t.heldB.Store(t.bytes)
	return Verdict{Action: ActHold}, true
}

// newEntry makes (or reuses) the entry of k.
func (t *fragTable) newEntry(k fragKey, now uint32) *fragEntry {
	var e *fragEntry
	if n := len(t.spare); n > 0 {
		e = t.spare[n-1]
		t.spare = t.spare[:n-1]
		*e = fragEntry{}
	} else {
		e = &fragEntry{}
	}
	e.key, e.tick = k, now
	t.m[k] = e
	return e
}

// forget deletes e (which holds nothing) and keeps it for reuse.
func (t *fragTable) forget(e *fragEntry) {
	delete(t.m, e.key)
	if len(t.spare) < FragMaxDatagrams {
		t.spare = append(t.spare, e)
	}
}

// evictForEntry makes room for one more datagram when the table is full of
// them: it evicts the oldest datagram that holds fragments.
func (t *fragTable) evictForEntry() bool {
	if t.lim.free == nil || t.head == nil {
		return false
	}
	v := t.head
	t.evict(v)
	t.forget(v)
	return true
}

// makeRoom evicts held datagrams until one more fragment of e fits the
// limits of its source and of the store. It reports whether it fits.
func (t *fragTable) makeRoom(e *fragEntry) bool {
	need := t.lim.bufSize
	src := e.src
	if src == nil {
		src = t.srcs[e.key.src]
	}
	if src != nil && src.bytes+need > t.lim.perSource {
		// The source's own oldest datagrams go first.
		for src.head != nil && src.bytes+need > t.lim.perSource && t.lim.free != nil {
			t.evictOther(src.head, e)
		}
		if src.bytes+need > t.lim.perSource {
			return false
		}
	}
	if need > t.lim.perSource {
		return false
	}
	if t.bytes+need > t.lim.total {
		low := t.lim.total - t.lim.total/4 // ipfrag_low_thresh: evict to 3/4
		for t.head != nil && t.bytes+need > low && t.lim.free != nil {
			t.evictOther(t.head, e)
		}
		if t.bytes+need > t.lim.total {
			return false
		}
	}
	return true
}

// evictOther evicts v; v's entry is forgotten unless it is e, the one
// making room.
func (t *fragTable) evictOther(v, e *fragEntry) {
	t.evict(v)
	if v != e {
		t.forget(v)
	}
}

// evict frees v's held fragments and counts them.
func (t *fragTable) evict(v *fragEntry) {
	for _, h := range v.held[:v.nheld] {
		t.lim.free(h)
	}
	t.evicted.Add(uint64(v.nheld))
	t.unhold(v)
}

// link puts e, which is about to hold its first fragment, at the end of the
// store's list and of its source's.
func (t *fragTable) link(e *fragEntry) {
	src := t.srcs[e.key.src]
	if src == nil {
		if n := len(t.spareSrc); n > 0 {
			src = t.spareSrc[n-1]
			t.spareSrc = t.spareSrc[:n-1]
			*src = fragSource{}
		} else {
			src = &fragSource{}
		}
		t.srcs[e.key.src] = src
	}
	e.src = src
	e.prev, e.next = t.tail, nil
	if t.tail != nil {
		t.tail.next = e
	} else {
		t.head = e
	}
	t.tail = e
	e.sprev, e.snext = src.tail, nil
	if src.tail != nil {
		src.tail.snext = e
	} else {
		src.head = e
	}
	src.tail = e
}

// unhold forgets e's held fragments (the caller took or freed them) and
// takes e off the lists.
func (t *fragTable) unhold(e *fragEntry) {
	if e.nheld == 0 {
		return
	}
	b := int64(e.nheld) * t.lim.bufSize
	t.bytes -= b
	t.heldB.Store(t.bytes)
	e.nheld = 0
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		t.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		t.tail = e.prev
	}
	e.prev, e.next = nil, nil
	src := e.src
	src.bytes -= b
	if e.sprev != nil {
		e.sprev.snext = e.snext
	} else {
		src.head = e.snext
	}
	if e.snext != nil {
		e.snext.sprev = e.sprev
	} else {
		src.tail = e.sprev
	}
	e.sprev, e.snext = nil, nil
	if src.head == nil {
		delete(t.srcs, e.key.src)
		if len(t.spareSrc) < FragMaxDatagrams {
			t.spareSrc = append(t.spareSrc, src)
		}
	}
	e.src = nil
}

// takeHeld appends the held fragments of f's datagram to dst and forgets them.
func (t *fragTable) takeHeld(f *Frame, dst []uint64) []uint64 {
	k := keyOfFrag(f)
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[k]
	if e == nil {
		return dst
	}
	dst = append(dst, e.held[:e.nheld]...)
	t.unhold(e)
	return dst
}

// sweep advances the clock by one tick and removes entries older than
// FragTimeoutTicks; the handles of fragments still held go to expired,
// for the caller to free and count as DropFragNoFirst.
func (t *fragTable) sweep(expired func(h uint64)) {
	now := t.tick.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.m {
		if now-e.tick > FragTimeoutTicks {
			for _, h := range e.held[:e.nheld] {
				expired(h)
			}
			t.unhold(e)
			t.forget(e)
		}
	}
}

// clear forgets every entry and hands every held fragment to free.
func (t *fragTable) clear(free func(h uint64)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.m {
		for _, h := range e.held[:e.nheld] {
			free(h)
		}
		t.unhold(e)
		t.forget(e)
	}
}

func (t *fragTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
