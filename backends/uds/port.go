package uds

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// DefaultBufferSize is the socket send and receive buffer of both ends: with
// the default (about 200 KiB) a busy TCP stack behind the channel meets
// EAGAIN and retransmits heavily (see docs/platform.md).
const DefaultBufferSize = 4 << 20

// MaxPoll is the longest Recv waits before it returns no frames, so that the
// pipeline's worker can notice a stop.
const MaxPoll = l4.RecvTimeout

// Options configure a Port. Zero values mean the defaults.
type Options struct {
	// Name is the port's name in logs and metrics, e.g. "endpoint 3 (pid 4242)".
	Name string
	// BufferSize is SO_SNDBUF and SO_RCVBUF of both ends, in bytes;
	// default DefaultBufferSize. It is forced past the sysctl limits where
	// the process has CAP_NET_ADMIN.
	BufferSize int
	// Poll is how long an idle Recv waits for a frame; default and at most
	// MaxPoll.
	Poll time.Duration
	// ProbeInterval is how often an idle Recv asks the kernel whether the
	// peer still exists; default 200 ms. WaitRx backs off to 4
	// ProbeIntervals while the channel stays idle.
	ProbeInterval time.Duration
	// OnPeerClosed, if set, is called once when the port notices that the
	// peer end is gone, from the goroutine that noticed (the pipeline's
	// RX worker or TX goroutine): it must not block and must not call
	// back into the pipeline.
	OnPeerClosed func()
}

func (o *Options) fill() {
	if o.BufferSize <= 0 {
		o.BufferSize = DefaultBufferSize
	}
	if o.Poll <= 0 || o.Poll > MaxPoll {
		o.Poll = MaxPoll
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 200 * time.Millisecond
	}
	if o.Name == "" {
		o.Name = "uds"
	}
}

// Stats are a port's own counters (the pipeline counts frames as well).
type Stats struct {
	RxFrames    uint64 // frames received
	RxTooBig    uint64 // datagrams dropped because they did not fit a buffer
	TxFrames    uint64 // frames sent
	TxDropped   uint64 // frames dropped because the peer's buffer was full (EAGAIN)
	Probes      uint64 // sock_diag queries about the peer
	ProbeErrors uint64 // queries that failed for another reason than "no such socket"
}

// Port is an l4.Port and l4.RxWaiter over one end of a Unix datagram
// socket pair (NewPair, New), or over a Unix datagram socket bound at a
// path (Listen, bound.go). It has one receive queue. WaitRx, Recv, Send and Close
// follow the l4.Port contract; PeerClosed and Stats may be called from any
// goroutine. The socket is non-blocking and waits in Go's netpoller
// (through an *os.File), so a waiting port costs a parked goroutine, not
// an OS thread.
type Port struct {
	opt  Options
	file *os.File // our end, nonblocking, in the netpoller
	rc   syscall.RawConn
	peer uint32
	// cookie of the peer socket, so that a new socket reusing the peer's
	// inode number does not pass for it.
	cookie  uint64
	probeMu sync.Mutex // Close against the Recv goroutine's probing
	probe   *prober    // nil: peer probing unavailable

	closed    atomic.Bool
	closeOnce sync.Once

	// bound is set for a port made by Listen; peerAddr is its peer, set
	// by the Recv goroutine, read by Send.
	bound    *boundState
	peerAddr atomic.Pointer[boundPeer]

	peerGone     chan struct{}
	peerGoneOnce sync.Once

	// The state of a call into the netpoller (RawConn.Read, Write) lives
	// here, and the callbacks are made once in newPort: a closure per
	// call would be an allocation per batch.
	rx struct { // owned by the Recv goroutine
		msgs      []unix.Mmsghdr
		iovs      []unix.Iovec
		lastProbe time.Time
		idle      uint // WaitRx timeouts in a row (backs the probing off)

		waitOp func(uintptr) bool
		recvOp func(uintptr) bool
		ready  bool
		armed  bool
		idleFn func()
		bufs   []*l4.Buf
		n      int
		err    error
	}
	tx struct { // owned by the Send goroutine
		msgs   []unix.Mmsghdr
		iovs   []unix.Iovec
		sendOp func(uintptr) bool
		n      int // frames to send
		sent   int
		err    error
	}

	rxFrames, rxTooBig, txFrames, txDropped, probes, probeErrors atomic.Uint64
}

