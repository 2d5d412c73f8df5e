package l4

import "maps"

// snapshot is one shard of a Table at one instant: a Go map from Key to
// entry, the number of rules of each shape, and a bitset of the local ports
// that have rules with a remote side. It is never changed once published;
// writers build a new one (with, without) and swap the shard's pointer.
//
// A hand-written open-addressing table with a cheaper hash was tried in its
// place and measured no faster than Go's swiss-table map in the same run
// (BENCHMARKS.md), so the map stays: less code to trust. What did pay off
// is skipping probes: the shape counts and the port bitset mean a frame for
// a listening port usually costs one map probe, not three.
type snapshot struct {
	m      map[Key]entry
	n      int
	shapes [8]int32 // rules per Key.Flags value: a lookup step with no rules of its shape is skipped
	// remotePorts has bit (local port % 64) set for every rule with a
	// remote side: a frame to a local port whose bit is clear can only
	// match a listening rule, and skips the exact and remote-IP probes.
	// A shard holds few local ports (it is chosen by local address,
	// protocol and port), so the bits stay sparse. The whole header of a
	// snapshot fits one cache line: a lookup touches it and the map.
	remotePorts uint64
}

func (s *snapshot) mayHaveRemote(lport uint16) bool { return s.remotePorts&(1<<(lport&63)) != 0 }

var emptySnapshot = &snapshot{m: map[Key]entry{}}

// get finds k. It does not allocate.
func (s *snapshot) get(k *Key) (entry, bool) {
	if s.shapes[k.Flags] == 0 {
		return entry{}, false
	}
	e, ok := s.m[*k]
	return e, ok
}

// with returns a copy of s with k set to e (k must be absent).
func (s *snapshot) with(k Key, e entry) *snapshot {
	n := &snapshot{m: maps.Clone(s.m), n: s.n, shapes: s.shapes, remotePorts: s.remotePorts}
	n.put(k, e)
	return n
}

// without returns a copy of s without the entries for which drop is true,
// and how many it dropped; s itself when none. drop is called once per entry.
func (s *snapshot) without(drop func(*Key, entry) bool) (*snapshot, int) {
	var gone []Key
	for k, e := range s.m {
		if drop(&k, e) {
			gone = append(gone, k)
		}
	}
	if len(gone) == 0 {
		return s, 0
	}
	n := &snapshot{m: make(map[Key]entry, len(s.m)-len(gone))}
	for k, e := range s.m {
		n.put(k, e)
	}
	for _, k := range gone {
		delete(n.m, k)
		n.n--
		n.shapes[k.Flags]--
	}
	// remotePorts may keep a stale bit: it only costs a probe.
	return n, len(gone)
}

func (s *snapshot) put(k Key, e entry) {
	e.used = true
	s.m[k] = e
	s.n++
	s.shapes[k.Flags]++
	if k.Flags&KeyRemote != 0 {
		s.remotePorts |= 1 << (k.LocalPort & 63)
	}
}

// each calls f for every entry.
func (s *snapshot) each(f func(*Key, entry)) {
	for k, e := range s.m {
		f(&k, e)
	}
}
