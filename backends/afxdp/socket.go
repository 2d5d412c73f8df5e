package afxdp

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// xsk is one AF_XDP socket bound to one queue, with its own UMEM.
//
// UMEM layout: frames [0, rxFrames) (Options.NumFrames) circulate between
// the fill ring, the kernel and the RX ring and belong to the queue's RX
// worker; frames [rxFrames, rxFrames+txFrames) (Options.RingSize of them,
// only in the socket that transmits) circulate between txFree, the TX ring
// and the completion ring and belong to the port's TX goroutine. The two sets never mix, so RX and TX
// share no state but the fd.
type xsk struct {
	queue    int
	fd       int
	zeroCopy bool
	umem     []byte
	frame    uint64 // frame size, a power of two
	sg       bool   // bound with XDP_USE_SG: frames may span chunks
	maxTx    int    // longest frame Send takes
	rxFrames uint32
	txFrames uint32

	// RX side: owned by the queue's Recv caller, under rxMu.
	rxMu    sync.Mutex
	fill    umemRing
	rx      descRing
	spare   []uint64       // RX frames waiting for room in the fill ring (cap rxFrames)
	pollfds [2]unix.PollFd // the socket and the port's eventfd

	// TX side: owned by the port's Send caller, under Port.txMu. Only the
	// transmitting socket has a TX ring.
	tx     descRing
	comp   umemRing
	txFree []uint64

	c counters
}

// counters are written by the owning goroutine and read by Stats.
type counters struct {
	rxFrames, rxOversize, rxBadDesc, rxWakeups atomic.Uint64
	rxPartial                                  atomic.Uint64
	txFrames, txDropped, txFull, txWakeups     atomic.Uint64
	txErrors                                   atomic.Uint64
}

// bindRetry bounds how long bind keeps retrying EBUSY: the previous owner
// of the queue is released asynchronously after its close (docs/platform.md).
const bindRetry = 3 * time.Second

// bindBusy counts binds that met EBUSY and were retried (for tests).
var bindBusy atomic.Uint64

// newXSK creates, registers, maps, pre-fills and binds a socket on queue
// q of ifindex. The caller's thread must be in the interface's network
// namespace. tx gives the socket a TX ring and TX frames. On an error
// everything done so far is undone.
func newXSK(ifindex, q int, tx bool, o *Options) (_ *xsk, err error) {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, fmt.Errorf("afxdp: socket(AF_XDP): %w: %w", ErrNotSupported, err)
		}
		return nil, fmt.Errorf("afxdp: socket(AF_XDP): %w", err)
	}
	s := &xsk{queue: q, fd: fd, frame: uint64(o.FrameSize), sg: o.MaxFrame > o.FrameSize-Headroom, maxTx: o.FrameSize}
	if s.sg {
		s.maxTx = MaxChunks * o.FrameSize
	}
	// The steps; the first that fails undoes them all.
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	s.rxFrames = uint32(o.NumFrames)
	if tx {
		// As many TX frames as the TX ring has slots: more could only wait.
		s.txFrames = uint32(o.RingSize)
	}
	if err := s.registerUMEM(o); err != nil {
		return nil, err
	}
	fillSize, compSize, err := s.sizeRings(o, tx)
	if err != nil {
		return nil, err
	}
	if err := s.mapRings(o, tx, fillSize, compSize); err != nil {
		return nil, err
	}
	if err := s.prefill(); err != nil {
		return nil, err
	}
	if err := s.bind(ifindex, o); err != nil {
		return nil, err
	}
	if tx {
		s.tuneTX(o)
	}
	return s, nil
}

// registerUMEM maps the UMEM, anonymous memory outside the Go heap, and
// registers it whole with the socket.
func (s *xsk) registerUMEM(o *Options) error {
	frames := int(s.rxFrames + s.txFrames)
	var err error
	s.umem, err = unix.Mmap(-1, 0, frames*o.FrameSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("afxdp: queue %d: mmap UMEM of %d bytes: %w", s.queue, frames*o.FrameSize, err)
	}
	reg := unix.XDPUmemReg{Addr: umemAddr(s.umem), Len: uint64(len(s.umem)), Size: uint32(o.FrameSize)}
	if err := setsockoptRaw(s.fd, unix.SOL_XDP, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		return fmt.Errorf("afxdp: queue %d: XDP_UMEM_REG (%d frames of %d bytes; RLIMIT_MEMLOCK without CAP_IPC_LOCK?): %w",
			s.queue, frames, o.FrameSize, err)
	}
	return nil
}

