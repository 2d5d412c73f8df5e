package usnet

// The connections of the stack, with the socket options of net.TCPConn
// and net.UDPConn that gVisor has.

import (
	"errors"
	"net"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/usnetd/usnetd/control/wire"
)

// Keep-alive defaults of SetKeepAliveConfig's zero fields: Go's (net's
// defaults on Linux).
const (
	defaultKeepAliveIdle     = 15 * time.Second
	defaultKeepAliveInterval = 15 * time.Second
	defaultKeepAliveCount    = 9
)

// TCPConn is a TCP connection of the stack: what Dial and DialTCP return
// for "tcp" networks and what the stack's listeners accept. Besides
// net.Conn it has the socket options of net.TCPConn that gVisor supports,
// with the same meaning.
//
// A dial to one of the stack's own addresses on a port the stack does not
// listen on goes to the kernel (see Config.DialContext): its TCPConn
// wraps the kernel's connection, a *net.TCPConn, and every method,
// options included, is that connection's. Stack.Close closes it too.
type TCPConn struct {
	nc   net.Conn       // c, or k
	c    *gonet.TCPConn // nil for the kernel's connection
	ep   tcpip.Endpoint // nil for the kernel's connection
	k    *net.TCPConn   // the kernel's connection, else nil
	n    *netStack
	once sync.Once
}

func newTCPConn(n *netStack, wq *waiter.Queue, ep tcpip.Endpoint) *TCPConn {
	c := gonet.NewTCPConn(wq, ep)
	return &TCPConn{nc: c, c: c, ep: ep, n: n}
}

// kernelTCPConn wraps a connection of the kernel's dialled for the stack.
func kernelTCPConn(n *netStack, k *net.TCPConn) *TCPConn {
	return &TCPConn{nc: k, k: k, n: n}
}

// Read reads data from the connection.
func (c *TCPConn) Read(b []byte) (int, error) { return c.nc.Read(b) }

// Write writes data to the connection.
func (c *TCPConn) Write(b []byte) (int, error) { return c.nc.Write(b) }

// Close closes the connection (gracefully: FIN, unless SetLinger(0)) and
// drops its reference on the stack.
func (c *TCPConn) Close() error {
	err := error(&net.OpError{Op: "close", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: net.ErrClosed})
	c.once.Do(func() {
		err = c.nc.Close()
		c.n.untrack(c)
		c.n.release()
	})
	return err
}

// CloseRead shuts down the reading side of the connection.
func (c *TCPConn) CloseRead() error {
	if c.k != nil {
		return c.k.CloseRead()
	}
	return c.c.CloseRead()
}

// CloseWrite shuts down the writing side of the connection: the peer reads
// EOF (a FIN) while this side can still read.
func (c *TCPConn) CloseWrite() error {
	if c.k != nil {
		return c.k.CloseWrite()
	}
	return c.c.CloseWrite()
}

