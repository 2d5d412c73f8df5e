package firewall

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usnetd/usnetd/internal/sockdiag"
	l4 "github.com/usnetd/usnetd/switch"
)

// Inventory answers one question for ExpireLearned: is this learned kernel
// tuple still backed by a kernel socket? It keeps a snapshot of the
// kernel's TCP and UDP sockets (IPv4 and IPv6), taken by Refresh with
// internal/sockdiag (NETLINK_SOCK_DIAG dumps, no text parsing) in the
// network namespace where NewInventory was called.
//
// What counts as open, for a learned key (local address and port, remote
// address and port):
//   - TCP: a socket in any state but LISTEN with exactly that 4-tuple;
//     TIME_WAIT counts, so that the last segments of a closed connection
//     still reach the kernel.
//   - UDP: a socket bound to that local port on that local address or a
//     wildcard, either unconnected or connected to exactly that remote.
//   - Anything else (ICMP, portless protocols, SCTP, UDP-Lite): never; such
//     entries go once idle (Options.MinIdle).
//
// A wildcard :: socket counts for IPv4 keys too (it may be dual-stack:
// sock_diag does not say whether IPV6_V6ONLY is set without an extension;
// erring towards "open" only keeps an entry longer).
//
// IsOpen may be called from any goroutine, also during Refresh; Refresh
// calls are serialised.
type Inventory struct {
	mu   sync.Mutex // serialises Refresh and Close
	c    *sockdiag.Conn
	snap atomic.Pointer[sockSnapshot]
}

// sockSnapshot is the kernel's sockets by local port.
type sockSnapshot struct {
	tcp   map[uint16][]sockEntry
	udp   map[uint16][]sockEntry
	taken time.Time
}

type sockEntry struct {
	local, remote l4.Addr // IPv4 in mapped form, as l4.Addr; wildcards are v4any or the zero Addr
	rport         uint16
	state         uint8 // TCP state (sock_diag numbering)
}

const tcpListen = sockdiag.TCPListen

// v4any is 0.0.0.0 as an l4.Addr (::ffff:0.0.0.0).
var v4any = l4.AddrFrom4([4]byte{})

func isWildcard(a l4.Addr) bool { return a.IsZero() || a == v4any }

// NewInventory opens a sock_diag netlink socket in the calling thread's
// network namespace (lock the goroutine to a thread in the right one, as
// for Attach); later Refreshes from any thread see that namespace. The
// snapshot is empty until the first Refresh.
func NewInventory() (*Inventory, error) {
	c, err := sockdiag.Open()
	if err != nil {
		return nil, fmt.Errorf("firewall: %w", err)
	}
	inv := &Inventory{c: c}
	inv.snap.Store(&sockSnapshot{})
	return inv, nil
}

// Refresh takes a new snapshot of the kernel's sockets.
func (inv *Inventory) Refresh() error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.c == nil {
		return ErrClosed
	}
	all, err := inv.c.Sockets()
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	s := &sockSnapshot{tcp: map[uint16][]sockEntry{}, udp: map[uint16][]sockEntry{}}
	for _, so := range all {
		switch so.Proto {
		case sockdiag.ProtoTCP:
			s.add(s.tcp, so)
		case sockdiag.ProtoUDP:
			s.add(s.udp, so)
		}
	}
	s.taken = time.Now()
	inv.snap.Store(s)
	return nil
}

// addrOf is a as an l4.Addr; the unspecified IPv6 address is the zero Addr
// (the wildcard of both families), 0.0.0.0 is v4any.
func addrOf(a netip.Addr) l4.Addr {
	if a.Is6() && a.IsUnspecified() {
		return l4.Addr{}
	}
	return l4.AddrFromNetip(a)
}

func (s *sockSnapshot) add(m map[uint16][]sockEntry, so sockdiag.Socket) {
	e := sockEntry{
		local:  addrOf(so.Local.Addr()),
		remote: addrOf(so.Remote.Addr()),
		rport:  so.Remote.Port(),
		state:  so.State,
	}
	m[so.Local.Port()] = append(m[so.Local.Port()], e)
}

// Taken returns when the snapshot was taken (the zero Time before the
// first Refresh).
func (inv *Inventory) Taken() time.Time { return inv.snap.Load().taken }

// IsOpen reports whether the snapshot holds a kernel socket behind the
// learned key k (see Inventory for what counts).
func (inv *Inventory) IsOpen(k l4.Key) bool { return inv.snap.Load().isOpen(k) }

func (s *sockSnapshot) isOpen(k l4.Key) bool {
	if k.Flags&(l4.KeyLocalPort|l4.KeyRemote|l4.KeyRemotePort) != l4.KeyLocalPort|l4.KeyRemote|l4.KeyRemotePort {
		return false // not a learned flow
	}
	switch k.Proto {
	case l4.ProtoTCP:
		for _, e := range s.tcp[k.LocalPort] {
			if e.state != tcpListen && e.local == k.Local && e.remote == k.Remote && e.rport == k.RemotePort {
				return true
			}
		}
	case l4.ProtoUDP:
		for _, e := range s.udp[k.LocalPort] {
			if !(e.local == k.Local || e.local.IsZero() || e.local == v4any && k.Local.Is4()) {
				continue
			}
			if isWildcard(e.remote) && e.rport == 0 || e.remote == k.Remote && e.rport == k.RemotePort {
				return true
			}
		}
	}
	return false
}

// Close closes the netlink socket. IsOpen keeps answering from the last
// snapshot.
func (inv *Inventory) Close() error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.c != nil {
		inv.c.Close()
		inv.c = nil
	}
	return nil
}
