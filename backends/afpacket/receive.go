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
// l4.Port contract's receive timeout.
const pollTimeout = l4.RecvTimeoutMillis

// ne reads the ring's headers, which the kernel writes in its own byte
// order.
var ne = binary.NativeEndian

// Recv implements l4.Port. It copies up to len(bufs) frames of worker q's
// ring into the buffers, block by block, and gives each block back to the
// kernel as soon as every frame in it is copied. With nothing to read it
// polls the socket (and the port's eventfd, which Close writes) for at
// most l4.RecvTimeout.
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
//
// With the virtio-net header (s.vnet), a GSO super-frame becomes one
// buffer per segment (gso.go); when bufs run out in the middle of one,
// the read position stays on it and s.seg says where to go on.
func (s *rxSock) receive(bufs []*l4.Buf) int {
	var got int
	var c rxBatch
	for got < len(bufs) {
		if !s.inBlock {
			if atomic.LoadUint32(s.status(s.blk))&unix.TP_STATUS_USER == 0 {
				break // the kernel still fills it
			}
			b := s.block()
			s.left = ne.Uint32(b[blkNumPkts:])
			s.off = ne.Uint32(b[blkFirstPkt:])
			s.inBlock = true
			s.seg = 0
		}
		b := s.block()
		for s.left > 0 && got < len(bufs) {
			o := uint64(s.off)
			if o < blkHdrLen || o+pktHdrLen > uint64(len(b)) {
				c.bad++
				s.left = 0
				break
			}
			h := b[o : o+pktHdrLen]
			snap, wire := ne.Uint32(h[pktSnaplen:]), ne.Uint32(h[pktLen:])
			start := o + uint64(ne.Uint16(h[pktMac:]))
			end := start + uint64(snap)
			hdrEnd := o + pktHdrLen
			if s.vnet {
				hdrEnd += vnetHdrLen
			}
			if start < hdrEnd || end > uint64(len(b)) {
				c.bad++
				s.left = 0
				break
			}
			var vh []byte
			if s.vnet {
				vh = b[start-vnetHdrLen : start]
			}
			n, done := s.frame(h, vh, b[start:end], snap < wire, bufs[got:], &c)
			got += n
			if !done {
				break // bufs are full in the middle of a super-frame
			}
			s.seg = 0
			s.left--
			s.off += ne.Uint32(h[pktNextOffset:])
		}
		if s.left == 0 {
			atomic.StoreUint32(s.status(s.blk), unix.TP_STATUS_KERNEL)
			c.blocks++
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
	if c != (rxBatch{}) {
		s.c.blocks.Add(c.blocks)
		s.c.oversize.Add(c.oversize)
		s.c.truncated.Add(c.truncated)
		s.c.bad.Add(c.bad)
		s.c.csumPartial.Add(c.csum)
		s.c.vlan.Add(c.vlan)
		s.c.gsoFrames.Add(c.gso)
		s.c.gsoSegments.Add(c.segs)
		s.c.gsoBad.Add(c.gsoBad)
	}
	return got
}

// rxBatch counts one receive call's work, added to the socket's counters
// once at its end.
type rxBatch struct {
	blocks, oversize, truncated, bad, csum, vlan, gso, segs, gsoBad uint64
}

// frame hands one frame of the ring (h its tpacket3_hdr, vh its
// virtio-net header or nil, data the frame as the kernel wrote it) to
// bufs: as one buffer, or as one per segment of a super-frame, from
// segment s.seg on. It returns how many buffers it filled and whether the
// frame is done (false: bufs ran out; the caller keeps its position).
func (s *rxSock) frame(h, vh, data []byte, cut bool, bufs []*l4.Buf, c *rxBatch) (int, bool) {
	if cut || len(data) < 14 {
		c.truncated++ // cut short by the ring, or a runt
		return 0, true
	}
	st := ne.Uint32(h[pktStatus:])
	tagged := st&unix.TP_STATUS_VLAN_VALID != 0
	var gsoType byte
	if vh != nil {
		gsoType = vh[vnetGSOType]
	}
	if gsoType != gsoNone {
		return s.segments(h, vh, data, tagged, bufs, c)
	}
	buf := bufs[0]
	if tagged {
		// The kernel took the tag out into the skb before the taps: put
		// it back where it was on the wire.
		if len(data)+4 > buf.Cap() {
			c.oversize++
			return 0, true
		}
		d := buf.Data()
		copy(d[:12], data[:12])
		putTag(d[12:16], h, st)
		buf.SetLen(16 + copy(d[16:], data[12:]))
		c.vlan++
	} else {
		if len(data) > buf.Cap() {
			c.oversize++
			return 0, true
		}
		buf.SetLen(copy(buf.Data(), data))
	}
	if vh != nil && vh[vnetFlags]&vnetNeedsCsum != 0 {
		// The sender left the L4 checksum to offload (a local veth peer):
		// finish it, as the NIC it never met would have. The kernel
		// counts csum_start from the frame without the tag it took out.
		cs := int(ne.Uint16(vh[vnetCsumStart:]))
		if tagged {
			cs += 4
		}
		if completeCsum(buf.Bytes(), cs, int(ne.Uint16(vh[vnetCsumOffset:]))) {
			c.csum++
		}
	} else if vh == nil && st&unix.TP_STATUS_CSUMNOTREADY != 0 {
		c.csum++ // without the header there is nothing to finish it with
	}
	return 1, true
}

// putTag writes the VLAN tag the kernel took out of a frame (4 bytes).
func putTag(d, h []byte, st uint32) {
	tpid := uint16(0x8100)
	if st&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
		tpid = ne.Uint16(h[pktVlanTPID:])
	}
	be.PutUint16(d, tpid)
	be.PutUint16(d[2:], uint16(ne.Uint32(h[pktVlanTCI:])))
}

// segments cuts a GSO super-frame into bufs, from segment s.seg on.
func (s *rxSock) segments(h, vh, data []byte, tagged bool, bufs []*l4.Buf, c *rxBatch) (int, bool) {
	g := &s.gso
	if s.seg == 0 {
		head := data[:min(len(data), maxSegHeaders)]
		total := len(data)
		if tagged {
			var t [maxSegHeaders + 4]byte
			copy(t[:12], data[:12])
			putTag(t[12:16], h, ne.Uint32(h[pktStatus:]))
			k := copy(t[16:], data[12:min(len(data), maxSegHeaders)])
			head, total = t[:16+k], total+4
		}
		if !g.parse(head, total, int(vh[vnetGSOType]), int(ne.Uint16(vh[vnetGSOSize:]))) {
			c.gsoBad++
			return 0, true
		}
		c.gso++
	}
	payload := data[g.hlen:]
	if tagged {
		payload = data[g.hlen-4:]
	}
	n := 0
	for k := s.seg; k < g.segments(); k++ {
		if n == len(bufs) {
			s.seg = k
			c.segs += uint64(n)
			return n, false
		}
		l := g.segment(bufs[n].Data(), payload, k)
		if l == 0 {
			c.oversize++ // a segment longer than a buffer: the MTU is above what usnetd carries
			continue
		}
		bufs[n].SetLen(l)
		n++
	}
	c.segs += uint64(n)
	return n, true
}

// block returns the block being read.
func (s *rxSock) block() []byte {
	o := s.blk * s.blockSize
	return s.ring[o : o+s.blockSize : o+s.blockSize]
}