// sizeRings sets the sizes of the rings and returns those of the fill and
// completion rings. The fill ring holds every RX frame and the completion
// ring every TX frame, so that neither can refuse a frame we own.
func (s *xsk) sizeRings(o *Options, tx bool) (fillSize, compSize uint32, err error) {
	fillSize = max(uint32(o.RingSize), pow2(s.rxFrames))
	compSize = max(uint32(o.RingSize), pow2(s.txFrames))
	sizes := []struct {
		opt  int
		n    uint32
		name string
	}{
		{unix.XDP_UMEM_FILL_RING, fillSize, "fill"},
		{unix.XDP_UMEM_COMPLETION_RING, compSize, "completion"},
		{unix.XDP_RX_RING, uint32(o.RingSize), "RX"},
	}
	if tx {
		sizes = append(sizes, struct {
			opt  int
			n    uint32
			name string
		}{unix.XDP_TX_RING, uint32(o.RingSize), "TX"})
	}
	for _, r := range sizes {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, r.opt, int(r.n)); err != nil {
			return 0, 0, fmt.Errorf("afxdp: queue %d: %s ring of %d: %w", s.queue, r.name, r.n, err)
		}
	}
	return fillSize, compSize, nil
}

// mapRings maps the rings at the offsets the kernel reports.
func (s *xsk) mapRings(o *Options, tx bool, fillSize, compSize uint32) error {
	q := s.queue
	var off unix.XDPMmapOffsets
	n, err := getsockoptRaw(s.fd, unix.SOL_XDP, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), unsafe.Sizeof(off))
	if err != nil {
		return fmt.Errorf("afxdp: queue %d: XDP_MMAP_OFFSETS: %w", q, err)
	}
	if n != unsafe.Sizeof(off) {
		return fmt.Errorf("afxdp: queue %d: XDP_MMAP_OFFSETS without ring flags (kernel older than 5.4): %w", q, ErrNotSupported)
	}
	descSize := uint64(unsafe.Sizeof(unix.XDPDesc{}))
	type ringMap struct {
		pgoff int64
		off   unix.XDPRingOffset
		size  uint32
		elem  uint64
		init  func(mem []byte) bool
		name  string
	}
	maps := []ringMap{
		{unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, fillSize, 8, func(m []byte) bool { return s.fill.init(m, off.Fr, fillSize, true) }, "fill"},
		{unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, compSize, 8, func(m []byte) bool { return s.comp.init(m, off.Cr, compSize, false) }, "completion"},
		{unix.XDP_PGOFF_RX_RING, off.Rx, uint32(o.RingSize), descSize, func(m []byte) bool { return s.rx.init(m, off.Rx, uint32(o.RingSize), false) }, "RX"},
	}
	if tx {
		maps = append(maps, ringMap{unix.XDP_PGOFF_TX_RING, off.Tx, uint32(o.RingSize), descSize,
			func(m []byte) bool { return s.tx.init(m, off.Tx, uint32(o.RingSize), true) }, "TX"})
	}
	for _, m := range maps {
		length := int(m.off.Desc + uint64(m.size)*m.elem)
		mem, err := unix.Mmap(s.fd, m.pgoff, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return fmt.Errorf("afxdp: queue %d: mmap %s ring: %w", q, m.name, err)
		}
		if !m.init(mem) {
			_ = unix.Munmap(mem)
			return fmt.Errorf("afxdp: queue %d: %s ring layout %+v does not fit its mapping of %d bytes", q, m.name, m.off, length)
		}
	}
	return nil
}

// prefill hands every RX frame to the kernel through the fill ring and
// keeps the TX frames in txFree.
func (s *xsk) prefill() error {
	if got := s.fill.free(s.rxFrames); got != s.rxFrames {
		return fmt.Errorf("afxdp: queue %d: fill ring takes %d of %d frames", s.queue, got, s.rxFrames)
	}
	for i := range s.rxFrames {
		s.fill.addrs[(s.fill.local+i)&s.fill.mask] = uint64(i) * s.frame
	}
	s.fill.submit(s.rxFrames)
	s.spare = make([]uint64, 0, s.rxFrames)
	s.txFree = make([]uint64, 0, s.txFrames)
	for i := range s.txFrames {
		s.txFree = append(s.txFree, uint64(s.rxFrames+i)*s.frame)
	}
	return nil
}

