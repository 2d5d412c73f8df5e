package macvtap

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

const (
	kindNIC    = l4.PortNIC
	kindKernel = l4.PortKernel
)

// pollTimeout is how long Recv waits for a frame (milliseconds): the
// l4.Port contract's receive timeout.
const pollTimeout = l4.RecvTimeoutMillis

// sendWait is how long Send waits (milliseconds) for a queue that refused
// a frame (EAGAIN) to take frames again, before it drops the rest of the
// batch.
const sendWait = 10

// Port is an l4.Port on the queues of a macvtap (the NIC's side, kind
// PortNIC) or of a TAP (the kernel's side, kind PortKernel): one
// non-blocking file descriptor per queue, one frame per read and per
// write.
//
// Ownership: queue q's fd is read only by the goroutine calling Recv(q, …),
// under q's rxMu, which only Close contends; Send writes every frame to
// the first queue's fd under txMu. (The kernel spreads the frames it gives
// a macvtap or TAP over its queues by flow hash; frames written to any
// queue are the same to it, and the pipeline has one TX goroutine per
// port.) Stats may be called from anywhere.
type Port struct {
	name string
	kind l4.PortKind
	fds  []int
	q    []rxQueue
	efd  int // eventfd written by Close: wakes every poll

	txMu sync.Mutex
	tx   struct {
		frames, dropped, again, errors atomic.Uint64
	}

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

type rxQueue struct {
	mu      sync.Mutex
	pollfds [2]unix.PollFd
	frames  atomic.Uint64
	long    atomic.Uint64
	errors  atomic.Uint64
	_       [32]byte // one queue per cache line pair: RX workers do not share
}

var _ l4.Port = (*Port)(nil)

func newPort(name string, kind l4.PortKind, fds []int) (*Port, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("macvtap: eventfd: %w", err)
	}
	p := &Port{name: name, kind: kind, fds: fds, q: make([]rxQueue, len(fds)), efd: efd}
	for i, fd := range fds {
		p.q[i].pollfds = [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
	}
	return p, nil
}

// Name implements l4.Port: the NIC's name for the NIC's port, the TAP's
// for the kernel's.
func (p *Port) Name() string { return p.name }

// Kind implements l4.Port.
func (p *Port) Kind() l4.PortKind { return p.kind }

// RxQueues implements l4.Port: one per queue of the macvtap or TAP.
func (p *Port) RxQueues() int { return len(p.fds) }

// Recv implements l4.Port. It reads up to len(bufs) frames of queue q, one
// read each, until the queue is empty; with nothing to read it polls the
// queue (and the eventfd that Close writes) for at most l4.RecvTimeout.
func (p *Port) Recv(q int, bufs []*l4.Buf) (int, error) {
	if q < 0 || q >= len(p.fds) {
		return 0, fmt.Errorf("macvtap: %s: queue %s of %d", p.name, strconv.Itoa(q), len(p.fds))
	}
	rq := &p.q[q]
	rq.mu.Lock()
	defer rq.mu.Unlock()
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	n, err := p.read(q, bufs)
	if n > 0 || err != nil || len(bufs) == 0 {
		return n, err
	}
	_, err = unix.Poll(rq.pollfds[:], pollTimeout)
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	if err != nil && !errors.Is(err, unix.EINTR) {
		return 0, fmt.Errorf("macvtap: %s queue %d: poll: %w", p.name, q, err)
	}
	return p.read(q, bufs)
}

// read reads frames of queue q until bufs are full or the queue is empty.
// An error is returned only when no frame was read.
func (p *Port) read(q int, bufs []*l4.Buf) (int, error) {
	rq := &p.q[q]
	fd := p.fds[q]
	got := 0
	for got < len(bufs) {
		b := bufs[got]
		n, err := unix.Read(fd, b.Data())
		switch {
		case err == nil && n > 0:
			b.SetLen(n)
			got++
			continue
		case err == nil, errors.Is(err, unix.EAGAIN):
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EFAULT), errors.Is(err, unix.EINVAL), errors.Is(err, unix.EMSGSIZE):
			// A frame longer than the buffer: the kernel drops it.
			rq.long.Add(1)
			continue
		default:
			rq.errors.Add(1)
			if got == 0 {
				return 0, fmt.Errorf("macvtap: %s queue %d: read: %w", p.name, q, err)
			}
		}
		break
	}
	rq.frames.Add(uint64(got))
	return got, nil
}

