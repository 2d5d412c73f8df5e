package afxdp

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/internal/nicinfo"
	l4 "github.com/usnetd/usnetd/switch"
)

// Errors of Open; they are wrapped (with the errno where there is one), so
// test them with errors.Is.
var (
	// ErrNoInterface: the interface does not exist in the calling
	// thread's network namespace.
	ErrNoInterface = errors.New("afxdp: no such interface")
	// ErrQueueRange: more queues were asked for than the interface has,
	// or Recv was called with a queue the port does not have.
	ErrQueueRange = errors.New("afxdp: queue out of range")
	// ErrNotSupported: the kernel has no AF_XDP (EAFNOSUPPORT) or lacks a
	// feature this package needs.
	ErrNotSupported = errors.New("afxdp: AF_XDP not supported")
	// ErrQueueBusy: another socket holds the queue (bind kept failing with
	// EBUSY for longer than a closed socket takes to go away).
	ErrQueueBusy = errors.New("afxdp: queue busy")
	// ErrOptions: an Options field is out of range.
	ErrOptions = errors.New("afxdp: invalid options")
	// ErrFrameSize: the port cannot carry frames of Options.MaxFrame
	// bytes: more chunks than MaxChunks, or the kernel or the driver
	// refused multi-buffer sockets (XDP_USE_SG).
	ErrFrameSize = errors.New("afxdp: frame size not supported")
)

// MaxChunks bounds the UMEM chunks of one frame with XDP_USE_SG. The kernel
// builds a multi-buffer frame as one skb (copy mode) or one xdp_buff with
// at most MAX_SKB_FRAGS (17) fragments besides the first buffer; 16 keeps
// clear of that limit: 16 × (2048-256) = 28,672 bytes with the default
// chunk, far above a 9,000-byte MTU.
const MaxChunks = 16

// Headroom is what the kernel keeps in front of a received frame in its
// UMEM chunk (XDP_PACKET_HEADROOM).
const Headroom = 256

// Options configure a Port. Zero values mean the defaults.
type Options struct {
	// Interface is the name of the NIC. It is resolved, and the sockets
	// are created, in the network namespace of the calling OS thread:
	// construct the port inside the namespace (netlab's ns.Do, or a
	// thread that did setns), from a goroutine locked to that thread.
	Interface string
	// Queues is how many queues to open, 0..Queues-1; 0 means all of the
	// interface's queues (its combined plus RX-only channels, from
	// ETHTOOL_GCHANNELS, else the netlink RX queue count).
	Queues int
	// FrameSize is the UMEM frame (chunk) size: a power of two from 2048
	// to the page size; default 2048. A chunk holds at most FrameSize-256
	// bytes on receive (the kernel keeps XDP_PACKET_HEADROOM in front).
	FrameSize int
	// MaxFrame is the longest Ethernet frame (headers included, FCS not)
	// that the port must carry both ways; default FrameSize-256, what one
	// chunk holds. Longer than that, the sockets are bound with
	// XDP_USE_SG (multi-buffer): the kernel spreads a frame over several
	// chunks, Recv joins them into one buffer and Send splits a buffer
	// into chunks. At most MaxChunks chunks per frame; a MaxFrame that
	// needs more, or a kernel or driver that refuses multi-buffer, makes
	// Open fail with ErrFrameSize, naming the size and the limit.
	MaxFrame int
	// NumFrames is the number of RX frames in each socket's UMEM; default
	// 4096. The transmitting socket has RingSize TX frames besides.
	NumFrames int
	// RingSize is the number of slots of the RX and TX rings (a power of
	// two); default 2048. Fill and completion rings are made large enough
	// for all the frames they may hold.
	RingSize int
	// XSKMap, when set, gets each socket's fd at key = its queue id
	// (BPF_MAP_TYPE_XSKMAP of the XDP program that redirects to us).
	// With nil the caller inserts QueueFDs itself.
	XSKMap *ebpf.Map
	// ForceCopy binds with XDP_COPY even where the driver has zero-copy.
	ForceCopy bool
	// Logger gets one line per port opened (mode, queues) and closed;
	// the zero Logger is silent.
	Logger zerolog.Logger
}

// DefaultFrameSize is the UMEM chunk size of Options.FrameSize 0.
const DefaultFrameSize = 2048

