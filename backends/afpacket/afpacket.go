package afpacket

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

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
	ErrNoInterface = errors.New("afpacket: no such interface")
	// ErrQueueRange: Recv was called with a queue the port does not have.
	ErrQueueRange = errors.New("afpacket: queue out of range")
	// ErrNotSupported: the kernel lacks what this package needs
	// (AF_PACKET, TPACKET_V3, PACKET_FANOUT, PACKET_QDISC_BYPASS).
	ErrNotSupported = errors.New("afpacket: not supported by the kernel")
	// ErrOptions: an Options field is out of range.
	ErrOptions = errors.New("afpacket: invalid options")
	// ErrFrameSize: Options.MaxFrame does not fit a ring block.
	ErrFrameSize = errors.New("afpacket: frame size not supported")
)

// Options configure a Port. Zero values mean the defaults.
type Options struct {
	// Interface is the name of the NIC. It is resolved, and the sockets
	// are created, in the network namespace of the calling OS thread:
	// construct the port inside the namespace (netlab's ns.Do, or a
	// thread that did setns), from a goroutine locked to that thread.
	Interface string
	// Workers is the number of RX sockets, one l4 queue each, joined in
	// one PACKET_FANOUT group that spreads the frames over them by flow
	// hash; 0 means the interface's number of RX queues (its combined
	// plus RX-only channels, from ETHTOOL_GCHANNELS, else the netlink RX
	// queue count), and at least 1. Unlike AF_XDP it need not match the
	// NIC's queues.
	Workers int
	// BlockSize is the size of one block of a worker's TPACKET_V3 ring: a
	// power of two from 8 KiB (and the page size) to 64 MiB; default
	// 256 KiB. The kernel hands a worker a whole block at a time: when
	// the next frame does not fit, or BlockTimeout after it opened the
	// block. A frame longer than a block can hold arrives cut short and
	// is dropped (RxTruncated).
	BlockSize int
	// MaxFrame is the longest Ethernet frame the port must carry (the
	// NIC's MTU, its header and a VLAN tag); default 1518. It must fit a
	// block with the kernel's per-frame header; Open refuses it otherwise
	// (ErrFrameSize). Recv drops a longer frame (RxOversize); Send
	// refuses one the device does not take (TxStats.Dropped).
	MaxFrame int
	// Blocks is the number of blocks of each worker's ring; default 32
	// (8 MiB per worker with the default block size).
	Blocks int
	// BlockTimeout is how long the kernel keeps a block that is not full
	// before it hands it over (tp_retire_blk_tov): the latency that a
	// frame at a low rate pays. It has millisecond resolution; default
	// 1 ms, the shortest there is. See doc.go.
	BlockTimeout time.Duration
	// Filter, if set, is a socket filter program (BPF_PROG_TYPE_SOCKET_FILTER,
	// e.g. firewall.SocketFilter's) attached to every RX socket with
	// SO_ATTACH_BPF once the sockets are in their fanout group: frames it
	// drops are never copied into a ring nor counted. The sockets hold
	// their own reference; the caller may close it after Open.
	Filter *ebpf.Program
	// Logger gets one line per port opened and closed; the zero Logger
	// is silent.
	Logger zerolog.Logger
}

const (
	defaultBlockSize    = 256 << 10
	defaultBlocks       = 32
	defaultBlockTimeout = time.Millisecond
	maxBlockSize        = 64 << 20
	maxBlocks           = 1 << 16
	maxWorkers          = 256 // PACKET_FANOUT's default group size
	defaultMaxFrame     = 1518
	// frameOverhead is what the kernel puts in a block in front of a
	// frame, rounded up generously: tpacket3_hdr, sockaddr_ll, alignment,
	// and a virtio-net header.
	frameOverhead = 128
)

