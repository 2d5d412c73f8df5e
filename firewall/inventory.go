package firewall

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// Inventory answers one question for ExpireLearned: is this learned kernel
// tuple still backed by a kernel socket? It keeps a snapshot of the
// kernel's TCP and UDP sockets (IPv4 and IPv6), taken by Refresh with
// sock_diag (NETLINK_SOCK_DIAG dumps, no text parsing) in the network
// namespace where NewInventory was called.
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
	h    *netlink.Handle
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

// TCP states as sock_diag reports them (include/net/tcp_states.h).
const tcpListen = 10

// v4any is 0.0.0.0 as an l4.Addr (::ffff:0.0.0.0).
var v4any = l4.AddrFrom4([4]byte{})

func isWildcard(a l4.Addr) bool { return a.IsZero() || a == v4any }

// NewInventory opens a sock_diag netlink socket in the calling thread's
// network namespace (lock the goroutine to a thread in the right one, as
// for Attach); later Refreshes from any thread see that namespace. The
// snapshot is empty until the first Refresh.
func NewInventory() (*Inventory, error) {
	h, err := netlink.NewHandle(unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("firewall: sock_diag socket: %w", err)
	}
	inv := &Inventory{h: h}
	inv.snap.Store(&sockSnapshot{})
	return inv, nil
}

// Refresh takes a new snapshot of the kernel's sockets.
func (inv *Inventory) Refresh() error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.h == nil {
		return ErrClosed
	}
	s := &sockSnapshot{tcp: map[uint16][]sockEntry{}, udp: map[uint16][]sockEntry{}}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		tcp, err := dump(func() ([]*netlink.Socket, error) { return inv.h.SocketDiagTCP(family) })
		if err != nil {
			return fmt.Errorf("firewall: TCP sockets (family %d): %w", family, err)
		}
		for _, so := range tcp {
			s.add(s.tcp, so)
		}
		udp, err := dump(func() ([]*netlink.Socket, error) { return inv.h.SocketDiagUDP(family) })
		if err != nil {
			return fmt.Errorf("firewall: UDP sockets (family %d): %w", family, err)
		}
		for _, so := range udp {
			s.add(s.udp, so)
		}
	}
	s.taken = time.Now()
	inv.snap.Store(s)
	return nil
}

// dump retries a sock_diag dump that the kernel interrupted (the socket
// tables changed while it ran) a few times before giving up.
func dump(f func() ([]*netlink.Socket, error)) ([]*netlink.Socket, error) {
	var err error
	for range 4 {
		var so []*netlink.Socket
		so, err = f()
		if err == nil {
			return so, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, err
}

func addrOfIP(ip net.IP) l4.Addr {
	if ip16 := ip.To16(); ip16 != nil {
		return l4.Addr(ip16)
	}
	return l4.Addr{}
}

func (s *sockSnapshot) add(m map[uint16][]sockEntry, so *netlink.Socket) {
	e := sockEntry{
		local:  addrOfIP(so.ID.Source),
		remote: addrOfIP(so.ID.Destination),
		rport:  so.ID.DestinationPort,
		state:  so.State,
	}
	m[so.ID.SourcePort] = append(m[so.ID.SourcePort], e)
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
	if inv.h != nil {
		inv.h.Close()
		inv.h = nil
	}
	return nil
}
