package shm

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/shm/ring"
	l4 "github.com/usnetd/usnetd/switch"
)

// MaxPoll is the longest Recv waits before it returns no frames, and the
// longest WaitRx waits before it reports no frames, so that the pipeline's
// worker can notice a stop.
const MaxPoll = 100 * time.Millisecond

// Options configure a Port. Zero values mean the defaults.
type Options struct {
	// Name is the port's name in logs and metrics.
	Name string
	// Slots per ring (a power of two); default ring.DefaultSlots (1024:
	// about 2 MiB per ring with 2 KiB buffers), fewer for jumbo frames so
	// that a ring stays within 4 MiB. A ring holds what arrives while the
	// endpoint is not scheduled; the memfd's pages are allocated as the
	// slots are first used.
	Slots int
	// FrameCap is the largest frame the channel carries: the MTU plus the
	// Ethernet (and VLAN) header; default 1518.
	FrameCap int
	// MTU is written into the header for the endpoint.
	MTU int
	// Poll is how long an idle Recv waits; default and at most MaxPoll.
	Poll time.Duration
	// Idle is how long an idle WaitRx waits; default 1 s.
	Idle time.Duration
	// OnPeerClosed, if set, is called once when the port notices that the
	// endpoint closed its end; it must not block nor call into the
	// pipeline.
	OnPeerClosed func()
}

func (o *Options) fill() {
	if o.FrameCap <= 0 {
		o.FrameCap = 1518
	}
	if o.Slots <= 0 {
		o.Slots = ring.DefaultSlots
		for o.Slots > 16 && o.Slots*(o.FrameCap+8) > 4<<20 {
			o.Slots /= 2
		}
	}
	if o.Poll <= 0 || o.Poll > MaxPoll {
		o.Poll = MaxPoll
	}
	if o.Idle <= 0 {
		o.Idle = time.Second
	}
	if o.Name == "" {
		o.Name = "shm"
	}
}

// Stats are a port's own counters.
type Stats struct {
	RxFrames   uint64 // frames read from the endpoint's ring
	RxBadIndex uint64 // producer indices of the endpoint that were out of range
	RxBadLen   uint64 // frames dropped: length 0, above the slot or above a buffer
	TxFrames   uint64 // frames written into the endpoint's ring
	TxRingFull uint64 // frames dropped: the endpoint's ring was full
	TxTooBig   uint64 // frames dropped: longer than a slot
	TxBadIndex uint64 // consumer indices of the endpoint that were out of range
	Wakeups    uint64 // wake-ups sent to the endpoint
}

// Handoff is what the endpoint gets: the memfd and its end of the wake-up
// socket pair. The caller sends both (SCM_RIGHTS) and closes them.
type Handoff struct {
	Mem  *os.File
	Wake *os.File
}

// Close closes both files.
func (h Handoff) Close() {
	if h.Mem != nil {
		h.Mem.Close()
	}
	if h.Wake != nil {
		h.Wake.Close()
	}
}

// Port is an l4.Port and l4.RxWaiter over a shared-memory channel. It has
// one receive queue.
type Port struct {
	opt  Options
	mem  *ring.Mem
	wake *os.File // our end of the wake-up pair, in the netpoller
	rc   syscall.RawConn

	// mu keeps Close from unmapping while Recv or Send are inside the
	// mapping: they hold it shared for one batch, never while waiting.
	mu     sync.RWMutex
	closed atomic.Bool
	once   sync.Once

	peerGone     chan struct{}
	peerGoneOnce sync.Once

	rx struct { // the Recv goroutine's
		c      *ring.Consumer
		ready  bool
		gone   bool
		idleFn func()
		waitOp func(uintptr) bool
		armed  bool
		d      time.Duration // this wait's limit
	}
	tx struct { // the Send goroutine's
		p      *ring.Producer
		kickOp func(uintptr)
		kerr   error
	}

	rxFrames, rxBadIndex, rxBadLen                      atomic.Uint64
	txFrames, txRingFull, txTooBig, txBadIndex, wakeups atomic.Uint64
}

// Charge is the memory a busy channel made with opt holds in usnetd: the
// header page and the to-endpoint ring, whose pages usnetd's writes
// allocate in its own cgroup (the endpoint's writes allocate those of the
// other ring, in the endpoint's). About 2 MiB with 2 KiB buffers.
func Charge(opt Options) int64 {
	opt.fill()
	g := ring.Geometry{Slots: opt.Slots, FrameCap: opt.FrameCap}
	return int64(ring.DataOffset) + int64(opt.Slots)*int64(g.SlotSize())
}

