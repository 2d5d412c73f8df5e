package afpacket

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// pollTimeout is how long Recv waits for a block (milliseconds): the
// l4.Port contract allows at most 100 ms.
const pollTimeout = 100

// ne reads the ring's headers, which the kernel writes in its own byte
// order.
var ne = binary.NativeEndian

// Recv implements l4.Port. It copies up to len(bufs) frames of worker q's
// ring into the buffers, block by block, and gives each block back to the
// kernel as soon as every frame in it is copied. With nothing to read it
// polls the socket (and the port's eventfd, which Close writes) for at
// most 100 ms.
func (p *Port) Recv(q int, bufs []*l4.Buf) (int, error) {
	if q < 0 || q >= len(p.rx) {
		return 0, queueError(q, len(p.rx))
	}
	s := p.rx[q]
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	if n := s.receive(bufs); n > 0 || len(bufs) == 0 {
		return n, nil
	}
	_, err := unix.Poll(s.pollfds[:], pollTimeout)
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	if err != nil && !errors.Is(err, unix.EINTR) {
		return 0, fmt.Errorf("afpacket: %s worker %d: poll: %w", p.name, q, err)
	}
	return s.receive(bufs), nil
}

// status points at block b's block_status word in the mapping; the kernel
// writes it with smp_wmb/smp_rmb around, so we use atomics.
func (s *rxSock) status(b int) *uint32 {
	return (*uint32)(unsafe.Pointer(&s.ring[b*s.blockSize+blkStatus]))
}

// receive copies frames from the ring's blocks that the kernel handed
// over into bufs and returns how many buffers it filled. The caller owns
// the socket's read position (mu).
//
// Every offset read from the ring is checked against its block before it
// is used: a frame header that points outside the block ends the block
// (RxBadFrame); nothing the kernel writes can make this panic or read
// another block.
func (s *rxSock) receive(bufs []*l4.Buf) int {
	var got int
	var blocks, oversize, truncated, bad, csum, vlan uint64
	for got < len(bufs) {
		if !s.inBlock {
			if atomic.LoadUint32(s.status(s.blk))&unix.TP_STATUS_USER == 0 {
				break // the kernel still fills it
			}
			b := s.block()
			s.left = ne.Uint32(b[blkNumPkts:])
			s.off = ne.Uint32(b[blkFirstPkt:])
			s.inBlock = true
		}
		b := s.block()
		for s.left > 0 && got < len(bufs) {
			o := uint64(s.off)
			if o < blkHdrLen || o+pktHdrLen > uint64(len(b)) {
				bad++
				s.left = 0
				break
			}
			h := b[o : o+pktHdrLen]
			snap, wire := ne.Uint32(h[pktSnaplen:]), ne.Uint32(h[pktLen:])
			st := ne.Uint32(h[pktStatus:])
			start := o + uint64(ne.Uint16(h[pktMac:]))
			end := start + uint64(snap)
			s.left--
			s.off += ne.Uint32(h[pktNextOffset:])
			if start < o+pktHdrLen || end > uint64(len(b)) {
				bad++
				s.left = 0
				break
			}
			if snap < wire || snap < 14 {
				truncated++ // cut short by the ring, or a runt
				continue
			}
			frame, buf := b[start:end], bufs[got]
			if st&unix.TP_STATUS_VLAN_VALID != 0 {
				// The kernel took the tag out into the skb before the
				// taps: put it back where it was on the wire.
				if len(frame)+4 > buf.Cap() {
					oversize++
					continue
				}
				tpid := uint16(0x8100)
				if st&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
					tpid = ne.Uint16(h[pktVlanTPID:])
				}
				d := buf.Data()
				copy(d[:12], frame[:12])
				binary.BigEndian.PutUint16(d[12:], tpid)
				binary.BigEndian.PutUint16(d[14:], uint16(ne.Uint32(h[pktVlanTCI:])))
				buf.SetLen(16 + copy(d[16:], frame[12:]))
				vlan++
			} else {
				if len(frame) > buf.Cap() {
					oversize++
					continue
				}
				buf.SetLen(copy(buf.Data(), frame))
			}
			if st&unix.TP_STATUS_CSUMNOTREADY != 0 {
				csum++
			}
			got++
		}
		if s.left == 0 {
			atomic.StoreUint32(s.status(s.blk), unix.TP_STATUS_KERNEL)
			blocks++
			s.blk++
			if s.blk == s.nblocks {
				s.blk = 0
			}
			s.inBlock = false
		}
	}
	if got > 0 {
		s.c.frames.Add(uint64(got))
	}
	if blocks > 0 {
		s.c.blocks.Add(blocks)
	}
	if oversize+truncated+bad+csum+vlan > 0 {
		s.c.oversize.Add(oversize)
		s.c.truncated.Add(truncated)
		s.c.bad.Add(bad)
		s.c.csumPartial.Add(csum)
		s.c.vlan.Add(vlan)
	}
	return got
}

// block returns the block being read.
func (s *rxSock) block() []byte {
	o := s.blk * s.blockSize
	return s.ring[o : o+s.blockSize : o+s.blockSize]
}