const (
	defaultNumFrames = 4096
	defaultRingSize  = 2048
	maxRingSize      = 1 << 16
	maxNumFrames     = 1 << 20
)

func (o *Options) fill() error {
	if o.FrameSize == 0 {
		o.FrameSize = DefaultFrameSize
	}
	if o.NumFrames == 0 {
		o.NumFrames = defaultNumFrames
	}
	if o.RingSize == 0 {
		o.RingSize = defaultRingSize
	}
	page := unix.Getpagesize()
	switch {
	case o.Interface == "":
		return fmt.Errorf("%w: no interface", ErrOptions)
	case o.Queues < 0:
		return fmt.Errorf("%w: %d queues", ErrOptions, o.Queues)
	case o.FrameSize < 2048 || o.FrameSize > page || o.FrameSize&(o.FrameSize-1) != 0:
		return fmt.Errorf("%w: frame size %d: want a power of two in [2048, %d]", ErrOptions, o.FrameSize, page)
	case o.RingSize < 64 || o.RingSize > maxRingSize || o.RingSize&(o.RingSize-1) != 0:
		return fmt.Errorf("%w: ring size %d: want a power of two in [64, %d]", ErrOptions, o.RingSize, maxRingSize)
	case o.NumFrames < 128 || o.NumFrames > maxNumFrames:
		return fmt.Errorf("%w: %d frames: want [128, %d]", ErrOptions, o.NumFrames, maxNumFrames)
	case o.MaxFrame < 0:
		return fmt.Errorf("%w: max frame %d", ErrOptions, o.MaxFrame)
	}
	if o.MaxFrame == 0 {
		o.MaxFrame = o.FrameSize - Headroom
	}
	if lim := MaxChunks * (o.FrameSize - Headroom); o.MaxFrame > lim {
		return fmt.Errorf("%w: frames of %d bytes need more than %d chunks of %d bytes; afxdp carries at most %d",
			ErrFrameSize, o.MaxFrame, MaxChunks, o.FrameSize-Headroom, lim)
	}
	return nil
}

// Port is an l4.Port on the queues of one NIC through AF_XDP sockets.
//
// Ownership (see l4.Port for who calls what):
//
//   - queue q's socket: fill ring, RX ring and RX frames belong to the
//     goroutine calling Recv(q, …) (the pipeline's RX worker q), under
//     that socket's rxMu, which only Close contends;
//   - the transmitting socket (the lowest queue's): TX ring, completion
//     ring and TX frames belong to the goroutine calling Send, under
//     txMu, which only Close contends;
//   - Stats, Mode, QueueFDs may be called from anywhere.
//
// Close takes every rxMu and txMu (after waking pollers through an
// eventfd), so no ring is unmapped while a Recv or Send uses it.
type Port struct {
	name    string
	ifindex int
	opt     Options
	socks   []*xsk
	txs     *xsk // the transmitting socket (socks[0])
	efd     int  // eventfd written by Close: wakes every poll
	log     zerolog.Logger

	txMu sync.Mutex

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	lifeMu    sync.RWMutex // Stats readers vs. Close
	final     []QueueStats // Stats at Close
}

var _ l4.Port = (*Port)(nil)

