package l4

import (
	"maps"
	"sync"
	"sync/atomic"
)

// MACSet is the set of local MAC addresses: those that endpoints and the
// kernel sent from (learned), plus ADD_MACS. A frame that a non-NIC port
// sends to a local MAC is switched locally; any other leaves through the NIC.
//
// Has takes no lock and writes nothing (a copy-on-write snapshot); Add and
// Remove serialise on a mutex and are rare.
type MACSet struct {
	mu sync.Mutex
	m  atomic.Pointer[map[MAC]struct{}]
}

// NewMACSet returns a set holding macs.
func NewMACSet(macs ...MAC) *MACSet {
	s := &MACSet{}
	m := make(map[MAC]struct{}, len(macs))
	for _, mac := range macs {
		m[mac] = struct{}{}
	}
	s.m.Store(&m)
	return s
}

// Has reports whether mac is local.
func (s *MACSet) Has(mac MAC) bool {
	_, ok := (*s.m.Load())[mac]
	return ok
}

// Add makes mac local and reports whether it was new.
func (s *MACSet) Add(mac MAC) bool {
	if s.Has(mac) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.m.Load()
	if _, ok := old[mac]; ok {
		return false
	}
	n := maps.Clone(old)
	if n == nil {
		n = map[MAC]struct{}{}
	}
	n[mac] = struct{}{}
	s.m.Store(&n)
	return true
}

// Remove drops mac from the set.
func (s *MACSet) Remove(mac MAC) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.m.Load()
	if _, ok := old[mac]; !ok {
		return
	}
	n := maps.Clone(old)
	delete(n, mac)
	s.m.Store(&n)
}

// Len returns the number of local MACs.
func (s *MACSet) Len() int { return len(*s.m.Load()) }
