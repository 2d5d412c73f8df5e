package uds

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// DefaultBufferSize is the socket send and receive buffer of both ends: with
// the default (about 200 KiB) a busy TCP stack behind the channel meets
// EAGAIN and retransmits heavily (see docs/platform.md).
const DefaultBufferSize = 4 << 20

// MaxPoll is the longest Recv waits before it returns no frames, so that the
// pipeline's worker can notice a stop.
const MaxPoll = 100 * time.Millisecond

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
	// peer still exists; default 200 ms.
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

// Port is an l4.Port over one end of a Unix datagram socket pair. It has
// one receive queue. Recv, Send and Close follow the l4.Port contract;
// PeerClosed and Stats may be called from any goroutine.
type Port struct {
	opt  Options
	fd   int // our end, nonblocking
	efd  int // eventfd, readable once Close was called
	peer uint32
	// cookie of the peer socket, so that a new socket reusing the peer's
	// inode number does not pass for it.
	cookie uint64
	probe  *prober // nil: peer probing unavailable; owned by the Recv goroutine

	// mu is held shared by Recv and Send while they use the descriptors
	// and exclusively by Close while it closes them.
	mu        sync.RWMutex
	closed    atomic.Bool
	closeOnce sync.Once

	peerGone     chan struct{}
	peerGoneOnce sync.Once

	rx struct { // owned by the Recv goroutine
		msgs      []unix.Mmsghdr
		iovs      []unix.Iovec
		lastProbe time.Time
	}
	tx struct { // owned by the Send goroutine
		msgs []unix.Mmsghdr
		iovs []unix.Iovec
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
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fail(fmt.Errorf("uds: eventfd: %w", err))
	}
	p := &Port{opt: opt, fd: fd, efd: efd, peer: peer, peerGone: make(chan struct{})}
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
func (p *Port) Probing() bool { return p.probe != nil }

// Stats returns the port's counters.
func (p *Port) Stats() Stats {
	return Stats{
		RxFrames: p.rxFrames.Load(), RxTooBig: p.rxTooBig.Load(),
		TxFrames: p.txFrames.Load(), TxDropped: p.txDropped.Load(),
		Probes: p.probes.Load(), ProbeErrors: p.probeErrors.Load(),
	}
}

func (p *Port) enter() bool {
	p.mu.RLock()
	if p.closed.Load() {
		p.mu.RUnlock()
		return false
	}
	return true
}

func (p *Port) leave() { p.mu.RUnlock() }

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

// Recv implements l4.Port: it receives up to len(bufs) frames with one
// recvmmsg, waiting in poll() up to Options.Poll when none is queued.
func (p *Port) Recv(q int, bufs []*l4.Buf) (int, error) {
	if q != 0 || !p.enter() {
		return 0, l4.ErrPortClosed
	}
	defer p.leave()
	if len(bufs) == 0 {
		return 0, nil
	}
	for {
		if p.isPeerGone() {
			return 0, l4.ErrPortClosed
		}
		n, err := p.recv(bufs)
		if n > 0 {
			return n, nil
		}
		switch {
		case err == nil: // every datagram was too big: read on
			continue
		case errors.Is(err, unix.EAGAIN):
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return 0, fmt.Errorf("uds: recvmmsg: %w", err)
		}
		pfd := [2]unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}, {Fd: int32(p.efd), Events: unix.POLLIN}}
		k, err := unix.Poll(pfd[:], int(p.opt.Poll/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("uds: poll: %w", err)
		}
		if pfd[1].Revents != 0 {
			return 0, l4.ErrPortClosed
		}
		if k == 0 {
			if !p.peerAlive() {
				p.markPeerGone()
				return 0, l4.ErrPortClosed
			}
			return 0, nil
		}
	}
}

// recv is one recvmmsg into bufs. Datagrams that did not fit a buffer are
// counted and their buffers moved behind the good ones.
func (p *Port) recv(bufs []*l4.Buf) (int, error) {
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
	r, err := recvmmsg(p.fd, msgs)
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
	}
	p.rxFrames.Add(uint64(good))
	return good, nil
}

// peerAlive asks the kernel, at most every ProbeInterval, whether the peer
// socket still exists. Without probing, or when the kernel does not
// answer, it says yes.
func (p *Port) peerAlive() bool {
	if p.probe == nil || time.Since(p.rx.lastProbe) < p.opt.ProbeInterval {
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
	if !p.enter() {
		return 0, l4.ErrPortClosed
	}
	defer p.leave()
	if p.isPeerGone() {
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
	msgs, iovs := p.tx.msgs[:n], p.tx.iovs[:n]
	var empty [1]byte
	for i, b := range bufs {
		f := b.Bytes()
		if len(f) == 0 {
			iovs[i].Base = &empty[0]
			iovs[i].SetLen(0)
		} else {
			iovs[i].Base = &f[0]
			iovs[i].SetLen(len(f))
		}
		msgs[i] = unix.Mmsghdr{Hdr: unix.Msghdr{Iov: &iovs[i], Iovlen: 1}}
	}
	defer clear(iovs)
	sent := 0
	for sent < n {
		r, err := sendmmsg(p.fd, msgs[sent:])
		runtime.KeepAlive(bufs)
		sent += r
		switch {
		case err == nil && r > 0:
			continue
		case err == nil, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS):
			// The peer's buffer is full: drop the rest.
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ENOTCONN), errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET):
			p.txFrames.Add(uint64(sent))
			p.markPeerGone()
			return sent, l4.ErrPortClosed
		default:
			p.txFrames.Add(uint64(sent))
			p.txDropped.Add(uint64(n - sent))
			return sent, fmt.Errorf("uds: sendmmsg: %w", err)
		}
		break
	}
	p.txFrames.Add(uint64(sent))
	p.txDropped.Add(uint64(n - sent))
	return sent, nil
}

// Close implements l4.Port: it wakes a waiting Recv, waits until Recv and
// Send have left the descriptors, and closes them. It is idempotent.
func (p *Port) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		_, _ = unix.Write(p.efd, one[:])
		p.mu.Lock()
		unix.Close(p.fd)
		unix.Close(p.efd)
		if p.probe != nil {
			p.probe.close()
		}
		p.mu.Unlock()
	})
	return nil
}

var _ l4.Port = (*Port)(nil)