func (o *Options) fill() error {
	if o.BlockSize == 0 {
		o.BlockSize = defaultBlockSize
	}
	if o.Blocks == 0 {
		o.Blocks = defaultBlocks
	}
	if o.BlockTimeout == 0 {
		o.BlockTimeout = defaultBlockTimeout
	}
	if o.MaxFrame == 0 {
		o.MaxFrame = defaultMaxFrame
	}
	page := unix.Getpagesize()
	switch {
	case o.Interface == "":
		return fmt.Errorf("%w: no interface", ErrOptions)
	case o.MaxFrame < 0:
		return fmt.Errorf("%w: max frame %d", ErrOptions, o.MaxFrame)
	case o.Workers < 0 || o.Workers > maxWorkers:
		return fmt.Errorf("%w: %d workers: want 0..%d", ErrOptions, o.Workers, maxWorkers)
	case o.BlockSize < max(page, 8192) || o.BlockSize > maxBlockSize || o.BlockSize&(o.BlockSize-1) != 0:
		return fmt.Errorf("%w: block size %d: want a power of two in [%d, %d]", ErrOptions, o.BlockSize, max(page, 8192), maxBlockSize)
	case o.Blocks < 2 || o.Blocks > maxBlocks:
		return fmt.Errorf("%w: %d blocks: want [2, %d]", ErrOptions, o.Blocks, maxBlocks)
	case o.BlockTimeout < time.Millisecond || o.BlockTimeout > time.Second || o.BlockTimeout%time.Millisecond != 0:
		return fmt.Errorf("%w: block timeout %v: want whole milliseconds from 1 ms to 1 s", ErrOptions, o.BlockTimeout)
	}
	if lim := o.BlockSize - blkHdrLen - frameOverhead; o.MaxFrame > lim {
		return fmt.Errorf("%w: frames of %d bytes do not fit a ring block of %d bytes, which holds at most %d; raise BlockSize",
			ErrFrameSize, o.MaxFrame, o.BlockSize, lim)
	}
	return nil
}

// Port is an l4.Port on one NIC through AF_PACKET sockets: Workers RX
// sockets with TPACKET_V3 rings in a fanout group, and one TX socket.
//
// Ownership (see l4.Port for who calls what):
//
//   - worker q's socket, ring and read position belong to the goroutine
//     calling Recv(q, …) (the pipeline's RX worker q), under that
//     socket's mu, which only Close (and Stats, for the kernel's
//     counters) contends;
//   - the TX socket and its message arrays belong to the goroutine
//     calling Send, under txMu, which only Close contends;
//   - Stats, FanoutID may be called from anywhere.
//
// Close takes every lock (after waking pollers through an eventfd), so no
// ring is unmapped while a Recv or Send uses it.
type Port struct {
	name     string
	ifindex  int
	opt      Options
	rx       []*rxSock
	tx       *txSock
	fanoutID uint16
	efd      int // eventfd written by Close: wakes every poll
	log      zerolog.Logger

	txMu sync.Mutex

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	lifeMu    sync.RWMutex // Stats readers vs. Close
	final     *Stats       // Stats at Close
}

var _ l4.Port = (*Port)(nil)

