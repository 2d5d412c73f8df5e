package usnet

// Listen, ListenPacket and Dial on the stack, and the net.Listener,
// net.Conn and net.PacketConn that hold a reference on it.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/ipproto"
)

// IP protocol numbers of the rules a stack registers (internal/ipproto's).
const (
	protoTCP = ipproto.TCP
	protoUDP = ipproto.UDP
)

// Listen announces on the stack like net.Listen: network is "tcp", "tcp4"
// or "tcp6", address "host:port" where host is empty (every address of the
// stack of that family) or one of the stack's addresses, and port 0 picks
// a free port outside the kernel's ip_local_port_range. The port is
// registered with usnetd (AddMatch, one rule per address) and removed when
// the listener is closed. With Loopback the listener also accepts
// connections to 127.0.0.1 (::1 for tcp6) through the kernel on the same
// port; a loopback host listens through the kernel only.
func (c *Config) Listen(network, address string) (net.Listener, error) {
	return listen(c, network, address)
}

// source is where Listen, ListenPacket and Dial get their stack: a Config
// (its shared stack, made on demand) or a Stack (Open).
type source interface {
	// acquire returns the stack with one more reference, for a new socket.
	acquire() (*netStack, error)
	// loopbackEnabled reports Loopback without making the stack.
	loopbackEnabled() bool
	// dialContext returns the context for a dial: ctx, or one that also
	// ends when the source is closed.
	dialContext(ctx context.Context) (context.Context, context.CancelFunc)
}

// dialContext is ctx: a Config is never closed.
func (c *Config) dialContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return ctx, func() {}
}

// adopt records a new socket on its stack (so that Stack.Close closes
// it); if the stack is closing, it closes the socket and fails.
func adopt[T any](n *netStack, key any, sock T, closeFn func() error) (T, error) {
	if err := n.track(key, closeFn); err != nil {
		closeFn()
		var zero T
		return zero, err
	}
	return sock, nil
}

func listen(c source, network, address string) (net.Listener, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "listen", Net: network, Addr: nil, Err: err}
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, opErr(net.UnknownNetworkError(network))
	}
	host, port, err := splitListenAddr(address)
	if err != nil {
		return nil, opErr(err)
	}
	if host.IsLoopback() {
		if !c.loopbackEnabled() {
			return nil, opErr(ErrLoopback)
		}
		return net.Listen(network, address)
	}
	n, err := c.acquire()
	if err != nil {
		return nil, opErr(err)
	}
	l, err := n.listenTCP(network, host, port)
	if err != nil {
		n.release()
		return nil, opErr(err)
	}
	if !n.res.loopback {
		ln, err := adopt[net.Listener](n, l, l, l.Close)
		if err != nil {
			return nil, opErr(err)
		}
		return ln, nil
	}
	kl, err := net.Listen(network, net.JoinHostPort(loopbackHost(network), strconv.Itoa(int(l.port))))
	if err != nil {
		l.Close()
		return nil, opErr(err)
	}
	m := newMirrorListener(l, kl)
	ln, err := adopt[net.Listener](n, l, m, m.Close)
	if err != nil {
		return nil, opErr(err)
	}
	return ln, nil
}

// ListenPacket announces on the stack like net.ListenPacket: network is
// "udp", "udp4" or "udp6", address as for Listen. The port, chosen or
// given, is registered with usnetd and removed on Close. With Loopback the
// conn also receives on 127.0.0.1 (::1 for udp6) through the kernel, and
// WriteTo a loopback address sends through the kernel.
func (c *Config) ListenPacket(network, address string) (net.PacketConn, error) {
	return listenPacket(c, network, address)
}

func listenPacket(c source, network, address string) (net.PacketConn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "listen", Net: network, Err: err}
	}
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, opErr(net.UnknownNetworkError(network))
	}
	host, port, err := splitListenAddr(address)
	if err != nil {
		return nil, opErr(err)
	}
	if host.IsLoopback() {
		if !c.loopbackEnabled() {
			return nil, opErr(ErrLoopback)
		}
		return net.ListenPacket(network, address)
	}
	n, err := c.acquire()
	if err != nil {
		return nil, opErr(err)
	}
	pc, err := n.listenUDP(network, host, port)
	if err != nil {
		n.release()
		return nil, opErr(err)
	}
	if !n.res.loopback {
		p, err := adopt[net.PacketConn](n, pc, pc, pc.Close)
		if err != nil {
			return nil, opErr(err)
		}
		return p, nil
	}
	kpc, err := net.ListenPacket(network, net.JoinHostPort(loopbackHost(network), strconv.Itoa(int(pc.port))))
	if err != nil {
		pc.Close()
		return nil, opErr(err)
	}
	m := newMirrorPacketConn(pc, kpc)
	p, err := adopt[net.PacketConn](n, pc, m, m.Close)
	if err != nil {
		return nil, opErr(err)
	}
	return p, nil
}

