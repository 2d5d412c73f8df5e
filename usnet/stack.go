package usnet

// The gVisor stack behind a Stack (Open) or a Config: attached once,
// shared by its sockets, counted, and torn down with the last reference
// (the Stack's own, or the last socket of a Config).

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"

	"golang.org/x/sys/unix"
)

const (
	nicID = tcpip.NICID(1)
	// lingerMax bounds how long the teardown after the last Close waits
	// for TCP connections to finish their closing handshake, so that peers
	// see a FIN rather than a reset.
	lingerMax = time.Second
)

// netStack is one gVisor stack attached to usnetd.
type netStack struct {
	cfg  *Config
	res  resolved
	s    *stack.Stack
	link *linkEndpoint // nil with fdbased
	fd   *os.File      // the channel, with fdbased only
	refs int           // open sockets; guarded by cfg.mu
	sup  *supervisor   // reattaches after a restart of usnetd; nil with fdbased

	// attMu serialises the calls of the Attacher and guards att and live.
	attMu sync.Mutex
	att   Attacher     // nil while usnetd is away (reattach.go)
	live  []wire.Match // rules of the open listeners, registered again after a reattach

	reattaches atomic.Int64 // successful reattaches (tests read it)

	// sockMu guards socks and shut: the open sockets of the stack with
	// what closes each (a loopback mirror closes its kernel socket too),
	// so that Stack.Close can close them. shut is set by Stack.Close: no
	// socket is added after it.
	sockMu sync.Mutex
	socks  map[any]func() error
	shut   bool
}

// track records an open socket of the stack (key is what its Close passes
// to untrack; closeFn closes it and whatever wraps it). After Stack.Close
// began, it fails with net.ErrClosed and the caller closes the socket.
func (n *netStack) track(key any, closeFn func() error) error {
	n.sockMu.Lock()
	defer n.sockMu.Unlock()
	if n.shut {
		return net.ErrClosed
	}
	if n.socks == nil {
		n.socks = make(map[any]func() error)
	}
	n.socks[key] = closeFn
	return nil
}

// untrack forgets a socket that is being closed.
func (n *netStack) untrack(key any) {
	n.sockMu.Lock()
	delete(n.socks, key)
	n.sockMu.Unlock()
}

// shutdown refuses new sockets and closes every open one (each drops its
// reference on the stack).
func (n *netStack) shutdown() {
	n.sockMu.Lock()
	n.shut = true
	fns := make([]func() error, 0, len(n.socks))
	for _, fn := range n.socks {
		fns = append(fns, fn)
	}
	n.sockMu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// acquire returns the Config's stack, made if there is none, with one more
// reference; release gives it back.
func (c *Config) acquire() (*netStack, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st == nil {
		res, err := c.resolve()
		if err != nil {
			return nil, err
		}
		st, err := newNetStack(c, res)
		if err != nil {
			return nil, err
		}
		c.st = st
	}
	c.st.refs++
	return c.st, nil
}

// ref adds a reference to a stack that is known to be alive (a listener
// holds one while it accepts).
func (n *netStack) ref() {
	n.cfg.mu.Lock()
	n.refs++
	n.cfg.mu.Unlock()
}

// release drops a reference; the last one tears the stack down.
func (n *netStack) release() {
	c := n.cfg
	c.mu.Lock()
	defer c.mu.Unlock()
	n.refs--
	if n.refs > 0 {
		return
	}
	if c.st == n {
		c.st = nil
	}
	n.teardown()
}

func newNetStack(c *Config, res resolved) (_ *netStack, err error) {
	attach := c.Attach
	if attach == nil {
		attach = DialControl
	}
	att, err := attach(res.socketPath)
	if err != nil {
		return nil, err
	}
	n := &netStack{cfg: c, res: res, att: att}
	defer func() {
		if err != nil {
			n.teardown()
		}
	}()
	uds := c.fdbased || c.NoSHM
	if q, ok := att.(channelMTUer); ok && !res.mtuSet {
		// What the channel carries: usnetd's buffers and backend are
		// sized for the NIC's MTU when it claims the NIC. An older
		// usnetd (or the original) does not say; the NIC's MTU stays.
		if m, err := q.ChannelMTU(res.iface); err == nil && m >= 576 {
			res.mtu = m
		} else if errors.Is(err, client.ErrTimeout) {
			// QueryStatus unanswered: the original, which would leave
			// RequestSHM unanswered too. Ask for what it has.
			uds = true
		}
	}
	ch, err := requestChannel(att, res.iface, uds)
	if err != nil {
		return nil, err
	}
	peer := noPeer
	if !c.fdbased {
		peer = peerOfChannel(ch)
	}
	var ep stack.LinkEndpoint
	if c.fdbased {
		f := ch.UDS
		setChannelBuffers(f)
		n.fd = f
		ep, err = fdbased.New(&fdbased.Options{
			FDs:                []int{int(f.Fd())},
			MTU:                uint32(res.mtu),
			EthernetHeader:     true,
			Address:            tcpip.LinkAddress(res.mac),
			PacketDispatchMode: fdbased.RecvMMsg,
		})
		if err != nil {
			return nil, err
		}
	} else {
		n.link, err = newLinkEndpoint(ch, res.mac, uint32(res.mtu))
		if err == nil && c.ChannelPoll != 0 {
			n.link.poll = max(c.ChannelPoll, 0)
		}
		if err != nil {
			if peer >= 0 {
				unix.Close(peer)
			}
			return nil, err
		}
		ep = n.link
		if n.sup, err = startSupervisor(n, peer); err != nil {
			n.link.Close()
			return nil, err
		}
	}

	n.s = stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{
			tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6,
		},
		HandleLocal: true,
	})
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	for _, o := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &rcv, &snd} {
		if terr := n.s.SetTransportProtocolOption(tcp.ProtocolNumber, o); terr != nil {
			return nil, fmt.Errorf("usnet: TCP option %T: %s", o, terr)
		}
	}
	if terr := n.s.CreateNICWithOptions(nicID, ep, stack.NICOptions{Name: res.iface}); terr != nil {
		if n.link != nil {
			n.link.Close()
		}
		return nil, fmt.Errorf("usnet: create NIC: %s", terr)
	}
	for _, p := range res.addrs {
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(p.Addr()),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(p.Addr()), PrefixLen: p.Bits()},
		}
		if terr := n.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); terr != nil {
			return nil, fmt.Errorf("usnet: add address %s: %s", p, terr)
		}
	}
	var table []tcpip.Route
	for _, r := range res.routes {
		sn := tcpip.AddressWithPrefix{Address: tcpAddr(r.dst.Addr()), PrefixLen: r.dst.Bits()}.Subnet()
		tr := tcpip.Route{Destination: sn, NIC: nicID}
		if r.gw.IsValid() {
			tr.Gateway = tcpAddr(r.gw)
		}
		table = append(table, tr)
	}
	n.s.SetRouteTable(table)
	return n, nil
}

