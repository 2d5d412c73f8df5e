package ring

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by an Endpoint's methods after Close, and once
// usnetd closed its end of the channel.
var ErrClosed = errors.New("shm: channel closed")

// Endpoint is the endpoint's side of a channel: it reads ring 0 and writes
// ring 1. Recv (with Wait) is for one goroutine, Send for one goroutine
// (another one may be the same), Close for any.
type Endpoint struct {
	mem  *Mem
	wake int

	rmu sync.Mutex // the Recv side
	c   *Consumer
	wmu sync.Mutex // the Send side
	p   *Producer

	cmu    sync.RWMutex // Close against Recv and Send in the mapping
	closed bool
}

// OpenEndpoint maps the memfd and takes the wake-up socket (both received
// from usnetd). It takes both descriptors: they are closed by Close, or at
// once when it fails.
func OpenEndpoint(memfd, wakefd int) (*Endpoint, error) {
	m, err := Map(memfd)
	unix.Close(memfd)
	if err != nil {
		unix.Close(wakefd)
		return nil, err
	}
	if err := unix.SetNonblock(wakefd, true); err != nil {
		m.Unmap()
		unix.Close(wakefd)
		return nil, fmt.Errorf("shm: %w", err)
	}
	return &Endpoint{mem: m, wake: wakefd, c: m.Consumer(ToEndpoint), p: m.Producer(FromEndpoint)}, nil
}

// MTU is the MTU usnetd wrote into the header.
func (e *Endpoint) MTU() int { return e.mem.MTU() }

// FrameCap is the largest frame the channel carries.
func (e *Endpoint) FrameCap() int { return e.mem.Geometry().FrameCap }

// Recv copies up to len(bufs) frames into bufs and stores their lengths in
// lens; it returns how many it filled and never waits (see Wait). A frame
// longer than its buffer is dropped.
func (e *Endpoint) Recv(bufs [][]byte, lens []int) (int, error) {
	e.cmu.RLock()
	defer e.cmu.RUnlock()
	if e.closed {
		return 0, ErrClosed
	}
	e.rmu.Lock()
	defer e.rmu.Unlock()
	n := min(e.c.Avail(), len(bufs), len(lens))
	good := 0
	for i := range n {
		if l := e.c.Read(i, bufs[good]); l > 0 {
			lens[good] = l
			good++
		}
	}
	e.c.Release(n)
	return good, nil
}

// Wait returns when frames are queued for Recv, usnetd closed the channel
// (ErrClosed) or d passed (d < 0: no limit). Before it sleeps it polls the
// ring for up to spin (a busy receiver thus makes no system call), then
// sets need-wakeup.
func (e *Endpoint) Wait(spin, d time.Duration) error {
	_, err := e.WaitStop(spin, d, -1)
	return err
}

// WaitStop is Wait that also returns (stopped) when the descriptor stop
// (an eventfd, say; -1: none) becomes readable. It does not read stop.
func (e *Endpoint) WaitStop(spin, d time.Duration, stop int) (stopped bool, err error) {
	if e.avail() {
		return false, nil
	}
	if spin > 0 {
		end := time.Now().Add(spin)
		for i := 0; ; i++ {
			if e.avail() {
				return false, nil
			}
			if i&63 == 63 && time.Now().After(end) {
				break
			}
		}
	}
	e.cmu.RLock()
	if e.closed {
		e.cmu.RUnlock()
		return false, ErrClosed
	}
	e.rmu.Lock()
	ready := e.c.ArmWakeup()
	e.rmu.Unlock()
	e.cmu.RUnlock()
	if ready {
		return false, nil
	}
	ms := -1
	if d >= 0 {
		ms = int((d + time.Millisecond - 1) / time.Millisecond)
	}
	pfd := [2]unix.PollFd{{Fd: int32(e.wake), Events: unix.POLLIN}, {Fd: int32(stop), Events: unix.POLLIN}}
	n := 1
	if stop >= 0 {
		n = 2
	}
	for {
		_, err := unix.Poll(pfd[:n], ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("shm: poll: %w", err)
		}
		break
	}
	if n == 2 && pfd[1].Revents != 0 {
		return true, nil
	}
	if pfd[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 || Drain(e.wake) {
		return false, ErrClosed
	}
	return false, nil
}

func (e *Endpoint) avail() bool {
	e.cmu.RLock()
	defer e.cmu.RUnlock()
	if e.closed {
		return true // Recv says so
	}
	e.rmu.Lock()
	defer e.rmu.Unlock()
	return e.c.Avail() > 0
}

// Send copies frames into ring 1 and wakes usnetd if it asked; it returns
// how many the ring took (the rest did not fit; it never waits).
func (e *Endpoint) Send(frames [][]byte) (int, error) {
	e.cmu.RLock()
	defer e.cmu.RUnlock()
	if e.closed {
		return 0, ErrClosed
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	free := e.p.Free()
	k := 0
	for _, f := range frames {
		if k == free {
			break
		}
		if len(f) == 0 || len(f) > e.p.FrameCap() {
			return k, fmt.Errorf("shm: frame of %d bytes, the channel takes 1..%d", len(f), e.p.FrameCap())
		}
		copy(e.p.Slot(k), f)
		e.p.SetLen(k, len(f))
		k++
	}
	if e.p.Publish(k) {
		if err := Kick(e.wake); err != nil {
			return k, ErrClosed
		}
	}
	return k, nil
}

// SendWith writes up to k frames into ring 1 without copying them into a
// frame first: fill(i, slot) writes the i-th frame into slot and returns
// its length (1..len(slot); 0 stops the batch there). It returns how many
// went (the ring may have had room for fewer) and wakes usnetd if it asked.
func (e *Endpoint) SendWith(k int, fill func(i int, slot []byte) int) (int, error) {
	e.cmu.RLock()
	defer e.cmu.RUnlock()
	if e.closed {
		return 0, ErrClosed
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	k = min(k, e.p.Free())
	done := 0
	for ; done < k; done++ {
		n := fill(done, e.p.Slot(done))
		if n <= 0 || n > e.p.FrameCap() {
			break
		}
		e.p.SetLen(done, n)
	}
	if e.p.Publish(done) {
		if err := Kick(e.wake); err != nil {
			return done, ErrClosed
		}
	}
	return done, nil
}

// WakeFD is the endpoint's end of the wake-up socket pair (for
// SO_PEERCRED: usnetd made the pair). It stays the Endpoint's.
func (e *Endpoint) WakeFD() int { return e.wake }

// Close marks the channel detached, unmaps it and closes the wake-up
// socket, which tells usnetd. It is idempotent.
func (e *Endpoint) Close() error {
	e.cmu.Lock()
	defer e.cmu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	e.mem.SetClosed()
	err := e.mem.Unmap()
	if cerr := unix.Close(e.wake); err == nil {
		err = cerr
	}
	return err
}

// Files wraps two received descriptors for OpenEndpoint callers that hold
// *os.File values.
func Files(mem, wake *os.File) (int, int, error) {
	m, err := unix.Dup(int(mem.Fd()))
	if err != nil {
		return -1, -1, err
	}
	w, err := unix.Dup(int(wake.Fd()))
	if err != nil {
		unix.Close(m)
		return -1, -1, err
	}
	unix.CloseOnExec(m)
	unix.CloseOnExec(w)
	return m, w, nil
}