// New makes a channel: the memfd, its mapping, the wake-up pair, and the
// port over usnetd's side. The Handoff goes to the endpoint.
func New(opt Options) (*Port, Handoff, error) {
	opt.fill()
	mem, mfd, err := ring.Create(ring.Geometry{Slots: opt.Slots, FrameCap: opt.FrameCap}, opt.MTU)
	if err != nil {
		return nil, Handoff{}, err
	}
	fds, err := ring.NewWakePair()
	if err != nil {
		mem.Unmap()
		unix.Close(mfd)
		return nil, Handoff{}, err
	}
	h := Handoff{Mem: os.NewFile(uintptr(mfd), "usnetd-shm"), Wake: os.NewFile(uintptr(fds[1]), "usnetd-shm-wake")}
	// fds[0] is non-blocking: os.NewFile puts it in the netpoller.
	wake := os.NewFile(uintptr(fds[0]), opt.Name)
	rc, err := wake.SyscallConn()
	if err != nil {
		wake.Close()
		mem.Unmap()
		h.Close()
		return nil, Handoff{}, fmt.Errorf("shm: %w", err)
	}
	p := &Port{opt: opt, mem: mem, wake: wake, rc: rc, peerGone: make(chan struct{})}
	p.rx.c = mem.Consumer(ring.FromEndpoint)
	p.tx.p = mem.Producer(ring.ToEndpoint)
	p.rx.waitOp = p.waitOp
	p.tx.kickOp = p.kickOp
	return p, h, nil
}

// Name implements l4.Port.
func (p *Port) Name() string { return p.opt.Name }

// Kind implements l4.Port: an endpoint.
func (p *Port) Kind() l4.PortKind { return l4.PortEndpoint }

// RxQueues implements l4.Port: one.
func (p *Port) RxQueues() int { return 1 }

// FrameCap is the largest frame the channel carries.
func (p *Port) FrameCap() int { return p.opt.FrameCap }

// PeerClosed is closed once the port noticed that the endpoint closed its
// end of the wake-up pair (it exited or detached).
func (p *Port) PeerClosed() <-chan struct{} { return p.peerGone }

// Stats returns the port's counters.
func (p *Port) Stats() Stats {
	return Stats{
		RxFrames: p.rxFrames.Load(), RxBadIndex: p.rxBadIndex.Load(), RxBadLen: p.rxBadLen.Load(),
		TxFrames: p.txFrames.Load(), TxRingFull: p.txRingFull.Load(), TxTooBig: p.txTooBig.Load(),
		TxBadIndex: p.txBadIndex.Load(), Wakeups: p.wakeups.Load(),
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

// avail is the consumer's Avail under the shared lock, with its counters
// carried over; -1 when the port is closed.
func (p *Port) avail() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return -1
	}
	c := p.rx.c
	bi := c.BadIndex
	n := c.Avail()
	if c.BadIndex != bi {
		p.rxBadIndex.Add(c.BadIndex - bi)
	}
	return n
}

// armAvail sets need-wakeup and looks once more.
func (p *Port) armAvail() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return -1
	}
	if p.rx.c.ArmWakeup() {
		return 1
	}
	return 0
}

// WaitRx implements l4.RxWaiter: frames in the endpoint's ring are seen
// without a system call; only when the ring is empty does it set
// need-wakeup and wait in the netpoller for the endpoint's wake-up (or
// Options.Idle, or Close).
func (p *Port) WaitRx(q int, idle func()) (bool, error) {
	return p.wait(q, idle, p.opt.Idle)
}

func (p *Port) wait(q int, idle func(), d time.Duration) (bool, error) {
	if q != 0 || p.closed.Load() || p.isPeerGone() {
		return false, l4.ErrPortClosed
	}
	switch p.avail() {
	case -1:
		return false, l4.ErrPortClosed
	case 0:
	default:
		return true, nil
	}
	switch p.armAvail() {
	case -1:
		return false, l4.ErrPortClosed
	case 1:
		return true, nil
	}
	p.rx.ready, p.rx.gone, p.rx.idleFn, p.rx.armed, p.rx.d = false, false, idle, false, d
	defer func() { p.rx.idleFn = nil }()
	deadline := time.Now().Add(d)
	for {
		err := p.rc.Read(p.rx.waitOp)
		switch {
		case p.closed.Load():
			return false, l4.ErrPortClosed
		case p.rx.gone:
			p.markPeerGone()
			return false, l4.ErrPortClosed
		case p.rx.ready:
			return p.avail() > 0, nil
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			_ = p.wake.SetReadDeadline(time.Time{})
			if time.Now().Before(deadline) {
				p.rx.armed = false
				continue // a deadline of an earlier wait
			}
			return p.avail() > 0, nil
		default:
			return false, l4.ErrPortClosed
		}
	}
}

