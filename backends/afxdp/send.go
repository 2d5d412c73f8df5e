package afxdp

import (
	"errors"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// sendRounds bounds how often one Send refills the TX ring after kicking
// it: in copy mode a kick transmits synchronously and frees ring slots, so
// a second round takes the frames that did not fit the first time.
const sendRounds = 4

// kickTries bounds the sendto calls of one kick (EAGAIN: the kernel's
// per-call budget is spent, or the device is busy).
const kickTries = 4

// Send implements l4.Port. It copies each frame into a free TX frame of the
// transmitting socket's UMEM, queues it on the TX ring and kicks the
// kernel when the ring asks for it (in copy mode it always does, and the
// sendto transmits synchronously). It returns how many frames it queued:
// fewer than len(bufs) when the ring or the TX frames ran out (counted as
// TxFull) or a frame was empty or longer than the port carries
// (TxDropped). With XDP_USE_SG a frame longer than a chunk goes out as a
// run of chunks, each but the last flagged XDP_PKT_CONTD.
// It never waits for the device.
func (p *Port) Send(bufs []*l4.Buf) (int, error) {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	s := p.txs
	queued, i := 0, 0
	for round := 0; i < len(bufs) && round < sendRounds; round++ {
		s.reclaim()
		room := s.tx.free(uint32(len(s.txFree))) // in chunks: a frame may take several
		if room == 0 {
			if round > 0 || s.tx.pending() == 0 {
				break
			}
			s.kick() // frames from before still wait in the ring
			continue
		}
		k, frames := uint32(0), 0
		for ; i < len(bufs); i++ {
			b := bufs[i]
			l := b.Len()
			if l == 0 || l > s.maxTx {
				s.c.txDropped.Add(1)
				continue
			}
			need := uint32((uint64(l) + s.frame - 1) / s.frame)
			if need > room-k {
				break
			}
			f := b.Bytes()
			for off := 0; off < l; {
				c := min(int(s.frame), l-off)
				addr := s.txFree[len(s.txFree)-1]
				s.txFree = s.txFree[:len(s.txFree)-1]
				copy(s.umem[addr:addr+uint64(c)], f[off:off+c])
				off += c
				var opts uint32
				if off < l {
					opts = unix.XDP_PKT_CONTD // more chunks of this frame follow
				}
				s.tx.descs[(s.tx.local+k)&s.tx.mask] = unix.XDPDesc{Addr: addr, Len: uint32(c), Options: opts}
				k++
			}
			frames++
		}
		s.tx.submit(k)
		queued += frames
		s.kick()
	}
	if full := len(bufs) - i; full > 0 {
		s.c.txFull.Add(uint64(full))
	}
	s.c.txFrames.Add(uint64(queued))
	return queued, nil
}

// reclaim moves completed TX frames back to txFree.
func (s *xsk) reclaim() {
	n := s.comp.avail(s.comp.size)
	end := uint64(s.rxFrames+s.txFrames) * s.frame
	start := uint64(s.rxFrames) * s.frame
	for i := range n {
		a := s.comp.addrs[(s.comp.local+i)&s.comp.mask] &^ (s.frame - 1)
		if a >= start && a < end && len(s.txFree) < cap(s.txFree) {
			s.txFree = append(s.txFree, a)
		}
	}
	s.comp.release(n)
}

// kick asks the kernel to transmit what the TX ring holds, if the ring
// says it needs to be asked (XDP_USE_NEED_WAKEUP).
func (s *xsk) kick() {
	for range kickTries {
		if !s.tx.needWakeup() || s.tx.pending() == 0 {
			return
		}
		s.c.txWakeups.Add(1)
		_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		switch {
		case e == 0:
			return
		case errors.Is(e, unix.EAGAIN), errors.Is(e, unix.EBUSY), errors.Is(e, unix.ENOBUFS):
			// Budget spent, device busy, a frame dropped by the qdisc, or
			// no skb: free what completed and try again.
			s.reclaim()
		default:
			// ENETDOWN, ENXIO (unbound): the frames stay in the ring
			// until the device comes back; count and go on.
			s.c.txErrors.Add(1)
			return
		}
	}
}