// NewPair makes socketpair(AF_UNIX, SOCK_DGRAM) and returns a port over one
// end and the other end, to be handed to the peer (and closed by the
// caller once handed over). Both ends are close-on-exec; the peer's end is
// blocking.
func NewPair(opt Options) (*Port, *os.File, error) {
	// Both sockets and the sock_diag socket must be of one network
	// namespace: make them on one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("uds: socketpair: %w", err)
	}
	peer := os.NewFile(uintptr(fds[1]), "usnetd-channel")
	opt.fill()
	if err := setBuffers(fds[1], opt.BufferSize); err != nil {
		unix.Close(fds[0])
		peer.Close()
		return nil, nil, err
	}
	ino, err := inode(fds[1])
	if err != nil {
		unix.Close(fds[0])
		peer.Close()
		return nil, nil, fmt.Errorf("uds: %w", err)
	}
	p, err := newPort(fds[0], ino, opt)
	if err != nil {
		peer.Close()
		return nil, nil, err
	}
	return p, peer, nil
}

// New returns a port over fd, one end of a connected Unix datagram socket
// (a socketpair end received from usnetd, say). The port owns fd from then
// on, also when New fails. The peer is found through sock_diag; where that
// is not available, a closed peer is noticed only when a send fails.
func New(fd int, opt Options) (*Port, error) {
	opt.fill()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var peer uint32
	if pr, err := newProber(); err == nil {
		if own, err := inode(fd); err == nil {
			_, peer, _ = pr.query(own, ^uint64(0), true)
		}
		pr.close()
	}
	return newPort(fd, peer, opt)
}

// newPort takes fd (closing it on error) and the inode of its peer (0:
// unknown).
func newPort(fd int, peer uint32, opt Options) (*Port, error) {
	fail := func(err error) (*Port, error) {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail(fmt.Errorf("uds: %w", err))
	}
	if err := setBuffers(fd, opt.BufferSize); err != nil {
		return fail(err)
	}
	// A non-blocking descriptor goes into the netpoller.
	file := os.NewFile(uintptr(fd), opt.Name)
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("uds: %w", err)
	}
	p := &Port{opt: opt, file: file, rc: rc, peer: peer, peerGone: make(chan struct{})}
	p.rx.waitOp, p.rx.recvOp, p.tx.sendOp = p.waitOp, p.recvOp, p.sendOp
	if peer != 0 {
		if pr, err := newProber(); err == nil {
			if c, _, err := pr.query(peer, ^uint64(0), false); err == nil {
				p.probe, p.cookie = pr, c
			} else {
				pr.close()
			}
		}
	}
	return p, nil
}

// Name implements l4.Port.
func (p *Port) Name() string { return p.opt.Name }

// Kind implements l4.Port: an endpoint.
func (p *Port) Kind() l4.PortKind { return l4.PortEndpoint }

// RxQueues implements l4.Port: one.
func (p *Port) RxQueues() int { return 1 }

// PeerClosed is closed once the port noticed that its peer is gone.
func (p *Port) PeerClosed() <-chan struct{} { return p.peerGone }

// Probing reports whether the port can ask the kernel about its peer
// (otherwise a closed peer shows only when a send fails).
func (p *Port) Probing() bool {
	p.probeMu.Lock()
	defer p.probeMu.Unlock()
	return p.probe != nil
}

// Stats returns the port's counters.
func (p *Port) Stats() Stats {
	return Stats{
		RxFrames: p.rxFrames.Load(), RxTooBig: p.rxTooBig.Load(),
		TxFrames: p.txFrames.Load(), TxDropped: p.txDropped.Load(),
		Probes: p.probes.Load(), ProbeErrors: p.probeErrors.Load(),
	}
}

func (p *Port) markPeerGone() {
	p.peerGoneOnce.Do(func() {
		close(p.peerGone)
		if f := p.opt.OnPeerClosed; f != nil {
			f()
		}
	})
}

func (p *Port) isPeerGone() bool {
	select {
	case <-p.peerGone:
		return true
	default:
		return false
	}
}

// WaitRx implements l4.RxWaiter: it waits in the netpoller, holding no
// buffer, until a datagram is queued (true), the port is closed
// (l4.ErrPortClosed, at once) or Options.ProbeInterval passed (false,
// after asking whether the peer lives; 4 ProbeIntervals once the channel
// stayed idle). An idle channel thus costs a wake-up per 4
// ProbeIntervals, no thread and no buffer.
func (p *Port) WaitRx(q int, idle func()) (bool, error) {
	if q != 0 || p.closed.Load() || p.isPeerGone() {
		return false, l4.ErrPortClosed
	}
	p.rx.ready, p.rx.armed, p.rx.idleFn = false, false, idle
	defer func() { p.rx.idleFn = nil }()
	for {
		err := p.rc.Read(p.rx.waitOp)
		switch {
		case p.closed.Load():
			return false, l4.ErrPortClosed
		case p.rx.ready:
			p.rx.idle = 0
			return true, nil
		case err == nil:
			continue
		}
		if stale, err := p.timedOut(err, p.rx.armed); stale {
			continue
		} else {
			p.rx.idle++
			return false, err
		}
	}
}

