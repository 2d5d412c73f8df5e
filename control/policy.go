package control

// The policy: which rule a client may register.
//
// Overlap. Two rules overlap when some frame could match both: the same
// local address, the same protocol and the same local port (no port for
// protocols without ports), and remote sides that do not rule each other
// out: either rule has no remote address, or both have the same remote
// address and (either has no remote port, or both have the same remote
// port). Because the table's lookup prefers the more specific rule, a rule
// that overlaps another owner's rule takes some of that owner's traffic
// (a rule with a remote under another's listening rule) or keeps the other
// owner's flows from being its own (a listening rule over another's
// connected rule), so AddMatch refuses it. Overlap with the client's own
// rules (any of its channels') is fine; the same key twice is "exists".
//
// The kernel holds a rule wherever it has a socket: a listening or bound
// socket (no peer) overlaps every rule on its local address, protocol and
// port; a connected socket overlaps the rules that could match its peer's
// packets. A socket bound to the wildcard address (0.0.0.0, ::) counts for
// every local address of its family, and an IPv6 wildcard socket for IPv4
// too (dual-stack: sock_diag does not tell IPV6_V6ONLY). The kernel's rules
// in the table (DEBUG_PORTS, its learned flows) are checked like any owner's.
//
// Reservations. A kernel socket that the requesting process holds itself
// (its inode is among the process's open files, /proc/PID/fd, read for
// the PID the kernel's credentials name while the endpoint's pidfd shows
// the process alive) does not refuse the rule: a program that binds a
// kernel socket on the address and port first, so that the kernel gives
// the port to nobody else, and then asks for the rule (what the original's
// client library does) gets it. The reservation stays in the kernel; the
// firewall keeps the rule's frames away from it (the endpoint's rule wins
// the kernel side's lookup, as for every endpoint rule). Sockets of other
// processes, TIME_WAIT and request sockets (no inode) still refuse.
//
// Privileged ports. A rule whose local port is below the server's
// PrivilegedPorts (1024 unless configured) needs a client with uid 0 or
// CAP_NET_BIND_SERVICE in its effective set, as bind(2) would.

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/sockdiag"
	l4 "github.com/usnetd/usnetd/switch"
)

// Reasons a Match is not a rule the server registers.
var (
	errMappedAddr   = errors.New("IPv4-mapped IPv6 address: use the IPv4 address")
	errLocalAddr    = errors.New("local address is unspecified, loopback or multicast")
	errRemoteFamily = errors.New("remote address of another family than the local one")
)

// matchToKey turns a Match into a rule key, or says why it cannot be one.
func matchToKey(m wire.Match) (l4.Key, error) {
	if !m.DstAddr.IsValid() {
		return l4.Key{}, errors.New("no local address")
	}
	if m.DstAddr.Is4In6() || m.SrcAddr != nil && m.SrcAddr.Is4In6() {
		return l4.Key{}, errMappedAddr
	}
	if m.DstAddr.IsUnspecified() || m.DstAddr.IsLoopback() || m.DstAddr.IsMulticast() {
		return l4.Key{}, errLocalAddr
	}
	k := l4.Key{Local: l4.AddrFromNetip(m.DstAddr), Proto: m.Protocol}
	if m.DstPort != nil {
		k.LocalPort, k.Flags = *m.DstPort, k.Flags|l4.KeyLocalPort
	}
	if m.SrcAddr != nil {
		if !m.SrcAddr.IsValid() {
			return l4.Key{}, errors.New("invalid remote address")
		}
		if m.SrcAddr.Is4() != m.DstAddr.Is4() {
			return l4.Key{}, errRemoteFamily
		}
		k.Remote, k.Flags = l4.AddrFromNetip(*m.SrcAddr), k.Flags|l4.KeyRemote
	}
	if m.SrcPort != nil {
		k.RemotePort, k.Flags = *m.SrcPort, k.Flags|l4.KeyRemotePort
	}
	if err := k.Validate(); err != nil {
		return l4.Key{}, err
	}
	return k, nil
}

// keyToMatch is the Match of a rule key, for QueryStatus.
func keyToMatch(k l4.Key) wire.Match {
	m := wire.Match{DstAddr: k.Local.Netip(), Protocol: k.Proto}
	if k.Flags&l4.KeyLocalPort != 0 {
		p := k.LocalPort
		m.DstPort = &p
	}
	if k.Flags&l4.KeyRemote != 0 {
		a := k.Remote.Netip()
		m.SrcAddr = &a
	}
	if k.Flags&l4.KeyRemotePort != 0 {
		p := k.RemotePort
		m.SrcPort = &p
	}
	return m
}

