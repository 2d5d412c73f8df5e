package usnet

// Loopback mirroring (Config.Loopback): a listener or packet conn that
// serves the stack and a kernel socket on the loopback interface as one.

import (
	"net"
	"os"
	"sync"
	"time"
)

// mirrorListener accepts from the stack's listener and a kernel loopback
// listener. One goroutine per listener accepts and hands each connection
// over; Close stops both and waits for the goroutines.
type mirrorListener struct {
	main, kernel net.Listener
	conns        chan net.Conn
	done         chan struct{}
	doneOnce     sync.Once
	closeOnce    sync.Once
	wg           sync.WaitGroup
	errMu        sync.Mutex
	err          error // first accept error that is not from Close
}

func newMirrorListener(main, kernel net.Listener) *mirrorListener {
	m := &mirrorListener{main: main, kernel: kernel, conns: make(chan net.Conn), done: make(chan struct{})}
	m.wg.Add(2)
	go m.accept(main)
	go m.accept(kernel)
	return m
}

func (m *mirrorListener) accept(l net.Listener) {
	defer m.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			m.errMu.Lock()
			if m.err == nil {
				m.err = err
			}
			m.errMu.Unlock()
			m.stop()
			return
		}
		select {
		case m.conns <- c:
		case <-m.done:
			c.Close()
			return
		}
	}
}

func (m *mirrorListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		m.errMu.Lock()
		defer m.errMu.Unlock()
		if m.err != nil {
			return nil, m.err
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: m.Addr(), Err: net.ErrClosed}
	}
}

// stop makes Accept fail; an accept error stops the listener this way.
func (m *mirrorListener) stop() { m.doneOnce.Do(func() { close(m.done) }) }

// Close closes both listeners and waits for the accepting goroutines.
func (m *mirrorListener) Close() error {
	err := error(&net.OpError{Op: "close", Net: "tcp", Addr: m.Addr(), Err: net.ErrClosed})
	m.closeOnce.Do(func() {
		m.stop()
		err = m.main.Close()
		if kerr := m.kernel.Close(); err == nil {
			err = kerr
		}
		m.wg.Wait()
	})
	return err
}

// Addr is the stack's address.
func (m *mirrorListener) Addr() net.Addr { return m.main.Addr() }

// mirrorPacketConn reads from the stack's socket and a kernel loopback
// socket; WriteTo a loopback address goes through the kernel. A reader
// goroutine per socket holds at most one datagram until ReadFrom takes it.
type mirrorPacketConn struct {
	main, kernel net.PacketConn
	dgrams       chan dgram
	done         chan struct{}
	closeOnce    sync.Once
	wg           sync.WaitGroup

	dlMu    sync.Mutex
	dlTimer *time.Timer
	dlCh    chan struct{} // closed when the read deadline passes
}

type dgram struct {
	b    []byte
	addr net.Addr
	err  error
}

func newMirrorPacketConn(main, kernel net.PacketConn) *mirrorPacketConn {
	m := &mirrorPacketConn{main: main, kernel: kernel, dgrams: make(chan dgram), done: make(chan struct{}), dlCh: make(chan struct{})}
	m.wg.Add(2)
	go m.read(main)
	go m.read(kernel)
	return m
}

func (m *mirrorPacketConn) read(pc net.PacketConn) {
	defer m.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, addr, err := pc.ReadFrom(buf)
		d := dgram{b: append([]byte(nil), buf[:n]...), addr: addr, err: err}
		select {
		case m.dgrams <- d:
		case <-m.done:
			return
		}
		if err != nil {
			return
		}
	}
}

// ReadFrom returns the next datagram from either socket. The read
// deadline applies to the merged read.
func (m *mirrorPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	m.dlMu.Lock()
	dl := m.dlCh
	m.dlMu.Unlock()
	select {
	case d := <-m.dgrams:
		if d.err != nil {
			return 0, d.addr, d.err
		}
		return copy(b, d.b), d.addr, nil
	case <-m.done:
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Addr: m.LocalAddr(), Err: net.ErrClosed}
	case <-dl:
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Addr: m.LocalAddr(), Err: os.ErrDeadlineExceeded}
	}
}

func (m *mirrorPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); ok && ua.IP.IsLoopback() {
		return m.kernel.WriteTo(b, addr)
	}
	return m.main.WriteTo(b, addr)
}

// Close closes both sockets and waits for the reading goroutines.
func (m *mirrorPacketConn) Close() error {
	err := error(&net.OpError{Op: "close", Net: "udp", Addr: m.LocalAddr(), Err: net.ErrClosed})
	m.closeOnce.Do(func() {
		close(m.done)
		err = m.main.Close()
		if kerr := m.kernel.Close(); err == nil {
			err = kerr
		}
		m.wg.Wait()
		m.dlMu.Lock()
		if m.dlTimer != nil {
			m.dlTimer.Stop()
		}
		m.dlMu.Unlock()
	})
	return err
}

func (m *mirrorPacketConn) LocalAddr() net.Addr { return m.main.LocalAddr() }

func (m *mirrorPacketConn) SetDeadline(t time.Time) error {
	m.SetReadDeadline(t)
	return m.SetWriteDeadline(t)
}

func (m *mirrorPacketConn) SetReadDeadline(t time.Time) error {
	m.dlMu.Lock()
	defer m.dlMu.Unlock()
	if m.dlTimer != nil {
		m.dlTimer.Stop()
		m.dlTimer = nil
	}
	m.dlCh = make(chan struct{}) // never reuse one an old timer may close
	if t.IsZero() {
		return nil
	}
	ch := m.dlCh
	if d := time.Until(t); d <= 0 {
		close(ch)
	} else {
		m.dlTimer = time.AfterFunc(d, func() { close(ch) })
	}
	return nil
}

func (m *mirrorPacketConn) SetWriteDeadline(t time.Time) error {
	err := m.main.SetWriteDeadline(t)
	if kerr := m.kernel.SetWriteDeadline(t); err == nil {
		err = kerr
	}
	return err
}