// Open opens Workers RX sockets in a new fanout group and the TX socket on
// opt.Interface. It must run in the interface's network namespace (see
// Options.Interface).
func Open(opt Options) (*Port, error) {
	if err := opt.fill(); err != nil {
		return nil, err
	}
	ifi, err := net.InterfaceByName(opt.Interface)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrNoInterface, opt.Interface, err)
	}
	have, how := nicinfo.QueueCount(ifi)
	workers := opt.Workers
	if workers == 0 {
		workers = have
	}
	workers = min(workers, maxWorkers)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("afpacket: eventfd: %w", err)
	}
	p := &Port{name: opt.Interface, ifindex: ifi.Index, opt: opt, efd: efd, log: opt.Logger}
	fail := func(err error) (*Port, error) {
		p.release()
		return nil, fmt.Errorf("afpacket: %s: %w", opt.Interface, err)
	}
	for q := range workers {
		s, err := newRxSock(ifi.Index, q, &opt)
		if err != nil {
			return fail(err)
		}
		s.pollfds = [2]unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
		p.rx = append(p.rx, s)
	}
	// Join the fanout group only now that every socket is bound: until
	// then each one's filter drops everything, so that no frame reaches
	// two workers.
	if p.fanoutID, err = joinFanout(p.rx); err != nil {
		return fail(err)
	}
	filterFD := -1
	if opt.Filter != nil {
		filterFD = opt.Filter.FD()
	}
	for _, s := range p.rx {
		if err := s.open(filterFD); err != nil {
			return fail(err)
		}
	}
	if p.tx, err = newTxSock(ifi.Index); err != nil {
		return fail(err)
	}
	p.tx.pollfds = [2]unix.PollFd{{Fd: int32(p.tx.fd), Events: unix.POLLOUT}, {Fd: int32(efd), Events: unix.POLLIN}}
	p.log.Info().Str("interface", opt.Interface).Int("ifindex", ifi.Index).
		Int("workers", workers).Int("interface_queues", have).Str("queue_count_from", how).
		Int("fanout_group", int(p.fanoutID)).Int("block_size", opt.BlockSize).Int("blocks", opt.Blocks).
		Dur("block_timeout", opt.BlockTimeout).Str("tx", "sendmmsg").Int("max_frame", opt.MaxFrame).
		Bool("socket_filter", opt.Filter != nil).
		Msg("afpacket: port open")
	return p, nil
}

// Name implements l4.Port: the interface name.
func (p *Port) Name() string { return p.name }

// Kind implements l4.Port: a NIC.
func (p *Port) Kind() l4.PortKind { return l4.PortNIC }

// RxQueues implements l4.Port: one queue per worker socket. Queue q is not
// the NIC's queue q: the fanout group spreads frames by flow hash.
func (p *Port) RxQueues() int { return len(p.rx) }

// MaxFrame returns the longest frame the port carries (Options.MaxFrame).
func (p *Port) MaxFrame() int { return p.opt.MaxFrame }

// FanoutID returns the id of the PACKET_FANOUT group of the RX sockets
// (chosen by the kernel, unique in the network namespace).
func (p *Port) FanoutID() uint16 { return p.fanoutID }

// BlockTimeout returns the block timeout in use.
func (p *Port) BlockTimeout() time.Duration { return p.opt.BlockTimeout }

// QueueStats are one worker socket's counters: the kernel's
// (PACKET_STATISTICS) and the port's own.
type QueueStats struct {
	Queue int

	// From the kernel, summed over every read (the kernel resets its
	// counters on each read).
	Packets     uint64 // frames the socket was given, dropped ones included (tp_packets)
	Drops       uint64 // frames dropped: the ring was full, we were too slow (tp_drops)
	FreezeQueue uint64 // times the ring ran full: every block was ours (tp_freeze_q_cnt)

	// The port's own.
	RxFrames      uint64 // frames handed to Recv's caller
	RxBlocks      uint64 // blocks read and given back
	RxOversize    uint64 // frames dropped: longer than the caller's buffer (GRO? see doc.go)
	RxTruncated   uint64 // frames dropped: cut short by the ring (tp_snaplen < tp_len)
	RxBadFrame    uint64 // frame headers pointing outside their block (a kernel bug): rest of the block skipped
	RxCsumPartial uint64 // frames whose L4 checksum the sender left to offload, completed here
	RxVLAN        uint64 // frames whose VLAN tag the kernel had taken out, put back in
	RxGSO         uint64 // GRO/LRO super-frames cut back into segments
	RxGSOSegments uint64 // the segments they made (counted in RxFrames too)
	RxGSOBad      uint64 // super-frames dropped: a GSO type or headers this port does not cut
}

