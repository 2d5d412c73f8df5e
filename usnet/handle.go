package usnet

// Stack: an explicit handle on one attached stack.

import (
	"context"
	"net"
	"net/netip"
	"sync"
)

// Stack is one userspace stack attached to usnetd, opened by Open: it
// attaches once and serves every Listen, ListenPacket and Dial on the same
// gVisor stack and packet channel until Close, however many sockets come
// and go. A program that dials one connection at a time should use one.
// It survives restarts of usnetd as a Config's stack does. Its methods are
// safe for concurrent use.
type Stack struct {
	n *netStack

	mu     sync.Mutex
	closed bool
	// closing is canceled by Close: dials in progress give up.
	closing context.Context
	close   context.CancelFunc
}

// Open attaches a stack described by cfg (nil: every field from the
// environment, as Default) and keeps it until Close. ctx bounds the
// attach (connecting to usnetd, requesting a channel); a stack that attaches after
// ctx is done is torn down again. The stack is the Stack's own: it is not
// the one that cfg's Listen, ListenPacket and Dial share, and cfg must not
// change while the Stack is open.
func Open(ctx context.Context, cfg *Config) (*Stack, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	type result struct {
		n   *netStack
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := newNetStack(cfg, res)
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, r.err
		}
		r.n.refs = 1 // the Stack's own, dropped by Close
		closing, cancel := context.WithCancel(context.Background())
		return &Stack{n: r.n, closing: closing, close: cancel}, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.n != nil {
				r.n.teardown()
			}
		}()
		return nil, ctx.Err()
	}
}

// acquire adds a reference for a new socket; after Close it fails.
func (s *Stack) acquire() (*netStack, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, net.ErrClosed
	}
	s.n.ref()
	return s.n, nil
}

func (s *Stack) loopbackEnabled() bool { return s.n.res.loopback }

// dialContext ends ctx when the Stack is closed, so that Close does not
// wait for a dial to a peer that does not answer.
func (s *Stack) dialContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.closing, func() { cancel(net.ErrClosed) })
	return ctx, func() {
		stop()
		cancel(nil)
	}
}

// Addrs returns the stack's addresses with their prefix lengths.
func (s *Stack) Addrs() []netip.Prefix {
	return append([]netip.Prefix(nil), s.n.res.addrs...)
}

// Listen announces on the stack; see Config.Listen. Its Accept returns
// *TCPConn (with Loopback, a *net.TCPConn for a connection through the
// kernel's loopback).
func (s *Stack) Listen(network, address string) (net.Listener, error) {
	return listen(s, network, address)
}

// ListenPacket announces on the stack; see Config.ListenPacket. The conn
// is a *UDPConn unless Loopback mirrors it.
func (s *Stack) ListenPacket(network, address string) (net.PacketConn, error) {
	return listenPacket(s, network, address)
}

// Dial connects through the stack; see DialContext.
func (s *Stack) Dial(network, address string) (net.Conn, error) {
	return dial(context.Background(), s, network, address)
}

// DialContext connects through the stack; see Config.DialContext. The
// conn is a *TCPConn or a *UDPConn (one that wraps the kernel's
// connection for a port on the stack's own address that the stack does
// not listen on; a kernel connection for loopback addresses with
// Loopback). It is the DialContext of an http.Transport whose connections
// should use this stack.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return dial(ctx, s, network, address)
}

// DialTCP connects through the stack like DialContext with a "tcp",
// "tcp4" or "tcp6" network to an address that is not loopback, and
// returns the *TCPConn (the kernel's connection wrapped, for a kernel
// service on the stack's own address).
func (s *Stack) DialTCP(ctx context.Context, network, address string) (*TCPConn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	c, err := dial(ctx, s, network, address)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*TCPConn)
	if !ok {
		c.Close()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ErrLoopback}
	}
	return tc, nil
}

// DialUDP makes a connected UDP socket on the stack like DialContext with
// a "udp", "udp4" or "udp6" network to an address that is not loopback,
// and returns the *UDPConn (the kernel's socket wrapped, for a kernel
// service on the stack's own address).
func (s *Stack) DialUDP(ctx context.Context, network, address string) (*UDPConn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	c, err := dial(ctx, s, network, address)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*UDPConn)
	if !ok {
		c.Close()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ErrLoopback}
	}
	return uc, nil
}

// Close closes every socket still open on the stack (listeners, their
// connections, dialled connections and UDP sockets: their calls fail with
// net.ErrClosed), ends dials in progress (they fail with net.ErrClosed),
// lets TCP connections finish their closing handshake (up
// to a second), tears the stack down and detaches from usnetd
// (DeleteClient). No goroutine and no descriptor of the stack stays.
// Later calls fail with net.ErrClosed.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return &net.OpError{Op: "close", Net: "usnet", Err: net.ErrClosed}
	}
	s.closed = true
	s.close()
	s.mu.Unlock()
	s.n.shutdown()
	s.n.release()
	return nil
}