// waitOp is WaitRx's callback in the netpoller: it reports true when a
// datagram is queued (or the port closed), and false to wait.
func (p *Port) waitOp(fd uintptr) bool {
	if p.closed.Load() {
		return true
	}
	if peek(int(fd)) {
		p.rx.ready = true
		return true
	}
	if f := p.rx.idleFn; f != nil {
		p.rx.idleFn = nil
		f()
	}
	// Close wakes the wait at once; the deadline is only for asking
	// whether the peer lives: every ProbeInterval at first, backing off
	// to every 4 ProbeIntervals while the channel stays idle.
	p.rx.armed = p.arm(p.rx.armed, max(p.opt.Poll, p.opt.ProbeInterval<<min(p.rx.idle, 2)))
	return false
}

// arm sets the read deadline, d from now, once per wait.
func (p *Port) arm(armed bool, d time.Duration) bool {
	if !armed {
		_ = p.file.SetReadDeadline(time.Now().Add(d))
	}
	return true
}

// timedOut handles an error of a wait in the netpoller: a deadline of an
// earlier call that expired since (stale: wait again), this call's
// deadline (ask whether the peer lives), or the port's close.
func (p *Port) timedOut(err error, armed bool) (stale bool, _ error) {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		if p.closed.Load() || errors.Is(err, os.ErrClosed) {
			return false, l4.ErrPortClosed
		}
		return false, fmt.Errorf("uds: %w", err)
	}
	_ = p.file.SetReadDeadline(time.Time{})
	if !armed {
		return true, nil
	}
	if !p.peerAlive() {
		p.markPeerGone()
		return false, l4.ErrPortClosed
	}
	return false, nil
}

// Recv implements l4.Port: it receives up to len(bufs) frames with one
// recvmmsg, waiting in the netpoller up to Options.Poll when none is
// queued.
func (p *Port) Recv(q int, bufs []*l4.Buf) (int, error) {
	if q != 0 || p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	p.rx.bufs, p.rx.armed = bufs, false
	defer func() { p.rx.bufs = nil }()
	for {
		if p.isPeerGone() {
			return 0, l4.ErrPortClosed
		}
		err := p.rc.Read(p.rx.recvOp)
		if err == nil {
			if p.rx.n > 0 {
				return p.rx.n, nil
			}
			if p.closed.Load() {
				return 0, l4.ErrPortClosed
			}
			return 0, fmt.Errorf("uds: recvmmsg: %w", p.rx.err)
		}
		if stale, err := p.timedOut(err, p.rx.armed); stale {
			continue
		} else {
			return 0, err
		}
	}
}

// recvOp is Recv's callback in the netpoller: one recvmmsg, and false to
// wait when nothing is queued.
func (p *Port) recvOp(fd uintptr) bool {
	for {
		p.rx.n, p.rx.err = p.recv(int(fd), p.rx.bufs)
		switch err := p.rx.err; {
		case p.rx.n > 0:
			return true
		case err == nil: // every datagram was too big: read on
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if p.closed.Load() {
				return true
			}
			p.rx.armed = p.arm(p.rx.armed, p.opt.Poll)
			return false
		default:
			return true
		}
	}
}

// recv is one recvmmsg into bufs. Datagrams that did not fit a buffer are
// counted and their buffers moved behind the good ones.
func (p *Port) recv(fd int, bufs []*l4.Buf) (int, error) {
	n := len(bufs)
	if cap(p.rx.msgs) < n {
		p.rx.msgs = make([]unix.Mmsghdr, n)
		p.rx.iovs = make([]unix.Iovec, n)
	}
	msgs, iovs := p.rx.msgs[:n], p.rx.iovs[:n]
	for i, b := range bufs {
		d := b.Data()
		if len(d) == 0 {
			return 0, errors.New("uds: buffer without capacity")
		}
		iovs[i].Base = &d[0]
		iovs[i].SetLen(len(d))
		msgs[i] = unix.Mmsghdr{Hdr: unix.Msghdr{Iov: &iovs[i], Iovlen: 1}}
	}
	if p.bound != nil {
		p.bound.prepareNames(msgs)
	}
	r, err := recvmmsg(fd, msgs)
	runtime.KeepAlive(bufs)
	clear(iovs) // no pointers into the pool stay behind
	if err != nil {
		return 0, err
	}
	good := 0
	for i := range r {
		if msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
			p.rxTooBig.Add(1)
			continue
		}
		bufs[i], bufs[good] = bufs[good], bufs[i]
		bufs[good].SetLen(int(msgs[i].Len))
		good++
		if p.bound != nil {
			p.learnPeer(msgs, i)
		}
	}
	p.rxFrames.Add(uint64(good))
	return good, nil
}

