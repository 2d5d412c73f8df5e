package afpacket

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/netorder"
)

// rxSock is one worker's AF_PACKET socket with its TPACKET_V3 RX ring.
//
// The ring is blocks of BlockSize bytes; block b starts at b*BlockSize.
// Each block starts with struct tpacket_block_desc; its header
// (tpacket_hdr_v1) sits at offset 8: block_status at 8, num_pkts at 12,
// offset_to_first_pkt at 16. The kernel fills the blocks in order and
// hands one over by setting TP_STATUS_USER in block_status; the reader
// gives it back by writing TP_STATUS_KERNEL. Frames in a block are struct
// tpacket3_hdr, each followed (at tp_mac) by the frame, linked by
// tp_next_offset.
type rxSock struct {
	queue     int
	fd        int
	ring      []byte // the mapping: nblocks blocks of blockSize bytes
	blockSize int
	nblocks   int

	// Read position: owned by the Recv caller of this queue, under mu.
	mu      sync.Mutex
	blk     int    // the block being read, or to read next
	inBlock bool   // blk is ours and partly read
	left    uint32 // frames of blk not yet read
	off     uint32 // offset in blk of the next frame's header
	pollfds [2]unix.PollFd
	vnet    bool     // frames come with a virtio-net header (PACKET_VNET_HDR)
	seg     int      // next segment of the super-frame at off (0: none begun)
	gso     gsoFrame // that super-frame's headers

	c rxCounters
	k kernelStats
}

// rxCounters are written by the Recv caller and read by Stats.
type rxCounters struct {
	frames, blocks, oversize, truncated, bad, csumPartial, vlan atomic.Uint64
	gsoFrames, gsoSegments, gsoBad                              atomic.Uint64
}

// kernelStats sum the kernel's PACKET_STATISTICS, which it resets on each
// read.
type kernelStats struct {
	packets, drops, freeze atomic.Uint64
}

// Offsets in a block (tpacket_block_desc, tpacket_hdr_v1) and in a frame
// header (tpacket3_hdr).
const (
	blkStatus   = 8
	blkNumPkts  = 12
	blkFirstPkt = 16
	blkHdrLen   = 48 // sizeof(struct tpacket_block_desc)

	pktNextOffset = 0
	pktSnaplen    = 12
	pktLen        = 16
	pktStatus     = 20
	pktMac        = 24
	pktVlanTCI    = 32
	pktVlanTPID   = 36
	pktHdrLen     = 48 // sizeof(struct tpacket3_hdr)
)

// rxFrameSize is tp_frame_size of the RX ring. TPACKET_V3 frames have
// variable size; the kernel only checks that the numbers add up.
const rxFrameSize = 2048

// dropAll is a classic BPF filter that accepts nothing ("ret #0"). A new
// socket has it until it is in the fanout group, so that no frame reaches
// two workers while they join.
var dropAll = []unix.SockFilter{{Code: 0x06 /* BPF_RET|BPF_K */, K: 0}}

// htons converts a 16-bit value to network byte order (for sll_protocol).