// bind binds the socket to its queue: zero-copy if the driver can (the
// kernel falls back to copy mode by itself when no mode flag is given),
// copy mode if forced. It retries EBUSY for up to bindRetry, and records
// the mode the kernel chose.
func (s *xsk) bind(ifindex int, o *Options) error {
	q := s.queue
	flags := uint16(unix.XDP_USE_NEED_WAKEUP)
	if o.ForceCopy {
		flags |= unix.XDP_COPY
	}
	if s.sg {
		flags |= unix.XDP_USE_SG
	}
	sa := &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(ifindex), QueueID: uint32(q)}
	var err error
	deadline := time.Now().Add(bindRetry)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		err = unix.Bind(s.fd, sa)
		if s.sg && sa.Flags&unix.XDP_COPY == 0 && errors.Is(err, unix.EOPNOTSUPP) {
			// A driver whose zero-copy mode has no multi-buffer support
			// refuses the bind; copy mode has it on every driver.
			sa.Flags |= unix.XDP_COPY
			continue
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		bindBusy.Add(1)
		time.Sleep(wait)
	}
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("afxdp: bind queue %d: %w: %w", q, ErrQueueBusy, err)
		}
		if s.sg && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
			return fmt.Errorf("afxdp: bind queue %d: %w: frames of %d bytes span several %d-byte chunks, "+
				"and the kernel or the driver refused multi-buffer AF_XDP (XDP_USE_SG): %w; "+
				"afxdp carries at most %d bytes per frame here", q, ErrFrameSize, o.MaxFrame, o.FrameSize, err, o.FrameSize-Headroom)
		}
		return fmt.Errorf("afxdp: bind queue %d of ifindex %d: %w", q, ifindex, err)
	}
	var opts uint32
	if _, err := getsockoptRaw(s.fd, unix.SOL_XDP, unix.XDP_OPTIONS, unsafe.Pointer(&opts), 4); err != nil {
		return fmt.Errorf("afxdp: queue %d: XDP_OPTIONS: %w", q, err)
	}
	s.zeroCopy = opts&unix.XDP_OPTIONS_ZEROCOPY != 0
	return nil
}

// tuneTX sizes the transmitting socket's budget and send buffer. Both are
// best effort: without them Send kicks more often.
func (s *xsk) tuneTX(o *Options) {
	// In copy mode one sendto moves at most max_tx_budget frames (32 by
	// default); let it move a whole ring. Kernels before 6.17 lack the
	// option.
	_ = unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, o.RingSize)
	// Copy mode builds an skb per frame, charged to the socket's send
	// buffer: make room for a full ring of them.
	if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4*o.RingSize*o.FrameSize); err != nil {
		_ = unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4*o.RingSize*o.FrameSize)
	}
}

// close unmaps everything and closes the socket; the kernel removes it
// from every XSKMAP it is in. Safe on a partly set up socket.
func (s *xsk) close() error {
	var errs []error
	for _, r := range []*ring{&s.rx.ring, &s.tx.ring, &s.fill.ring, &s.comp.ring} {
		if r.mem != nil {
			errs = append(errs, unix.Munmap(r.mem))
			*r = ring{}
		}
	}
	s.rx.descs, s.tx.descs, s.fill.addrs, s.comp.addrs = nil, nil, nil, nil
	if s.fd >= 0 {
		errs = append(errs, unix.Close(s.fd))
		s.fd = -1
	}
	// The kernel pinned the UMEM pages at registration and unpins them when
	// the socket is gone; our mapping can go now.
	if s.umem != nil {
		errs = append(errs, unix.Munmap(s.umem))
		s.umem = nil
	}
	return errors.Join(errs...)
}

// stats reads the kernel's counters of the socket.
func (s *xsk) stats() (unix.XDPStatistics, error) {
	var st unix.XDPStatistics
	_, err := getsockoptRaw(s.fd, unix.SOL_XDP, unix.XDP_STATISTICS, unsafe.Pointer(&st), unsafe.Sizeof(st))
	return st, err
}

// pow2 rounds n up to a power of two (at least 1).
func pow2(n uint32) uint32 {
	p := uint32(1)
	for p < n {
		p <<= 1
	}
	return p
}