// Open opens one AF_XDP socket per queue of opt.Interface and inserts them
// into opt.XSKMap. It must run in the interface's network namespace (see
// Options.Interface). The XDP program that redirects into the map may be
// attached before or after.
func Open(opt Options) (*Port, error) {
	if err := opt.fill(); err != nil {
		return nil, err
	}
	ifi, err := net.InterfaceByName(opt.Interface)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrNoInterface, opt.Interface, err)
	}
	have, how := nicinfo.QueueCount(ifi)
	nq := opt.Queues
	if nq == 0 {
		nq = have
	}
	if nq > have {
		return nil, fmt.Errorf("%w: %d queues asked for, %s has %d (%s)", ErrQueueRange, nq, opt.Interface, have, how)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("afxdp: eventfd: %w", err)
	}
	p := &Port{name: opt.Interface, ifindex: ifi.Index, opt: opt, efd: efd, log: opt.Logger}
	for q := range nq {
		s, err := newXSK(ifi.Index, q, q == 0, &opt)
		if err != nil {
			p.release()
			return nil, fmt.Errorf("%s: %w", opt.Interface, err)
		}
		s.pollfds = [2]unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
		p.socks = append(p.socks, s)
	}
	p.txs = p.socks[0]
	if opt.XSKMap != nil {
		for _, s := range p.socks {
			if err := opt.XSKMap.Put(uint32(s.queue), uint32(s.fd)); err != nil {
				p.release()
				return nil, fmt.Errorf("afxdp: %s: put queue %d into XSKMAP: %w", opt.Interface, s.queue, err)
			}
		}
	}
	p.log.Info().Str("interface", opt.Interface).Int("ifindex", ifi.Index).
		Int("queues", nq).Int("interface_queues", have).Str("queue_count_from", how).
		Str("mode", p.Mode()).Bool("force_copy", opt.ForceCopy).
		Int("frame_size", opt.FrameSize).Int("max_frame", opt.MaxFrame).Bool("multi_buffer", p.MultiBuffer()).
		Int("frames_per_queue", opt.NumFrames).Int("ring_size", opt.RingSize).
		Int("tx_queue", p.txs.queue).Bool("xskmap", opt.XSKMap != nil).
		Msg("afxdp: port open")
	return p, nil
}

// Name implements l4.Port: the interface name.
func (p *Port) Name() string { return p.name }

// Kind implements l4.Port: a NIC.
func (p *Port) Kind() l4.PortKind { return l4.PortNIC }

// RxQueues implements l4.Port: queue q of the port is queue q of the NIC.
func (p *Port) RxQueues() int { return len(p.socks) }

// Mode returns "zero-copy" or "copy": how the kernel bound the sockets
// (read back with XDP_OPTIONS after bind). "mixed" would mean that the
// driver gave different queues different modes.
func (p *Port) Mode() string {
	zc := 0
	for _, s := range p.socks {
		if s.zeroCopy {
			zc++
		}
	}
	switch zc {
	case 0:
		return "copy"
	case len(p.socks):
		return "zero-copy"
	}
	return "mixed"
}

// MultiBuffer reports whether the sockets are bound with XDP_USE_SG: a
// frame may span several UMEM chunks (Options.MaxFrame above one chunk).
func (p *Port) MultiBuffer() bool { return p.opt.MaxFrame > p.opt.FrameSize-Headroom }

// MaxFrame returns the longest frame the port carries (Options.MaxFrame).
func (p *Port) MaxFrame() int { return p.opt.MaxFrame }

// TxQueue returns the queue whose socket transmits (see doc.go).
func (p *Port) TxQueue() int { return p.txs.queue }

// QueueFDs returns the socket fd of each queue, indexed by queue id, for a
// caller that fills the XSKMAP itself. The fds belong to the port: do not
// close them; they are invalid after Close (which returns nil from then on).
func (p *Port) QueueFDs() []int {
	p.lifeMu.RLock()
	defer p.lifeMu.RUnlock()
	if p.closed.Load() {
		return nil
	}
	fds := make([]int, len(p.socks))
	for i, s := range p.socks {
		fds[i] = s.fd
	}
	return fds
}

// QueueStats are one queue's counters: the kernel's (XDP_STATISTICS) and
// the port's own.
type QueueStats struct {
	Queue    int
	ZeroCopy bool

	// From the kernel.
	RxDropped            uint64 // frames dropped: no fill frame, or too long for a frame
	RxInvalidDescs       uint64 // bad fill ring entries
	TxInvalidDescs       uint64 // bad TX descriptors
	RxRingFull           uint64 // frames dropped: RX ring full (we were too slow)
	RxFillRingEmptyDescs uint64 // times the kernel found the fill ring empty
	TxRingEmptyDescs     uint64 // times the kernel found the TX ring empty

	// The port's own.
	RxFrames   uint64 // frames handed to Recv's caller
	RxOversize uint64 // frames dropped: longer than the caller's buffer
	RxPartial  uint64 // multi-buffer frames dropped: a chunk of them was bad
	RxBadDesc  uint64 // RX descriptors pointing outside our UMEM frames (kernel bug)
	RxWakeups  uint64 // recvfrom kicks of the fill ring (need_wakeup)
	TxFrames   uint64 // frames queued on the TX ring
	TxDropped  uint64 // frames refused: empty or longer than a frame
	TxFull     uint64 // frames refused: no free TX frame or ring slot
	TxWakeups  uint64 // sendto kicks of the TX ring (need_wakeup)
	TxErrors   uint64 // kicks that failed with an error other than EAGAIN/EBUSY
}