// teardown lets TCP connections finish closing (at most lingerMax), then
// closes the stack, waits for its goroutines, closes the channel and
// detaches from usnetd. It leaves no goroutine or descriptor behind.
func (n *netStack) teardown() {
	if n.sup != nil {
		n.sup.halt() // no reattach from here on
	}
	if n.s != nil {
		deadline := time.Now().Add(lingerMax)
		for n.closing() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		n.s.Close()
		n.s.Wait() // removes the NIC, which tells the link's receiver to stop
	}
	if n.link != nil {
		n.link.Close() // waits for the receiver, closes the channel
	}
	if n.fd != nil {
		n.fd.Close()
	}
	n.attMu.Lock()
	if n.att != nil {
		n.att.Close()
		n.att = nil
	}
	n.attMu.Unlock()
}

// closing reports whether a TCP endpoint is still between established and
// closed (its FIN not yet acknowledged); TIME_WAIT does not count.
func (n *netStack) closing() bool {
	for _, e := range n.s.RegisteredEndpoints() {
		te, ok := e.(*tcp.Endpoint)
		if !ok {
			continue
		}
		switch te.EndpointState() {
		case tcp.StateFinWait1, tcp.StateClosing, tcp.StateLastAck, tcp.StateCloseWait,
			tcp.StateEstablished, tcp.StateSynSent, tcp.StateSynRecv:
			return true
		}
	}
	return false
}

// addrsOf returns the stack's addresses of the network ("tcp", "tcp4",
// "udp6", ...): both families without a digit.
func (n *netStack) addrsOf(network string) []netip.Addr {
	var as []netip.Addr
	for _, p := range n.res.addrs {
		a := p.Addr()
		if familyOK(network, a) {
			as = append(as, a)
		}
	}
	return as
}

func (n *netStack) hasAddr(a netip.Addr) bool {
	for _, p := range n.res.addrs {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

func familyOK(network string, a netip.Addr) bool {
	switch network[len(network)-1] {
	case '4':
		return a.Is4()
	case '6':
		return a.Is6()
	}
	return true
}

// register adds listening rules for port on each address; on failure it
// removes those it added. The rules are kept in live until unregister, to
// be registered again after a reattach.
func (n *netStack) register(proto uint8, addrs []netip.Addr, port uint16) ([]wire.Match, error) {
	n.attMu.Lock()
	defer n.attMu.Unlock()
	if n.att == nil {
		return nil, ErrDetached
	}
	var ms []wire.Match
	for _, a := range addrs {
		p := port
		m := wire.Match{DstAddr: a, DstPort: &p, Protocol: proto}
		if err := n.att.AddMatch(m); err != nil {
			n.unregisterLocked(ms)
			return nil, err
		}
		ms = append(ms, m)
		n.live = append(n.live, m)
	}
	return ms, nil
}

func (n *netStack) unregister(ms []wire.Match) error {
	n.attMu.Lock()
	defer n.attMu.Unlock()
	return n.unregisterLocked(ms)
}

// unregisterLocked removes the rules from live and from usnetd, if it is
// there (a usnetd that went away took them along). attMu is held.
func (n *netStack) unregisterLocked(ms []wire.Match) error {
	var errs []error
	for _, m := range ms {
		for i, l := range n.live {
			if l.Equal(m) {
				n.live = append(n.live[:i], n.live[i+1:]...)
				break
			}
		}
		if n.att != nil {
			errs = append(errs, n.att.RemoveMatch(m))
		}
	}
	return errors.Join(errs...)
}

// usedPorts asks usnetd which ports of proto are in use.
func (n *netStack) usedPorts(proto uint8) (*wire.PortSet, error) {
	n.attMu.Lock()
	defer n.attMu.Unlock()
	if n.att == nil {
		return nil, ErrDetached
	}
	return n.att.QueryPortsInUse(proto)
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

func tcpAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}