// Dial connects through the stack; see DialContext.
func (c *Config) Dial(network, address string) (net.Conn, error) {
	return c.DialContext(context.Background(), network, address)
}

// DialContext connects through the stack like net.Dialer.DialContext:
// network "tcp", "tcp4", "tcp6", "udp", "udp4" or "udp6". Host names are
// resolved by Go's resolver (net.DefaultResolver, which asks through the
// kernel). The local port is chosen outside the kernel's
// ip_local_port_range and clear of usnetd's rules; it is not registered:
// usnetd learns the connection from its first packet. Loopback addresses
// are dialled through the kernel with Loopback, else refused.
//
// A dial to one of the stack's own addresses stays in the stack if the
// stack listens there (a Listen, or a ListenPacket for "udp", on that
// address and port). On any other port it goes to the kernel, if the
// kernel has that address too (the shared address of passthru): through a
// kernel socket, in the calling thread's network namespace, as net.Dial
// would. So a usnet program reaches the kernel's services on the shared
// address, which gVisor would otherwise answer itself (and refuse): the
// connection is the kernel's (a *TCPConn or *UDPConn that wraps it), its
// local port the kernel's, and on a port where nothing listens the kernel
// refuses it (ECONNREFUSED). usnetd and its firewall are not involved (the
// kernel talks to itself over its loopback), and the program gets nothing
// that a net.Dial of its own, with its own credentials, would not give
// it. An address of the stack's own that the kernel does not have (an
// endpoint with addresses of its own) stays in the stack.
func (c *Config) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return dial(ctx, c, network, address)
}