// peerAlive asks the kernel, at most every ProbeInterval, whether the peer
// socket still exists. Without probing, or when the kernel does not
// answer, it says yes.
func (p *Port) peerAlive() bool {
	// p.probe is read under probeMu only: Close clears it from another
	// goroutine.
	if time.Since(p.rx.lastProbe) < p.opt.ProbeInterval {
		return true
	}
	p.probeMu.Lock()
	defer p.probeMu.Unlock()
	if p.probe == nil {
		return true
	}
	p.rx.lastProbe = time.Now()
	p.probes.Add(1)
	_, _, err := p.probe.query(p.peer, p.cookie, false)
	if errors.Is(err, errNoSocket) {
		return false
	}
	if err != nil {
		p.probeErrors.Add(1)
	}
	return true
}

// Send implements l4.Port: it sends the frames with sendmmsg and never
// waits. Frames the peer's buffer has no room for are dropped: Send
// returns how many were sent.
func (p *Port) Send(bufs []*l4.Buf) (int, error) {
	if p.closed.Load() || p.isPeerGone() {
		return 0, l4.ErrPortClosed
	}
	n := len(bufs)
	if n == 0 {
		return 0, nil
	}
	if cap(p.tx.msgs) < n {
		p.tx.msgs = make([]unix.Mmsghdr, n)
		p.tx.iovs = make([]unix.Iovec, n)
	}
	var peer *boundPeer
	if p.bound != nil {
		if peer = p.peerAddr.Load(); peer == nil {
			p.txDropped.Add(uint64(n)) // no peer yet
			return 0, nil
		}
	}
	msgs, iovs := p.tx.msgs[:n], p.tx.iovs[:n]
	for i, b := range bufs {
		f := b.Bytes()
		if len(f) == 0 {
			iovs[i].Base = &emptyFrame[0]
			iovs[i].SetLen(0)
		} else {
			iovs[i].Base = &f[0]
			iovs[i].SetLen(len(f))
		}
		msgs[i] = unix.Mmsghdr{Hdr: unix.Msghdr{Iov: &iovs[i], Iovlen: 1}}
		if peer != nil {
			msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&peer.sa))
			msgs[i].Hdr.Namelen = peer.len
		}
	}
	defer clear(iovs)
	p.tx.n, p.tx.sent, p.tx.err = n, 0, nil
	werr := p.rc.Write(p.tx.sendOp)
	runtime.KeepAlive(bufs)
	runtime.KeepAlive(peer)
	if peer != nil {
		clear(msgs) // no pointer to the peer stays behind
	}
	sent, err := p.tx.sent, p.tx.err
	p.txFrames.Add(uint64(sent))
	switch {
	case werr != nil:
		return sent, l4.ErrPortClosed
	case p.bound != nil:
		// A bound port's peer may be gone (ECONNREFUSED, ENOENT), its
		// buffer full or its file closed to us: the frames are dropped,
		// the port stays.
	case err == nil, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS):
		// The peer's buffer is full: the rest is dropped.
	case errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ENOTCONN), errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET):
		p.markPeerGone()
		return sent, l4.ErrPortClosed
	default:
		p.txDropped.Add(uint64(n - sent))
		return sent, fmt.Errorf("uds: sendmmsg: %w", err)
	}
	p.txDropped.Add(uint64(n - sent))
	return sent, nil
}

// emptyFrame is what an iovec of an empty frame points at (a local would
// escape: an allocation per Send).
var emptyFrame [1]byte

// sendOp is Send's callback in the netpoller: sendmmsg until all went or
// the peer's buffer is full; it never waits (a full peer drops).
func (p *Port) sendOp(fd uintptr) bool {
	msgs := p.tx.msgs[:p.tx.n]
	for p.tx.sent < p.tx.n {
		var r int
		r, p.tx.err = sendmmsg(int(fd), msgs[p.tx.sent:])
		p.tx.sent += r
		if p.tx.err == nil && r > 0 || errors.Is(p.tx.err, unix.EINTR) {
			continue
		}
		break
	}
	return true
}

// Close implements l4.Port: it wakes a waiting WaitRx or Recv (the
// netpoller lets them go), waits until they and Send have left the
// descriptor, and closes it. It is idempotent.
func (p *Port) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		_ = p.file.Close()
		if p.bound != nil {
			p.bound.removeFile()
		}
		p.probeMu.Lock()
		if p.probe != nil {
			p.probe.close()
			p.probe = nil
		}
		p.probeMu.Unlock()
	})
	return nil
}

var (
	_ l4.Port     = (*Port)(nil)
	_ l4.RxWaiter = (*Port)(nil)
)
