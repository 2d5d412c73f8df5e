package afxdp

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// pollTimeout is how long Recv waits for a frame (milliseconds): the
// l4.Port contract allows at most 100 ms.
const pollTimeout = 100

// Recv implements l4.Port. It copies up to len(bufs) frames of queue q
// into the buffers and gives their UMEM frames back to the kernel at once.
// With nothing to read it polls the socket (and the port's eventfd, which
// Close writes) for at most 100 ms.
func (p *Port) Recv(q int, bufs []*l4.Buf) (int, error) {
	if q < 0 || q >= len(p.socks) {
		return 0, queueError(q, len(p.socks))
	}
	s := p.socks[q]
	s.rxMu.Lock()
	defer s.rxMu.Unlock()
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	if n := s.receive(bufs); n > 0 || len(bufs) == 0 {
		return n, nil
	}
	// poll on an XSK also kicks the fill ring where the driver needs it.
	_, err := unix.Poll(s.pollfds[:], pollTimeout)
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	if err != nil && !errors.Is(err, unix.EINTR) {
		return 0, fmt.Errorf("afxdp: %s queue %d: poll: %w", p.name, q, err)
	}
	return s.receive(bufs), nil
}

// receive moves up to len(bufs) frames from the RX ring into bufs and their
// frames back to the fill ring; it returns how many buffers it filled. The
// caller owns the RX side (rxMu).
func (s *xsk) receive(bufs []*l4.Buf) int {
	n := s.rx.avail(uint32(len(bufs)))
	if n == 0 {
		s.refill()
		return 0
	}
	got := 0
	umemLen := uint64(len(s.umem))
	rxEnd := uint64(s.rxFrames) * s.frame
	for i := range n {
		d := &s.rx.descs[(s.rx.local+i)&s.rx.mask]
		addr, l := d.Addr, uint64(d.Len)
		base := addr &^ (s.frame - 1) // copy mode: addr includes the headroom
		if addr >= rxEnd || addr+l > umemLen || addr-base+l > s.frame {
			s.c.rxBadDesc.Add(1)
			continue // not one of our RX frames: never recycle it
		}
		if b := bufs[got]; int(l) <= b.Cap() {
			b.SetLen(copy(b.Data(), s.umem[addr:addr+l]))
			got++
		} else {
			s.c.rxOversize.Add(1)
		}
		s.spare = append(s.spare, base)
	}
	s.rx.release(n)
	s.refill()
	s.c.rxFrames.Add(uint64(got))
	return got
}

// refill gives the spare frames to the fill ring, as many as it takes.
//
// The fill ring has a slot for every RX frame, but the kernel publishes a
// frame on the RX ring a moment before it publishes the fill ring's
// consumer index (xsk_flush), so right after reading the RX ring the fill
// ring can look fuller than it is: what does not fit now waits in spare
// for the next call.
func (s *xsk) refill() {
	if len(s.spare) == 0 {
		return
	}
	k := s.fill.free(uint32(len(s.spare)))
	rest := uint32(len(s.spare)) - k
	for i, a := range s.spare[rest:] {
		s.fill.addrs[(s.fill.local+uint32(i))&s.fill.mask] = a
	}
	s.spare = s.spare[:rest]
	s.fill.submit(k)
	if k > 0 && s.fill.needWakeup() {
		// Zero-copy drivers may stop when the fill ring ran dry: tell them
		// it has frames again.
		s.c.rxWakeups.Add(1)
		_, _, _ = unix.Syscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	}
}
