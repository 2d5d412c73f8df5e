package l4

import (
	"encoding/binary"
	"math/bits"
	"slices"
)

// snapshot is one shard of a Table at one instant: an immutable
// open-addressing hash table (linear probing, at most three quarters full) with a
// cheap hash of the fixed-size Key. It replaced a Go map here because the
// lookup is the hot path: BENCHMARKS.md has the before and after.
//
// A snapshot is never changed once published; writers build a new one
// (with) and swap the shard's pointer.
type snapshot struct {
	slots  []slot
	mask   uint64
	n      int
	shapes [8]int32 // rules per Key.Flags value: a lookup step with no rules of its shape is skipped
	// remotePorts has bit (local port % 1024) set for every rule with a
	// remote side: a frame to a local port whose bit is clear can only
	// match a listening rule, and skips the exact and remote-IP probes.
	// A shard holds few local ports (it is chosen by local address,
	// protocol and port), so the bits stay sparse.
	remotePorts [16]uint64
}

func (s *snapshot) mayHaveRemote(lport uint16) bool {
	return s.remotePorts[(lport>>6)&15]&(1<<(lport&63)) != 0
}

type slot struct {
	k Key
	e entry // e.used marks a taken slot
}

var emptySnapshot = &snapshot{slots: make([]slot, 8), mask: 7}

// hashKey mixes every field of k (wyhash-style multiply-fold).
func hashKey(k *Key) uint64 {
	const (
		k1 = 0xa0761d6478bd642f
		k2 = 0xe7037ed1a0b428db
		k3 = 0x8ebc6af09c88c6e3
		k4 = 0x589965cc75374cc3
	)
	l0 := binary.LittleEndian.Uint64(k.Local[0:8])
	l1 := binary.LittleEndian.Uint64(k.Local[8:16])
	r0 := binary.LittleEndian.Uint64(k.Remote[0:8])
	r1 := binary.LittleEndian.Uint64(k.Remote[8:16])
	x := uint64(k.LocalPort) | uint64(k.RemotePort)<<16 | uint64(k.Proto)<<32 | uint64(k.Flags)<<40
	h := mix(l1^k1, r1^x^k2)
	if l0|r0 != 0 { // IPv6: the upper halves count too (they are 0 for IPv4)
		h = mix(h^l0^k3, r0^k4)
	}
	return h
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func keyEq(a, b *Key) bool {
	return binary.LittleEndian.Uint64(a.Local[8:16]) == binary.LittleEndian.Uint64(b.Local[8:16]) &&
		binary.LittleEndian.Uint64(a.Remote[8:16]) == binary.LittleEndian.Uint64(b.Remote[8:16]) &&
		a.LocalPort == b.LocalPort && a.RemotePort == b.RemotePort && a.Proto == b.Proto && a.Flags == b.Flags &&
		binary.LittleEndian.Uint64(a.Local[0:8]) == binary.LittleEndian.Uint64(b.Local[0:8]) &&
		binary.LittleEndian.Uint64(a.Remote[0:8]) == binary.LittleEndian.Uint64(b.Remote[0:8])
}

// get finds k. It does not allocate.
func (s *snapshot) get(k *Key) (entry, bool) {
	if s.shapes[k.Flags] == 0 {
		return entry{}, false
	}
	for i := hashKey(k) & s.mask; ; i = (i + 1) & s.mask {
		sl := &s.slots[i]
		if !sl.e.used {
			return entry{}, false
		}
		if keyEq(&sl.k, k) {
			return sl.e, true
		}
	}
}

// with returns a copy of s with k set to e (k must be absent).
func (s *snapshot) with(k Key, e entry) *snapshot {
	size := len(s.slots)
	for (s.n+1)*4 > size*3 { // at most three quarters full
		size *= 2
	}
	var n *snapshot
	if size == len(s.slots) {
		n = &snapshot{slots: slices.Clone(s.slots), mask: s.mask, n: s.n, shapes: s.shapes, remotePorts: s.remotePorts}
	} else {
		n = s.rebuilt(size)
	}
	n.put(k, e)
	return n
}

// without returns a copy of s without the entries for which drop is true,
// and how many it dropped; s itself when none. drop is called once per entry.
func (s *snapshot) without(drop func(*Key, entry) bool) (*snapshot, int) {
	var gone []int
	for i := range s.slots {
		if s.slots[i].e.used && drop(&s.slots[i].k, s.slots[i].e) {
			gone = append(gone, i)
		}
	}
	if len(gone) == 0 {
		return s, 0
	}
	size := len(emptySnapshot.slots)
	for (s.n-len(gone))*4 > size { // at most a quarter full after removals
		size *= 2
	}
	n := &snapshot{slots: make([]slot, size), mask: uint64(size - 1)}
	for i := range s.slots {
		if s.slots[i].e.used && (len(gone) == 0 || gone[0] != i) {
			n.put(s.slots[i].k, s.slots[i].e)
		} else if len(gone) > 0 && gone[0] == i {
			gone = gone[1:]
		}
	}
	return n, s.n - n.n
}

// rebuilt copies the entries of s into a new table of size slots.
func (s *snapshot) rebuilt(size int) *snapshot {
	n := &snapshot{slots: make([]slot, size), mask: uint64(size - 1)}
	for i := range s.slots {
		if s.slots[i].e.used {
			n.put(s.slots[i].k, s.slots[i].e)
		}
	}
	return n
}

func (s *snapshot) put(k Key, e entry) {
	i := hashKey(&k) & s.mask
	for s.slots[i].e.used {
		i = (i + 1) & s.mask
	}
	e.used = true
	s.slots[i] = slot{k: k, e: e}
	s.n++
	s.shapes[k.Flags]++
	if k.Flags&KeyRemote != 0 {
		s.remotePorts[(k.LocalPort>>6)&15] |= 1 << (k.LocalPort & 63)
	}
}

// each calls f for every entry.
func (s *snapshot) each(f func(*Key, entry)) {
	for i := range s.slots {
		if s.slots[i].e.used {
			f(&s.slots[i].k, s.slots[i].e)
		}
	}
}