// Send implements l4.Port: one write per frame, into the first queue. A
// queue that refuses frames (EAGAIN: its socket buffer is full) gets
// sendWait ms to take them; what it does not take is dropped and counted.
func (p *Port) Send(bufs []*l4.Buf) (int, error) {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	fd := p.fds[0]
	sent := 0
	for i := 0; i < len(bufs); i++ {
		f := bufs[i].Bytes()
		if len(f) == 0 {
			p.tx.dropped.Add(1)
			continue
		}
		_, err := unix.Write(fd, f)
		switch {
		case err == nil:
			sent++
		case errors.Is(err, unix.EINTR):
			i--
		case errors.Is(err, unix.EAGAIN):
			p.tx.again.Add(1)
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}, {Fd: int32(p.efd), Events: unix.POLLIN}}
			if n, _ := unix.Poll(pfd, sendWait); n > 0 && pfd[0].Revents&unix.POLLOUT != 0 && !p.closed.Load() {
				i--
				continue
			}
			p.tx.dropped.Add(uint64(len(bufs) - i))
			i = len(bufs)
		default:
			// EIO (the device is down), EINVAL (a runt frame): the frame
			// is lost; count and go on.
			p.tx.errors.Add(1)
		}
	}
	p.tx.frames.Add(uint64(sent))
	return sent, nil
}

// Stats are a port's counters.
type Stats struct {
	RxFrames  []uint64 // frames read, per queue
	RxTooLong uint64   // frames longer than the buffer (dropped by the kernel)
	RxErrors  uint64   // reads that failed otherwise
	TxFrames  uint64   // frames written
	TxDropped uint64   // frames dropped: empty, or the queue stayed full
	TxFull    uint64   // writes refused with EAGAIN
	TxErrors  uint64   // writes that failed otherwise
}

// Stats returns the port's counters.
func (p *Port) Stats() Stats {
	s := Stats{
		RxFrames:  make([]uint64, len(p.q)),
		TxFrames:  p.tx.frames.Load(),
		TxDropped: p.tx.dropped.Load(),
		TxFull:    p.tx.again.Load(),
		TxErrors:  p.tx.errors.Load(),
	}
	for i := range p.q {
		s.RxFrames[i] = p.q[i].frames.Load()
		s.RxTooLong += p.q[i].long.Load()
		s.RxErrors += p.q[i].errors.Load()
	}
	return s
}

// Close implements l4.Port: it wakes blocked Recv and Send calls, waits
// until they are out, and closes the fds. It is idempotent. Closing the
// fds detaches the queues; the links stay (the Claim deletes them).
func (p *Port) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		var one [8]byte
		one[0] = 1 // native endian 1; any non-zero count wakes
		if _, err := unix.Write(p.efd, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
			p.closeErr = fmt.Errorf("macvtap: %s: wake pollers: %w", p.name, err)
		}
		for i := range p.q {
			p.q[i].mu.Lock()
		}
		p.txMu.Lock()
		var errs []error
		for _, fd := range p.fds {
			errs = append(errs, unix.Close(fd))
		}
		errs = append(errs, unix.Close(p.efd))
		p.txMu.Unlock()
		for i := range p.q {
			p.q[i].mu.Unlock()
		}
		if err := errors.Join(errs...); err != nil {
			p.closeErr = errors.Join(p.closeErr, fmt.Errorf("macvtap: %s: close: %w", p.name, err))
		}
	})
	return p.closeErr
}