// LocalAddr returns the local address, a *net.TCPAddr.
func (c *TCPConn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// RemoteAddr returns the peer's address, a *net.TCPAddr.
func (c *TCPConn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (c *TCPConn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *TCPConn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *TCPConn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

func (c *TCPConn) optErr(err error) error {
	return &net.OpError{Op: "set", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// SetNoDelay controls Nagle's algorithm, as net.TCPConn's: true (the
// default, as with net) sends data as soon as possible after a Write;
// false delays small segments while data is unacknowledged.
func (c *TCPConn) SetNoDelay(noDelay bool) error {
	if c.k != nil {
		return c.k.SetNoDelay(noDelay)
	}
	c.ep.SocketOptions().SetDelayOption(!noDelay)
	return nil
}

// SetKeepAlive turns keep-alive probes on or off (off by default; gVisor
// then probes after 2 hours idle unless SetKeepAlivePeriod or
// SetKeepAliveConfig says otherwise).
func (c *TCPConn) SetKeepAlive(keepalive bool) error {
	if c.k != nil {
		return c.k.SetKeepAlive(keepalive)
	}
	c.ep.SocketOptions().SetKeepAlive(keepalive)
	return nil
}

// SetKeepAlivePeriod sets how long the connection must be idle before the
// first keep-alive probe, as net.TCPConn's: zero means 15 s, a negative
// period leaves it unchanged. Unlike the kernel's whole seconds, gVisor
// honours any period.
func (c *TCPConn) SetKeepAlivePeriod(d time.Duration) error {
	if c.k != nil {
		return c.k.SetKeepAlivePeriod(d)
	}
	return c.setKeepAliveIdle(d)
}

// SetKeepAliveConfig configures keep-alive probes as net.TCPConn's: Enable
// turns them on, Idle is the idle time before the first probe, Interval
// the time between probes, Count the probes without answer before the
// connection is dropped. Zero fields take Go's defaults (15 s, 15 s, 9),
// negative ones leave the value unchanged.
func (c *TCPConn) SetKeepAliveConfig(config net.KeepAliveConfig) error {
	if c.k != nil {
		return c.k.SetKeepAliveConfig(config)
	}
	if err := c.SetKeepAlive(config.Enable); err != nil {
		return err
	}
	if err := c.setKeepAliveIdle(config.Idle); err != nil {
		return err
	}
	switch d := config.Interval; {
	case d == 0:
		d = defaultKeepAliveInterval
		fallthrough
	case d > 0:
		o := tcpip.KeepaliveIntervalOption(d)
		if terr := c.ep.SetSockOpt(&o); terr != nil {
			return c.optErr(errors.New(terr.String()))
		}
	}
	switch n := config.Count; {
	case n == 0:
		n = defaultKeepAliveCount
		fallthrough
	case n > 0:
		if terr := c.ep.SetSockOptInt(tcpip.KeepaliveCountOption, n); terr != nil {
			return c.optErr(errors.New(terr.String()))
		}
	}
	return nil
}

func (c *TCPConn) setKeepAliveIdle(d time.Duration) error {
	if d < 0 {
		return nil
	}
	if d == 0 {
		d = defaultKeepAliveIdle
	}
	o := tcpip.KeepaliveIdleOption(d)
	if terr := c.ep.SetSockOpt(&o); terr != nil {
		return c.optErr(errors.New(terr.String()))
	}
	return nil
}

// SetLinger sets what Close does with data not yet sent or acknowledged,
// as net.TCPConn's: sec < 0 (the default) sends it in the background;
// sec == 0 discards it and resets the connection (RST); sec > 0 sends it
// in the background as with sec < 0 (Close never blocks), and gVisor
// keeps the setting.
func (c *TCPConn) SetLinger(sec int) error {
	if c.k != nil {
		return c.k.SetLinger(sec)
	}
	l := tcpip.LingerOption{}
	if sec >= 0 {
		l = tcpip.LingerOption{Enabled: true, Timeout: time.Duration(sec) * time.Second}
	}
	c.ep.SocketOptions().SetLinger(l)
	return nil
}

// SetReadBuffer sets the size of the connection's receive buffer, which
// bounds the window advertised to the peer, clamped to the stack's limits
// (4 KiB to 8 MiB). Setting it turns off the stack's automatic tuning of
// the receive buffer for this connection.
func (c *TCPConn) SetReadBuffer(bytes int) error {
	if c.k != nil {
		return c.k.SetReadBuffer(bytes)
	}
	return setReadBuffer(c.ep, bytes, c.optErr)
}

// SetWriteBuffer sets the size of the connection's send buffer, clamped
// to the stack's limits (4 KiB to 8 MiB): how much written data the stack
// holds before Write blocks.
func (c *TCPConn) SetWriteBuffer(bytes int) error {
	if c.k != nil {
		return c.k.SetWriteBuffer(bytes)
	}
	return setWriteBuffer(c.ep, bytes, c.optErr)
}

func setReadBuffer(ep tcpip.Endpoint, bytes int, optErr func(error) error) error {
	if bytes < 0 {
		return optErr(errors.New("negative buffer size"))
	}
	so := ep.SocketOptions()
	lo, hi := so.ReceiveBufferLimits()
	so.SetReceiveBufferSize(clamp(int64(bytes), lo, hi), true)
	return nil
}

func setWriteBuffer(ep tcpip.Endpoint, bytes int, optErr func(error) error) error {
	if bytes < 0 {
		return optErr(errors.New("negative buffer size"))
	}
	so := ep.SocketOptions()
	lo, hi := so.SendBufferLimits()
	so.SetSendBufferSize(clamp(int64(bytes), lo, hi), true)
	return nil
}

// clamp puts v into [lo, hi]; gVisor's limits are a half-open [lo, hi).
func clamp(v, lo, hi int64) int64 {
	if hi > lo && v >= hi {
		v = hi - 1
	}
	return max(v, lo)
}

// UDPConn is a UDP socket of the stack: what ListenPacket, Dial and DialUDP
// return for "udp" networks (without Loopback). Besides net.Conn and
// net.PacketConn it has SetReadBuffer and SetWriteBuffer.
//
// A dial to one of the stack's own addresses on a port the stack does not
// listen on goes to the kernel (see Config.DialContext): its UDPConn
// wraps the kernel's socket, a *net.UDPConn, and every method is that
// socket's. Stack.Close closes it too.
type UDPConn struct {
	s       udpSock        // c, or k
	c       *gonet.UDPConn // nil for the kernel's socket
	ep      tcpip.Endpoint // nil for the kernel's socket
	k       *net.UDPConn   // the kernel's socket, else nil
	n       *netStack
	port    uint16
	v4      bool
	matches []wire.Match // a listening socket's rules; nil when dialled
	once    sync.Once
}

// udpSock is what UDPConn needs of gonet's and the kernel's sockets.
type udpSock interface {
	net.Conn
	ReadFrom(b []byte) (int, net.Addr, error)
	WriteTo(b []byte, addr net.Addr) (int, error)
}

func newUDPConn(n *netStack, wq *waiter.Queue, ep tcpip.Endpoint, port uint16, v4 bool, matches []wire.Match) *UDPConn {
	c := gonet.NewUDPConn(wq, ep)
	return &UDPConn{s: c, c: c, ep: ep, n: n, port: port, v4: v4, matches: matches}
}

// kernelUDPConn wraps a socket of the kernel's dialled for the stack.
func kernelUDPConn(n *netStack, k *net.UDPConn) *UDPConn {
	return &UDPConn{s: k, k: k, n: n}
}

// Read reads a datagram from a dialled socket.
func (c *UDPConn) Read(b []byte) (int, error) { return c.s.Read(b) }

// ReadFrom reads a datagram and its sender, a *net.UDPAddr.
func (c *UDPConn) ReadFrom(b []byte) (int, net.Addr, error) { return c.s.ReadFrom(b) }

// Write sends a datagram on a dialled socket.
func (c *UDPConn) Write(b []byte) (int, error) { return c.s.Write(b) }

// WriteTo sends to addr, a *net.UDPAddr; IPv4 addresses in 16-byte form
// are accepted on IPv4 sockets, unlike gonet's.
func (c *UDPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.k != nil {
		return c.k.WriteTo(b, addr)
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: net.InvalidAddrError("not a *net.UDPAddr")}
	}
	if ip4 := ua.IP.To4(); ip4 != nil && c.v4 {
		ua = &net.UDPAddr{IP: ip4, Port: ua.Port}
	} else if ip4 != nil && len(ua.IP) == net.IPv4len {
		ua = &net.UDPAddr{IP: ua.IP.To16(), Port: ua.Port} // v4-mapped on a dual-stack socket
	}
	return c.c.WriteTo(b, ua)
}

// Close closes the socket, removes its rules from usnetd and drops its
// reference on the stack.
func (c *UDPConn) Close() error {
	err := error(&net.OpError{Op: "close", Net: "udp", Addr: c.LocalAddr(), Err: net.ErrClosed})
	c.once.Do(func() {
		err = c.s.Close()
		if uerr := c.n.unregister(c.matches); uerr != nil {
			err = uerr
		}
		c.n.untrack(c)
		c.n.release()
	})
	return err
}

// LocalAddr returns the local address, a *net.UDPAddr.
func (c *UDPConn) LocalAddr() net.Addr { return c.s.LocalAddr() }

// RemoteAddr returns the peer of a dialled socket, a *net.UDPAddr.
func (c *UDPConn) RemoteAddr() net.Addr { return c.s.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (c *UDPConn) SetDeadline(t time.Time) error { return c.s.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *UDPConn) SetReadDeadline(t time.Time) error { return c.s.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *UDPConn) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }

func (c *UDPConn) optErr(err error) error {
	return &net.OpError{Op: "set", Net: "udp", Addr: c.LocalAddr(), Err: err}
}

// SetReadBuffer sets how many bytes of datagrams the socket queues before
// it drops new ones, clamped to the stack's limits.
func (c *UDPConn) SetReadBuffer(bytes int) error {
	if c.k != nil {
		return c.k.SetReadBuffer(bytes)
	}
	return setReadBuffer(c.ep, bytes, c.optErr)
}

// SetWriteBuffer sets the socket's send buffer, clamped to the stack's
// limits.
func (c *UDPConn) SetWriteBuffer(bytes int) error {
	if c.k != nil {
		return c.k.SetWriteBuffer(bytes)
	}
	return setWriteBuffer(c.ep, bytes, c.optErr)
}