// newRxSock creates worker q's socket on ifindex, in this order (docs/platform.md):
// socket, drop-all filter, PACKET_VERSION, PACKET_IGNORE_OUTGOING,
// PACKET_RX_RING, mmap, bind. The socket is created with protocol 0, so it
// receives nothing (from any interface) until bind names ETH_P_ALL and the
// interface. The caller joins the fanout group and then calls open.
func newRxSock(ifindex, q int, o *Options) (s *rxSock, err error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, fmt.Errorf("socket(AF_PACKET): %w: %w", ErrNotSupported, err)
		}
		return nil, fmt.Errorf("socket(AF_PACKET): %w", err)
	}
	s = &rxSock{queue: q, fd: fd, blockSize: o.BlockSize, nblocks: o.Blocks}
	defer func() {
		if err != nil {
			s.close()
			s = nil
		}
	}()
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(dropAll)), Filter: &dropAll[0]}); err != nil {
		return s, fmt.Errorf("worker %d: SO_ATTACH_FILTER: %w", q, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return s, fmt.Errorf("worker %d: PACKET_VERSION TPACKET_V3: %w: %w", q, ErrNotSupported, err)
	}
	// Effective only while the socket is outside a fanout group; the
	// group's own flag (joinFanout) does the same for the group.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return s, fmt.Errorf("worker %d: PACKET_IGNORE_OUTGOING: %w: %w", q, ErrNotSupported, err)
	}
	// Before the ring: a virtio-net header in front of each frame says
	// which are GRO/LRO super-frames and which lack their checksum.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return s, fmt.Errorf("worker %d: PACKET_VNET_HDR: %w: %w", q, ErrNotSupported, err)
	}
	s.vnet = true
	req := unix.TpacketReq3{
		Block_size:     uint32(o.BlockSize),
		Block_nr:       uint32(o.Blocks),
		Frame_size:     rxFrameSize,
		Frame_nr:       uint32(o.BlockSize / rxFrameSize * o.Blocks),
		Retire_blk_tov: uint32(o.BlockTimeout.Milliseconds()),
	}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return s, fmt.Errorf("worker %d: PACKET_RX_RING %+v: %w", q, req, err)
	}
	size := o.BlockSize * o.Blocks
	s.ring, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return s, fmt.Errorf("worker %d: mmap RX ring of %d bytes: %w", q, size, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: netorder.Htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		return s, fmt.Errorf("worker %d: bind to ifindex %d: %w", q, ifindex, err)
	}
	return s, nil
}

// Fanout: hash by flow (the kernel's symmetric flow hash: a flow, both
// ways, stays on one worker); the group ignores outgoing frames (usnetd's
// own and the kernel's: PACKET_IGNORE_OUTGOING does not reach into a
// group); the first socket asks for a group id no one uses.
const fanoutFlags = unix.PACKET_FANOUT_HASH | unix.PACKET_FANOUT_FLAG_IGNORE_OUTGOING

// joinFanout puts the sockets into one new PACKET_FANOUT group and returns
// its id.
func joinFanout(socks []*rxSock) (uint16, error) {
	first := socks[0].fd
	if err := unix.SetsockoptInt(first, unix.SOL_PACKET, unix.PACKET_FANOUT,
		(fanoutFlags|unix.PACKET_FANOUT_FLAG_UNIQUEID)<<16); err != nil {
		return 0, fmt.Errorf("PACKET_FANOUT (new group): %w: %w", ErrNotSupported, err)
	}
	v, err := unix.GetsockoptInt(first, unix.SOL_PACKET, unix.PACKET_FANOUT)
	if err != nil {
		return 0, fmt.Errorf("PACKET_FANOUT: reading the group id: %w", err)
	}
	id := uint16(v)
	for _, s := range socks[1:] {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_FANOUT, int(id)|fanoutFlags<<16); err != nil {
			return 0, fmt.Errorf("worker %d: PACKET_FANOUT (group %d): %w", s.queue, id, err)
		}
	}
	return id, nil
}

// open replaces the drop-all filter with the eBPF filter (filterFD, which
// keeps the kernel's own frames out) or, with filterFD < 0, removes it: the
// socket gets frames from now on.
func (s *rxSock) open(filterFD int) error {
	if filterFD >= 0 {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ATTACH_BPF, filterFD); err != nil {
			return fmt.Errorf("worker %d: SO_ATTACH_BPF: %w", s.queue, err)
		}
		return nil
	}
	if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0); err != nil {
		return fmt.Errorf("worker %d: SO_DETACH_FILTER: %w", s.queue, err)
	}
	return nil
}

// readKernelStats adds the kernel's counters since the last read. The
// caller keeps the socket open (Port.lifeMu).
func (s *rxSock) readKernelStats() {
	if s.fd < 0 {
		return
	}
	st, err := unix.GetsockoptTpacketStatsV3(s.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return
	}
	s.k.packets.Add(uint64(st.Packets))
	s.k.drops.Add(uint64(st.Drops))
	s.k.freeze.Add(uint64(st.Freeze_q_cnt))
}

// close unmaps the ring and closes the socket (which leaves the fanout
// group). Safe on a partly set up socket.
func (s *rxSock) close() error {
	var errs []error
	if s.ring != nil {
		errs = append(errs, unix.Munmap(s.ring))
		s.ring = nil
	}
	if s.fd >= 0 {
		errs = append(errs, unix.Close(s.fd))
		s.fd = -1
	}
	return errors.Join(errs...)
}