// keysOverlap reports whether a frame could match both a and b (see the
// package's definition of overlap above).
func keysOverlap(a, b l4.Key) bool {
	if a.Local != b.Local || a.Proto != b.Proto || a.LocalPort != b.LocalPort ||
		a.Flags&l4.KeyLocalPort != b.Flags&l4.KeyLocalPort {
		return false
	}
	if a.Flags&l4.KeyRemote == 0 || b.Flags&l4.KeyRemote == 0 {
		return true
	}
	if a.Remote != b.Remote {
		return false
	}
	if a.Flags&l4.KeyRemotePort == 0 || b.Flags&l4.KeyRemotePort == 0 {
		return true
	}
	return a.RemotePort == b.RemotePort
}

// socketOverlaps reports whether a kernel socket could receive a frame
// that rule k matches.
func socketOverlaps(s sockdiag.Socket, k l4.Key) bool {
	if s.Proto != k.Proto || k.Flags&l4.KeyLocalPort == 0 || s.Local.Port() != k.LocalPort {
		return false
	}
	local := k.Local.Netip()
	sl := s.Local.Addr().Unmap()
	switch {
	case s.Wildcard():
		if sl.Is4() && !local.Is4() {
			return false // 0.0.0.0 does not take IPv6
		}
	case sl != local:
		return false
	}
	if s.Listening() || k.Flags&l4.KeyRemote == 0 {
		return true
	}
	if s.Remote.Addr().Unmap() != k.Remote.Netip() {
		return false
	}
	return k.Flags&l4.KeyRemotePort == 0 || s.Remote.Port() == k.RemotePort
}

// conflict describes who holds what a new rule overlaps.
type conflict struct {
	rule   *l4.Rule         // a rule of another owner in the table
	socket *sockdiag.Socket // or a kernel socket
}

func (c conflict) String() string {
	if c.rule != nil {
		return fmt.Sprintf("overlaps %v", *c.rule)
	}
	return fmt.Sprintf("overlaps the kernel's socket %v", *c.socket)
}

// findOverlap returns what k overlaps among the rules at k's local address,
// protocol and port that are not own (the client's ports), and the kernel's
// sockets that are not the client's reservations: held (nil: none) gets
// the overlapping sockets and returns the inodes among them that the
// client's process holds.
func findOverlap(t *l4.Table, k l4.Key, own func(l4.PortID) bool, sockets []sockdiag.Socket,
	held func([]sockdiag.Socket) map[uint64]bool) (conflict, bool) {
	for _, r := range t.RulesAt(k.Local, k.Proto, k.LocalPort) {
		if !own(r.Owner.Port) && keysOverlap(r.Key, k) {
			return conflict{rule: &r}, true
		}
	}
	var over []sockdiag.Socket
	for _, so := range sockets {
		if socketOverlaps(so, k) {
			over = append(over, so)
		}
	}
	if len(over) == 0 {
		return conflict{}, false
	}
	var mine map[uint64]bool
	if held != nil {
		mine = held(over)
	}
	for i := range over {
		if over[i].Inode == 0 || !mine[over[i].Inode] {
			return conflict{socket: &over[i]}, true
		}
	}
	return conflict{}, false
}

// mayBindPrivileged reports whether a client with credentials uid and the
// process status st may hold a local port below the privileged limit.
func mayBindPrivileged(uid uint32, st procStatus) bool {
	return uid == 0 || st.UID[1] == 0 || st.CapEff&(1<<capNetBindService) != 0
}

// portEntry is the line of QueryUsedPortsAnswer for a rule with a local port.
func portEntry(k l4.Key) (wire.PortEntry, bool) {
	if k.Flags&l4.KeyLocalPort == 0 {
		return wire.PortEntry{}, false
	}
	return wire.PortEntry{Protocol: k.Proto, Addr: k.Local.Netip(), Port: k.LocalPort}, true
}

// socketEntries lists a kernel socket in QueryUsedPortsAnswer: once per
// local address of the claimed interfaces when bound to the wildcard
// address (addrs), otherwise as bound. Loopback sockets are left out: they
// never see a frame of a NIC.
func socketEntries(s sockdiag.Socket, addrs []netip.Addr) []wire.PortEntry {
	a := s.Local.Addr().Unmap()
	if a.IsLoopback() {
		return nil
	}
	if !s.Wildcard() || len(addrs) == 0 {
		return []wire.PortEntry{{Protocol: s.Proto, Addr: a, Port: s.Local.Port()}}
	}
	var es []wire.PortEntry
	for _, l := range addrs {
		if l.Is4() || !a.Is4() {
			es = append(es, wire.PortEntry{Protocol: s.Proto, Addr: l, Port: s.Local.Port()})
		}
	}
	return es
}
