package l4

import (
	"maps"
	"slices"
	"sync"
)

// The domain's local identity: the MACs of the ports behind the switch
// (the NIC's MAC, which the kernel and endpoints without a MAC of their own
// share, and ADD_MACS for endpoints with their own), and the IP addresses
// that endpoints may send from (the interface's addresses and those the
// operator grants, ENDPOINT_ADDRS). Both come from the NIC and the
// configuration only: no frame adds to them. A frame that a non-NIC port
// sends to a local MAC is switched locally; any other leaves through the
// NIC.
//
// The set is one immutable snapshot behind an atomic pointer: the data
// path reads it with one atomic load and no lock; SetLocal builds a new one.

// Bounds of the local identity: SetLocal ignores what is beyond them.
const (
	MaxLocalMACs  = 256
	MaxLocalAddrs = 4096
)

// smallLinear is the size up to which a set is scanned rather than hashed:
// a domain usually has one MAC and a handful of addresses.
const smallLinear = 8

// set is a read-only set of comparable values: a slice scanned linearly
// while small, a map beyond.
type set[T comparable] struct {
	list []T
	m    map[T]struct{}
}

func newSet[T comparable](xs []T, valid func(T) bool, limit int) set[T] {
	var s set[T]
	for _, x := range xs {
		if !valid(x) || slices.Contains(s.list, x) || len(s.list) >= limit {
			continue
		}
		s.list = append(s.list, x)
	}
	if len(s.list) > smallLinear {
		s.m = make(map[T]struct{}, len(s.list))
		for _, x := range s.list {
			s.m[x] = struct{}{}
		}
	}
	return s
}

func (s *set[T]) has(x T) bool {
	if s.m != nil {
		_, ok := s.m[x]
		return ok
	}
	for i := range s.list {
		if s.list[i] == x {
			return true
		}
	}
	return false
}

// localSet is one snapshot of the local identity.
type localSet struct {
	macs  set[MAC]
	addrs set[Addr]
}

// SetLocal replaces the domain's local MACs (the NIC's and ADD_MACS) and
// the addresses that endpoints may use as their source, in one atomic
// step. It may be called at any time from any goroutine (address following
// calls it when the interface's addresses change); frames decided after it
// returns see the new sets. Multicast and zero MACs, zero, loopback and
// multicast addresses, duplicates, and entries beyond MaxLocalMACs and
// MaxLocalAddrs are ignored. The slices are copied.
func (s *Switch) SetLocal(macs []MAC, addrs []Addr) {
	l := &localSet{
		macs: newSet(macs, func(m MAC) bool { return !m.IsMulticast() && !m.IsZero() }, MaxLocalMACs),
		addrs: newSet(addrs, func(a Addr) bool {
			ip := a.Netip()
			return ip.IsValid() && !ip.IsUnspecified() && !ip.IsLoopback() && !ip.IsMulticast()
		}, MaxLocalAddrs),
	}
	s.local.Store(l)
}

// Local returns a copy of the domain's local MACs and endpoint addresses.
func (s *Switch) Local() (macs []MAC, addrs []Addr) {
	l := s.local.Load()
	return slices.Clone(l.macs.list), slices.Clone(l.addrs.list)
}

// IsLocalMAC reports whether m is one of the domain's local MACs.
func (s *Switch) IsLocalMAC(m MAC) bool { return s.local.Load().macs.has(m) }

// PortPolicy is what one port's client was found allowed to do when it
// attached, for the checks on the frames it sends.
type PortPolicy struct {
	// BindPrivileged: the attaching process had uid 0 or
	// CAP_NET_BIND_SERVICE, so its frames may come from a source port below
	// 1024 (without it, only from its registered ports).
	BindPrivileged bool
}

// policies serialises the writers of the per-port policy map
// (Switch.polMap, copy-on-write: it is read on the data path only for
// frames from a privileged source port).
type policies struct {
	mu sync.Mutex
}

// SetPortPolicy sets the policy of port id (the zero PortPolicy, the
// strictest, until it is set). RemovePort forgets it.
func (s *Switch) SetPortPolicy(id PortID, pol PortPolicy) {
	s.pol.mu.Lock()
	defer s.pol.mu.Unlock()
	old := s.polMap.Load()
	n := maps.Clone(*old)
	if n == nil {
		n = map[PortID]PortPolicy{}
	}
	if pol == (PortPolicy{}) {
		delete(n, id)
	} else {
		n[id] = pol
	}
	s.polMap.Store(&n)
}

func (s *Switch) policy(id PortID) PortPolicy { return (*s.polMap.Load())[id] }
