package afxdp

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// pollTimeout is how long Recv waits for a frame (milliseconds): the
// l4.Port contract's receive timeout.
const pollTimeout = l4.RecvTimeoutMillis

// Recv implements l4.Port. It copies up to len(bufs) frames of queue q
// into the buffers and gives their UMEM frames back to the kernel at once.
// With nothing to read it polls the socket (and the port's eventfd, which
// Close writes) for at most l4.RecvTimeout.
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
// chunks back to the fill ring; it returns how many buffers it filled. The
// caller owns the RX side (rxMu).
//
// With XDP_USE_SG a frame is a run of descriptors, each but the last
// flagged XDP_PKT_CONTD; their chunks are joined into one buffer. The
// kernel publishes a frame's descriptors together, so a run that is cut
// off by the end of what the ring shows is left there for the next call.
func (s *xsk) receive(bufs []*l4.Buf) int {
	n := s.rx.avail(s.rx.size)
	if n == 0 {
		s.refill()
		return 0
	}
	got := 0
	used := uint32(0)
	umemLen := uint64(len(s.umem))
	rxEnd := uint64(s.rxFrames) * s.frame
	var oversize, bad, partial uint64
	for used < n && got < len(bufs) {
		last := used
		if s.sg {
			for last < n && s.rx.descs[(s.rx.local+last)&s.rx.mask].Options&unix.XDP_PKT_CONTD != 0 {
				last++
			}
			if last == n {
				if m := s.rx.reload(); m > n {
					n = m
					continue // more was published meanwhile: scan again
				}
				if n < s.rx.size && last-used <= MaxChunks+2 {
					break // the rest of the frame is not published yet
				}
				last = n - 1 // a run longer than any frame: take it as a bad frame
			}
		}
		b := bufs[got]
		off, ok := 0, true
		for i := used; i <= last; i++ {
			d := &s.rx.descs[(s.rx.local+i)&s.rx.mask]
			addr, l := d.Addr, uint64(d.Len)
			base := addr &^ (s.frame - 1) // copy mode: addr includes the headroom
			if addr >= rxEnd || addr+l > umemLen || addr-base+l > s.frame {
				bad++
				if ok && last > used {
					partial++
				}
				ok = false
				continue // not one of our RX frames: never recycle it
			}
			if ok {
				if off+int(l) <= b.Cap() {
					off += copy(b.Data()[off:], s.umem[addr:addr+l])
				} else {
					oversize++
					ok = false
				}
			}
			s.spare = append(s.spare, base)
		}
		used = last + 1
		if ok {
			b.SetLen(off)
			got++
		}
	}
	s.rx.release(used)
	s.refill()
	s.c.rxFrames.Add(uint64(got))
	if oversize+bad+partial > 0 {
		s.c.rxOversize.Add(oversize)
		s.c.rxBadDesc.Add(bad)
		s.c.rxPartial.Add(partial)
	}
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