// waitOp drains the wake-up socket: true when a wake-up came (or the peer
// went), false to wait in the netpoller.
func (p *Port) waitOp(fd uintptr) bool {
	var b [16]byte
	got := false
	for {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
		case err != nil, n == 0:
			p.rx.gone = true
			return true
		default:
			got = true
			continue
		}
		break
	}
	if got || p.closed.Load() {
		p.rx.ready = true
		return true
	}
	// The ring may have filled between the check and now without a
	// wake-up reaching us yet (the flag was set): look once more.
	if p.avail() != 0 {
		p.rx.ready = true
		return true
	}
	if f := p.rx.idleFn; f != nil {
		p.rx.idleFn = nil
		f()
	}
	if !p.rx.armed {
		p.rx.armed = true
		_ = p.wake.SetReadDeadline(time.Now().Add(p.rx.d))
	}
	return false
}

// Recv implements l4.Port: it copies up to len(bufs) frames out of the
// endpoint's ring, with no system call when frames are there; otherwise it
// waits up to Options.Poll.
func (p *Port) Recv(q int, bufs []*l4.Buf) (int, error) {
	if q != 0 || p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	n, err := p.read(bufs)
	if n != 0 || err != nil {
		return n, err
	}
	if _, err := p.wait(q, nil, p.opt.Poll); err != nil {
		return 0, err
	}
	return p.read(bufs)
}

func (p *Port) read(bufs []*l4.Buf) (int, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	c := p.rx.c
	bi, bl := c.BadIndex, c.BadLen
	n := min(c.Avail(), len(bufs))
	good := 0
	for i := range n {
		b := bufs[good]
		if l := c.Read(i, b.Data()); l > 0 {
			b.SetLen(l)
			good++
		}
	}
	c.Release(n)
	p.rxFrames.Add(uint64(good))
	if c.BadIndex != bi {
		p.rxBadIndex.Add(c.BadIndex - bi)
	}
	if c.BadLen != bl {
		p.rxBadLen.Add(c.BadLen - bl)
	}
	return good, nil
}

// Send implements l4.Port: it copies the frames straight into the
// endpoint's ring and never waits. Frames the ring has no room for are
// dropped (TxRingFull), as are frames longer than a slot (TxTooBig). It
// wakes the endpoint only when it asked (need-wakeup).
func (p *Port) Send(bufs []*l4.Buf) (int, error) {
	if p.closed.Load() || p.isPeerGone() {
		return 0, l4.ErrPortClosed
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	p.mu.RLock()
	if p.closed.Load() {
		p.mu.RUnlock()
		return 0, l4.ErrPortClosed
	}
	pr := p.tx.p
	bi := pr.BadIndex
	free := pr.Free()
	capy := pr.FrameCap()
	k, tooBig, full := 0, 0, 0
	for _, b := range bufs {
		f := b.Bytes()
		switch {
		case len(f) == 0 || len(f) > capy:
			tooBig++
		case k == free:
			full++
		default:
			copy(pr.Slot(k), f)
			pr.SetLen(k, len(f))
			k++
		}
	}
	wake := pr.Publish(k)
	if pr.BadIndex != bi {
		p.txBadIndex.Add(pr.BadIndex - bi)
	}
	p.mu.RUnlock()
	sent := k
	p.txFrames.Add(uint64(sent))
	if tooBig > 0 {
		p.txTooBig.Add(uint64(tooBig))
	}
	if full > 0 {
		p.txRingFull.Add(uint64(full))
	}
	if wake {
		p.wakeups.Add(1)
		p.tx.kerr = nil
		if err := p.rc.Control(p.tx.kickOp); err != nil {
			return sent, l4.ErrPortClosed
		}
		if p.tx.kerr != nil {
			p.markPeerGone()
			return sent, l4.ErrPortClosed
		}
	}
	return sent, nil
}

func (p *Port) kickOp(fd uintptr) { p.tx.kerr = ring.Kick(int(fd)) }

// Close implements l4.Port: it wakes a waiting WaitRx or Recv, waits until
// Recv and Send left the mapping, unmaps it and closes the wake-up socket.
// The memory is freed once the endpoint's mapping is gone too. It is
// idempotent.
func (p *Port) Close() error {
	p.once.Do(func() {
		p.closed.Store(true)
		_ = p.wake.Close()
		p.mu.Lock()
		_ = p.mem.Unmap()
		p.mu.Unlock()
	})
	return nil
}

var (
	_ l4.Port     = (*Port)(nil)
	_ l4.RxWaiter = (*Port)(nil)
)
