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
// Fragments are rare, so this table is a plain mutex-protected map, sharded
// to keep RX workers apart; it is never on the path of unfragmented frames.

const (
	// FragHoldPerDatagram bounds the fragments held for one datagram.
	FragHoldPerDatagram = 16
	// FragMaxDatagrams bounds the datagrams remembered at once per shard group.
	FragMaxDatagrams = 4096
	// FragTimeoutTicks is how many FragSweep calls an entry survives:
	// with one sweep a second, 30 s as Linux's ipfrag_time.
	FragTimeoutTicks = 30
	fragShards       = 16
)

type fragKey struct {
	src, dst Addr
	id       uint32
	proto    uint8
}

type fragEntry struct {
	decided bool
	verdict Verdict
	from    PortID // the port whose first fragment decided
	tick    uint32
	nheld   uint8
	held    [FragHoldPerDatagram]uint64
}

type fragTable struct {
	shards [fragShards]struct {
		mu sync.Mutex
		m  map[fragKey]*fragEntry
		_  [48]byte
	}
	tick atomic.Uint32
}

func newFragTable() *fragTable {
	t := &fragTable{}
	for i := range t.shards {
		t.shards[i].m = make(map[fragKey]*fragEntry)
	}
	return t
}

func keyOfFrag(f *Frame) fragKey {
	return fragKey{src: f.Src, dst: f.Dst, id: f.FragID, proto: f.FragProto}
}

func (k *fragKey) shard() int {
	return int((k.id ^ uint32(k.src[15]) ^ uint32(k.dst[15])<<8) % fragShards)
}

func (t *fragTable) now() uint32 { return t.tick.Load() }

// remember stores the verdict of the first fragment that port from sent,
// and reports whether later fragments are held and wait for TakeHeld.
func (t *fragTable) remember(f *Frame, v Verdict, from PortID) (release bool) {
	k := keyOfFrag(f)
	now := t.now()
	sh := &t.shards[k.shard()]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[k]
	if e == nil {
		if len(sh.m) >= FragMaxDatagrams/fragShards {
			return false // forgetting a verdict only costs the later fragments
		}
		e = &fragEntry{tick: now}
		sh.m[k] = e
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
	sh := &t.shards[k.shard()]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.m[k]; e != nil && e.decided && e.from == from {
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
	sh := &t.shards[k.shard()]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[k]
	if e != nil && e.decided {
		return e.verdict, false
	}
	if e == nil {
		if len(sh.m) >= FragMaxDatagrams/fragShards {
			return drop(DropFragHoldFull), false
		}
		e = &fragEntry{tick: now}
		sh.m[k] = e
	}
	if int(e.nheld) >= len(e.held) {
		return drop(DropFragHoldFull), false
	}
	e.held[e.nheld] = h
	e.nheld++
	return Verdict{Action: ActHold}, true
}

// takeHeld appends the held fragments of f's datagram to dst and forgets them.
func (t *fragTable) takeHeld(f *Frame, dst []uint64) []uint64 {
	k := keyOfFrag(f)
	sh := &t.shards[k.shard()]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[k]
	if e == nil {
		return dst
	}
	dst = append(dst, e.held[:e.nheld]...)
	e.nheld = 0
	return dst
}

// sweep advances the clock by one tick and removes entries older than
// FragTimeoutTicks; the handles of fragments still held go to expired,
// for the caller to free and count as DropFragNoFirst.
func (t *fragTable) sweep(expired func(h uint64)) {
	now := t.tick.Add(1)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, e := range sh.m {
			if now-e.tick > FragTimeoutTicks {
				for _, h := range e.held[:e.nheld] {
					expired(h)
				}
				delete(sh.m, k)
			}
		}
		sh.mu.Unlock()
	}
}

func (t *fragTable) len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