// Stats returns the counters of every queue. After Close it returns the
// counters as they were at Close. A queue whose kernel counters cannot be
// read has them zero.
func (p *Port) Stats() []QueueStats {
	p.lifeMu.RLock()
	defer p.lifeMu.RUnlock()
	if p.closed.Load() && p.final != nil {
		return append([]QueueStats(nil), p.final...)
	}
	return p.collect()
}

func (p *Port) collect() []QueueStats {
	out := make([]QueueStats, 0, len(p.socks))
	for _, s := range p.socks {
		qs := QueueStats{
			Queue:      s.queue,
			ZeroCopy:   s.zeroCopy,
			RxFrames:   s.c.rxFrames.Load(),
			RxOversize: s.c.rxOversize.Load(),
			RxPartial:  s.c.rxPartial.Load(),
			RxBadDesc:  s.c.rxBadDesc.Load(),
			RxWakeups:  s.c.rxWakeups.Load(),
			TxFrames:   s.c.txFrames.Load(),
			TxDropped:  s.c.txDropped.Load(),
			TxFull:     s.c.txFull.Load(),
			TxWakeups:  s.c.txWakeups.Load(),
			TxErrors:   s.c.txErrors.Load(),
		}
		if s.fd >= 0 {
			if k, err := s.stats(); err == nil {
				qs.RxDropped = k.Rx_dropped
				qs.RxInvalidDescs = k.Rx_invalid_descs
				qs.TxInvalidDescs = k.Tx_invalid_descs
				qs.RxRingFull = k.Rx_ring_full
				qs.RxFillRingEmptyDescs = k.Rx_fill_ring_empty_descs
				qs.TxRingEmptyDescs = k.Tx_ring_empty_descs
			}
		}
		out = append(out, qs)
	}
	return out
}

// Close implements l4.Port. It wakes blocked Recv calls, waits until no
// Recv or Send is inside a ring, closes the sockets (the kernel drops them
// from the XSKMAP) and unmaps everything. It is idempotent; a new port on
// the same queues may be opened right after (bind retries EBUSY).
func (p *Port) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		var one [8]byte
		one[0] = 1 // native endian 1; any non-zero count wakes
		if _, err := unix.Write(p.efd, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
			p.closeErr = fmt.Errorf("afxdp: wake pollers: %w", err)
		}
		for _, s := range p.socks {
			s.rxMu.Lock()
		}
		p.txMu.Lock()
		p.lifeMu.Lock()
		p.final = p.collect()
		var st struct{ rx, tx, kicks uint64 }
		for _, q := range p.final {
			st.rx += q.RxFrames
			st.tx += q.TxFrames
			st.kicks += q.TxWakeups
		}
		if err := p.release(); err != nil {
			p.closeErr = errors.Join(p.closeErr, err)
		}
		p.lifeMu.Unlock()
		p.txMu.Unlock()
		for _, s := range p.socks {
			s.rxMu.Unlock()
		}
		p.log.Info().Str("interface", p.name).Uint64("rx_frames", st.rx).Uint64("tx_frames", st.tx).Uint64("tx_wakeups", st.kicks).
			Err(p.closeErr).Msg("afxdp: port closed")
	})
	return p.closeErr
}

// release closes every socket and the eventfd.
func (p *Port) release() error {
	var errs []error
	for _, s := range p.socks {
		if err := s.close(); err != nil {
			errs = append(errs, fmt.Errorf("afxdp: close queue %d: %w", s.queue, err))
		}
	}
	if p.efd >= 0 {
		errs = append(errs, unix.Close(p.efd))
		p.efd = -1
	}
	return errors.Join(errs...)
}

// queueError is the error of Recv for a queue the port does not have.
func queueError(q, n int) error {
	return fmt.Errorf("%w: queue %s of %d", ErrQueueRange, strconv.Itoa(q), n)
}