func dial(ctx context.Context, c source, network, address string) (net.Conn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var proto uint8
	switch network {
	case "tcp", "tcp4", "tcp6":
		proto = protoTCP
	case "udp", "udp4", "udp6":
		proto = protoUDP
	default:
		return nil, opErr(net.UnknownNetworkError(network))
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, opErr(err)
	}
	port, err := net.DefaultResolver.LookupPort(ctx, network, portStr)
	if err != nil {
		return nil, opErr(err)
	}
	ips, err := lookupHost(ctx, network, host)
	if err != nil {
		return nil, opErr(err)
	}
	if ips[0].IsLoopback() {
		if !c.loopbackEnabled() {
			return nil, opErr(ErrLoopback)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}
	n, err := c.acquire()
	if err != nil {
		return nil, opErr(err)
	}
	ctx, cancel := c.dialContext(ctx)
	defer cancel()
	var conn net.Conn
	err = ErrNoAddress
	for _, ip := range ips {
		local := n.addrsOf(familyNet(ip))
		if len(local) == 0 || !familyOK(network, ip) {
			continue
		}
		if rp := netip.AddrPortFrom(ip, uint16(port)); n.toKernel(proto, rp) {
			var kc net.Conn
			if kc, err = dialKernel(ctx, network, n.res.iface, rp); err == nil {
				if conn, err = adoptKernel(n, kc); err != nil {
					return nil, opErr(err) // closed: its reference is gone
				}
				break
			}
			if !errors.Is(err, errNotKernelAddr) {
				if ctx.Err() != nil {
					err = context.Cause(ctx) // as the stack's dials: net.ErrClosed after Stack.Close
					break
				}
				continue
			}
			// An address of the stack's own, not the kernel's: the
			// stack answers, as for any address.
		}
		if proto == protoTCP {
			var tc *TCPConn
			if tc, err = n.dialTCP(ctx, local[0], netip.AddrPortFrom(ip, uint16(port))); err == nil {
				conn, err = adopt[net.Conn](n, tc, tc, tc.Close)
				if err != nil {
					return nil, opErr(err) // closed: its reference is gone
				}
			}
		} else {
			var uc *UDPConn
			if uc, err = n.dialUDP(local[0], netip.AddrPortFrom(ip, uint16(port))); err == nil {
				conn, err = adopt[net.Conn](n, uc, uc, uc.Close)
				if err != nil {
					return nil, opErr(err)
				}
			}
		}
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		n.release()
		return nil, &net.OpError{Op: "dial", Net: network, Addr: netAddr(proto, netip.AddrPortFrom(ips[0], uint16(port))), Err: err}
	}
	return conn, nil
}

// loopbackEnabled reports Config.Loopback or USNET_LOOPBACK without making
// the stack.
func (c *Config) loopbackEnabled() bool {
	if c.Loopback {
		return true
	}
	b, _ := strconv.ParseBool(getenv("USNET_LOOPBACK"))
	return b
}

func loopbackHost(network string) string {
	if network[len(network)-1] == '6' {
		return "::1"
	}
	return "127.0.0.1"
}

func familyNet(a netip.Addr) string {
	if a.Is4() {
		return "ip4"
	}
	return "ip6"
}

// splitListenAddr parses "host:port" for Listen; host may be empty or an
// IP address ("localhost" counts as loopback).
func splitListenAddr(address string) (netip.Addr, uint16, error) {
	host, ps, err := net.SplitHostPort(address)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	port, err := net.LookupPort("tcp", ps)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	if host == "" {
		return netip.Addr{}, uint16(port), nil
	}
	if host == "localhost" {
		return netip.MustParseAddr("127.0.0.1"), uint16(port), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, 0, errors.New("usnet: listen needs an IP address or no host, not " + strconv.Quote(host))
	}
	a = a.Unmap().WithZone("")
	if a.IsUnspecified() {
		return netip.Addr{}, uint16(port), nil
	}
	return a, uint16(port), nil
}

// lookupHost returns the addresses of host, IP literals unchanged.
func lookupHost(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap().WithZone("")}, nil
	}
	if host == "localhost" {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	fam := "ip"
	if c := network[len(network)-1]; c == '4' || c == '6' {
		fam += string(c)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, fam, host)
	if err != nil {
		return nil, err
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	return ips, nil
}

func netAddr(proto uint8, ap netip.AddrPort) net.Addr {
	if proto == protoTCP {
		return net.TCPAddrFromAddrPort(ap)
	}
	return net.UDPAddrFromAddrPort(ap)
}

// listenSetup chooses the network protocol and the addresses to register
// for a listener on host (invalid: every address of the network's
// families).
func (n *netStack) listenSetup(network string, host netip.Addr) (tcpip.NetworkProtocolNumber, []netip.Addr, bool, error) {
	if host.IsValid() {
		if !n.hasAddr(host) || !familyOK(network, host) {
			return 0, nil, false, ErrNoAddress
		}
		return protoOf(host), []netip.Addr{host}, false, nil
	}
	addrs := n.addrsOf(network)
	if len(addrs) == 0 {
		return 0, nil, false, ErrNoAddress
	}
	has6 := false
	for _, a := range addrs {
		has6 = has6 || a.Is6()
	}
	if !has6 {
		return protoOf(addrs[0]), addrs, false, nil
	}
	// An IPv6 endpoint, dual-stack for "tcp"/"udp", V6Only for "...6".
	return protoOf(netip.IPv6Unspecified()), addrs, network[len(network)-1] == '6', nil
}

// bindPort binds ep to local:port, choosing a port when port is 0.
func (n *netStack) bindPort(ep tcpip.Endpoint, proto uint8, local netip.Addr, port uint16) (uint16, error) {
	fa := tcpip.FullAddress{Port: port}
	if local.IsValid() {
		fa.Addr = tcpAddr(local)
	}
	if port != 0 {
		if terr := ep.Bind(fa); terr != nil {
			return 0, errors.New(terr.String())
		}
		return port, nil
	}
	return n.withFreePort(proto, func(p uint16) tcpip.Error {
		fa.Port = p
		return ep.Bind(fa)
	})
}

func (n *netStack) listenTCP(network string, host netip.Addr, port uint16) (*listener, error) {
	np, addrs, v6only, err := n.listenSetup(network, host)
	if err != nil {
		return nil, err
	}
	wq := new(waiter.Queue)
	ep, terr := n.s.NewEndpoint(tcp.ProtocolNumber, np, wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	if v6only {
		ep.SocketOptions().SetV6Only(true)
	}
	if port, err = n.bindPort(ep, protoTCP, host, port); err != nil {
		ep.Close()
		return nil, err
	}
	if terr := ep.Listen(4096); terr != nil {
		ep.Close()
		return nil, errors.New(terr.String())
	}
	ms, err := n.register(protoTCP, addrs, port)
	if err != nil {
		ep.Close()
		return nil, err
	}
	return &listener{ep: ep, wq: wq, cancel: make(chan struct{}), n: n, port: port, matches: ms}, nil
}

func (n *netStack) listenUDP(network string, host netip.Addr, port uint16) (*UDPConn, error) {
	np, addrs, v6only, err := n.listenSetup(network, host)
	if err != nil {
		return nil, err
	}
	wq := new(waiter.Queue)
	ep, terr := n.s.NewEndpoint(udp.ProtocolNumber, np, wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	if v6only {
		ep.SocketOptions().SetV6Only(true)
	}
	if port, err = n.bindPort(ep, protoUDP, host, port); err != nil {
		ep.Close()
		return nil, err
	}
	ms, err := n.register(protoUDP, addrs, port)
	if err != nil {
		ep.Close()
		return nil, err
	}
	return newUDPConn(n, wq, ep, port, np == protoOf(netip.IPv4Unspecified()), ms), nil
}

func (n *netStack) dialTCP(ctx context.Context, local netip.Addr, remote netip.AddrPort) (*TCPConn, error) {
	wq := new(waiter.Queue)
	ep, terr := n.s.NewEndpoint(tcp.ProtocolNumber, protoOf(local), wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	if _, err := n.bindPort(ep, protoTCP, local, 0); err != nil {
		ep.Close()
		return nil, err
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(tcpip.FullAddress{Addr: tcpAddr(remote.Addr()), Port: remote.Port()})
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, context.Cause(ctx)
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, errors.New(terr.String())
	}
	return newTCPConn(n, wq, ep), nil
}

func (n *netStack) dialUDP(local netip.Addr, remote netip.AddrPort) (*UDPConn, error) {
	wq := new(waiter.Queue)
	ep, terr := n.s.NewEndpoint(udp.ProtocolNumber, protoOf(local), wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	port, err := n.bindPort(ep, protoUDP, local, 0)
	if err != nil {
		ep.Close()
		return nil, err
	}
	if terr := ep.Connect(tcpip.FullAddress{Addr: tcpAddr(remote.Addr()), Port: remote.Port()}); terr != nil {
		ep.Close()
		return nil, errors.New(terr.String())
	}
	return newUDPConn(n, wq, ep, port, local.Is4(), nil), nil
}

// listener is a TCP listener on the stack. Its Accept is gonet's, keeping
// the accepted endpoint for the options of TCPConn.
type listener struct {
	ep      tcpip.Endpoint
	wq      *waiter.Queue
	cancel  chan struct{} // closed by Close: Accept returns
	n       *netStack
	port    uint16
	matches []wire.Match

	mu      sync.Mutex
	closed  bool
	accepts sync.WaitGroup // Accept calls in progress
}

func (l *listener) Addr() net.Addr {
	a, terr := l.ep.GetLocalAddress()
	if terr != nil {
		return nil
	}
	return &net.TCPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

// Accept waits for the next connection, a *TCPConn. After Close it fails
// with an error that wraps net.ErrClosed, as net's listeners do
// (http.Server relies on that).
func (l *listener) Accept() (net.Conn, error) {
	closedErr := func() error {
		return &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, closedErr()
	}
	l.accepts.Add(1)
	l.mu.Unlock()
	defer l.accepts.Done()

	ep, wq, terr := l.ep.Accept(nil)
	if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
		entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
		l.wq.EventRegister(&entry)
		defer l.wq.EventUnregister(&entry)
		for {
			ep, wq, terr = l.ep.Accept(nil)
			if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
				break
			}
			select {
			case <-l.cancel:
				return nil, closedErr()
			case <-notify:
			}
		}
	}
	if terr != nil {
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return nil, closedErr()
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: errors.New(terr.String())}
	}
	l.n.ref()
	c := newTCPConn(l.n, wq, ep)
	if err := l.n.track(c, c.Close); err != nil {
		c.Close() // the stack is being closed
		return nil, closedErr()
	}
	return c, nil
}

// Close stops listening, removes the listener's rules from usnetd and
// drops its reference on the stack. Connections accepted stay open.
func (l *listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	l.closed = true
	l.mu.Unlock()
	l.ep.Shutdown(tcpip.ShutdownWrite | tcpip.ShutdownRead)
	close(l.cancel)
	l.ep.Close()
	l.accepts.Wait()
	l.n.untrack(l)
	err := l.n.unregister(l.matches)
	l.n.release()
	return err
}