// TxStats are the TX socket's counters.
type TxStats struct {
	Frames   uint64 // frames the kernel took
	Dropped  uint64 // frames refused: empty, or longer than the device takes (EMSGSIZE)
	Full     uint64 // frames refused: no room (socket buffer full, device busy)
	Syscalls uint64 // sendmmsg calls
	Errors   uint64 // calls that failed with another error (ENETDOWN, ENXIO, …)
}

// Stats are the port's counters.
type Stats struct {
	Queues []QueueStats
	Tx     TxStats
}

// Stats returns the counters of every worker and of the TX side. After
// Close it returns the counters as they were at Close.
func (p *Port) Stats() Stats {
	p.lifeMu.RLock()
	defer p.lifeMu.RUnlock()
	if p.closed.Load() && p.final != nil {
		st := *p.final
		st.Queues = append([]QueueStats(nil), st.Queues...)
		return st
	}
	return p.collect()
}

func (p *Port) collect() Stats {
	st := Stats{Queues: make([]QueueStats, 0, len(p.rx))}
	for _, s := range p.rx {
		s.readKernelStats()
		st.Queues = append(st.Queues, QueueStats{
			Queue:         s.queue,
			Packets:       s.k.packets.Load(),
			Drops:         s.k.drops.Load(),
			FreezeQueue:   s.k.freeze.Load(),
			RxFrames:      s.c.frames.Load(),
			RxBlocks:      s.c.blocks.Load(),
			RxOversize:    s.c.oversize.Load(),
			RxTruncated:   s.c.truncated.Load(),
			RxBadFrame:    s.c.bad.Load(),
			RxCsumPartial: s.c.csumPartial.Load(),
			RxVLAN:        s.c.vlan.Load(),
			RxGSO:         s.c.gsoFrames.Load(),
			RxGSOSegments: s.c.gsoSegments.Load(),
			RxGSOBad:      s.c.gsoBad.Load(),
		})
	}
	if t := p.tx; t != nil {
		st.Tx = TxStats{
			Frames:   t.c.frames.Load(),
			Dropped:  t.c.dropped.Load(),
			Full:     t.c.full.Load(),
			Syscalls: t.c.syscalls.Load(),
			Errors:   t.c.errors.Load(),
		}
	}
	return st
}

// Close implements l4.Port. It wakes blocked Recv and Send calls, waits
// until none is inside a ring, closes the sockets (which leaves the fanout
// group) and unmaps the rings. It is idempotent.
func (p *Port) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		var one [8]byte
		one[0] = 1 // native endian 1; any non-zero count wakes
		if _, err := unix.Write(p.efd, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
			p.closeErr = fmt.Errorf("afpacket: wake pollers: %w", err)
		}
		for _, s := range p.rx {
			s.mu.Lock()
		}
		p.txMu.Lock()
		p.lifeMu.Lock()
		st := p.collect()
		p.final = &st
		var rx, gso, segs uint64
		for _, q := range st.Queues {
			rx += q.RxFrames
			gso += q.RxGSO
			segs += q.RxGSOSegments
		}
		if err := p.release(); err != nil {
			p.closeErr = errors.Join(p.closeErr, err)
		}
		p.lifeMu.Unlock()
		p.txMu.Unlock()
		for _, s := range p.rx {
			s.mu.Unlock()
		}
		p.log.Info().Str("interface", p.name).Uint64("rx_frames", rx).Uint64("tx_frames", st.Tx.Frames).
			Uint64("rx_gso_frames", gso).Uint64("rx_gso_segments", segs).
			Err(p.closeErr).Msg("afpacket: port closed")
	})
	return p.closeErr
}

// release closes every socket and the eventfd.
func (p *Port) release() error {
	var errs []error
	for _, s := range p.rx {
		if err := s.close(); err != nil {
			errs = append(errs, fmt.Errorf("afpacket: close worker %d: %w", s.queue, err))
		}
	}
	if p.tx != nil {
		if err := p.tx.close(); err != nil {
			errs = append(errs, fmt.Errorf("afpacket: close TX socket: %w", err))
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
