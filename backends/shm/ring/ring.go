package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The layout's constants (doc.go).
const (
	Magic      = 0x4d485355 // "USHM" little-endian
	Version    = 1
	DataOffset = 4096
	MaxSlots   = 32768
	// MaxFrame is the largest frame capacity a channel may have.
	MaxFrame = 65536

	offMagic     = 0
	offVersion   = 4
	offDataOff   = 8
	offSlots     = 12
	offSlotSize  = 16
	offFrameCap  = 20
	offMTU       = 24
	offTotal     = 32
	offClosed    = 40
	offRing0     = 64
	offRing1     = 320
	ringProd     = 0
	ringCons     = 64
	ringFlags    = 128
	slotHdr      = 8
	lineSize     = 64
	DefaultSlots = 1024
)

// Geometry is a channel's shape: slots per ring and the frame capacity of
// a slot.
type Geometry struct {
	Slots    int // power of two, 2..MaxSlots
	FrameCap int // 1..MaxFrame
}

// SlotSize is the size of one slot: the length word and the frame, rounded
// up to a cache line.
func (g Geometry) SlotSize() int { return (slotHdr + g.FrameCap + lineSize - 1) &^ (lineSize - 1) }

// Size is the size of the memfd.
func (g Geometry) Size() int {
	n := DataOffset + 2*g.Slots*g.SlotSize()
	return (n + 4095) &^ 4095
}

func (g Geometry) check() error {
	if g.Slots < 2 || g.Slots > MaxSlots || g.Slots&(g.Slots-1) != 0 {
		return fmt.Errorf("shm: %d slots per ring: want a power of two in 2..%d", g.Slots, MaxSlots)
	}
	if g.FrameCap < 1 || g.FrameCap > MaxFrame {
		return fmt.Errorf("shm: frame capacity %d: want 1..%d", g.FrameCap, MaxFrame)
	}
	return nil
}

// Mem is a mapped channel.
type Mem struct {
	b   []byte
	g   Geometry
	mtu int
}

// Create makes a sealed memfd for a channel of geometry g carrying frames of
// an interface with the given MTU, maps it and writes the header. It
// returns the mapping and the memfd (close-on-exec), which the caller
// hands to the endpoint and closes.
func Create(g Geometry, mtu int) (*Mem, int, error) {
	if err := g.check(); err != nil {
		return nil, -1, err
	}
	fd, err := unix.MemfdCreate("usnetd-shm", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, -1, fmt.Errorf("shm: memfd_create: %w", err)
	}
	size := g.Size()
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, -1, fmt.Errorf("shm: ftruncate: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, -1, fmt.Errorf("shm: sealing the memfd: %w", err)
	}
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, -1, fmt.Errorf("shm: mmap: %w", err)
	}
	le := binary.LittleEndian
	le.PutUint32(b[offMagic:], Magic)
	le.PutUint32(b[offVersion:], Version)
	le.PutUint32(b[offDataOff:], DataOffset)
	le.PutUint32(b[offSlots:], uint32(g.Slots))
	le.PutUint32(b[offSlotSize:], uint32(g.SlotSize()))
	le.PutUint32(b[offFrameCap:], uint32(g.FrameCap))
	le.PutUint32(b[offMTU:], uint32(max(mtu, 0)))
	le.PutUint64(b[offTotal:], uint64(size))
	return &Mem{b: b, g: g, mtu: mtu}, fd, nil
}

// Map maps the channel in memfd fd (received from usnetd) and checks its
// header. It does not take fd: the caller closes it.
func Map(fd int) (*Mem, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("shm: fstat: %w", err)
	}
	if st.Size < DataOffset || st.Size > 1<<32 {
		return nil, fmt.Errorf("shm: memfd of %d bytes", st.Size)
	}
	size := int(st.Size)
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shm: mmap: %w", err)
	}
	le := binary.LittleEndian
	fail := func(format string, a ...any) (*Mem, error) {
		_ = unix.Munmap(b)
		return nil, fmt.Errorf("shm: "+format, a...)
	}
	if m := le.Uint32(b[offMagic:]); m != Magic {
		return fail("bad magic %#x", m)
	}
	if v := le.Uint32(b[offVersion:]); v != Version {
		return fail("layout version %d, want %d", v, Version)
	}
	if d := le.Uint32(b[offDataOff:]); d != DataOffset {
		return fail("data offset %d", d)
	}
	g := Geometry{Slots: int(le.Uint32(b[offSlots:])), FrameCap: int(le.Uint32(b[offFrameCap:]))}
	if err := g.check(); err != nil {
		return fail("%v", err)
	}
	if s := le.Uint32(b[offSlotSize:]); int(s) != g.SlotSize() {
		return fail("slot size %d, want %d", s, g.SlotSize())
	}
	if t := le.Uint64(b[offTotal:]); t != uint64(size) || g.Size() != size {
		return fail("size %d, header says %d, geometry %d", size, t, g.Size())
	}
	return &Mem{b: b, g: g, mtu: int(le.Uint32(b[offMTU:]))}, nil
}

// Geometry returns the channel's geometry.
func (m *Mem) Geometry() Geometry { return m.g }

// MTU is the MTU usnetd wrote into the header.
func (m *Mem) MTU() int { return m.mtu }

// Bytes is the whole mapping (for tests that play a hostile endpoint).
func (m *Mem) Bytes() []byte { return m.b }

// Unmap releases the mapping. The rings must not be used afterwards.
func (m *Mem) Unmap() error {
	if m.b == nil {
		return nil
	}
	b := m.b
	m.b = nil
	return unix.Munmap(b)
}

// SetClosed marks the channel as detached by the endpoint.
func (m *Mem) SetClosed() { atomic.StoreUint32(m.word(offClosed), 1) }

// Closed reports whether the endpoint marked the channel detached.
func (m *Mem) Closed() bool { return atomic.LoadUint32(m.word(offClosed)) != 0 }

func (m *Mem) word(off int) *uint32 { return (*uint32)(unsafe.Pointer(&m.b[off])) }

// Ring 0 carries frames to the endpoint, ring 1 frames from it.
const (
	ToEndpoint   = 0
	FromEndpoint = 1
)

// ring is one ring's view of the mapping.
type ring struct {
	prod, cons, flag *uint32
	slots            []byte // N*S bytes
	n, mask          uint32
	slotSize         int
	frameCap         int
}

func (m *Mem) ring(which int) ring {
	ctl := offRing0
	base := DataOffset
	ss := m.g.SlotSize()
	if which == FromEndpoint {
		ctl = offRing1
		base += m.g.Slots * ss
	}
	return ring{
		prod:     m.word(ctl + ringProd),
		cons:     m.word(ctl + ringCons),
		flag:     m.word(ctl + ringFlags),
		slots:    m.b[base : base+m.g.Slots*ss : base+m.g.Slots*ss],
		n:        uint32(m.g.Slots),
		mask:     uint32(m.g.Slots - 1),
		slotSize: ss,
		frameCap: m.g.FrameCap,
	}
}

// slot returns slot i's bytes: the length word and the frame area.
func (r *ring) slot(i uint32) []byte {
	off := int(i&r.mask) * r.slotSize
	return r.slots[off : off+slotHdr+r.frameCap : off+slotHdr+r.frameCap]
}

// Producer fills one ring. Its own index lives in the Producer, never read
// back from shared memory. It is used by one goroutine.
type Producer struct {
	r    ring
	prod uint32
	// free is how many slots the last look at the consumer index found.
	free uint32
	// BadIndex counts consumer indices that were out of range (the ring
	// then counts as full).
	BadIndex uint64
}

// Producer returns the producer of ring which (ToEndpoint for usnetd,
// FromEndpoint for the endpoint), starting at the index in shared memory
// (0 for a new channel).
func (m *Mem) Producer(which int) *Producer {
	r := m.ring(which)
	return &Producer{r: r, prod: atomic.LoadUint32(r.prod)}
}

// Free looks at the consumer index (one atomic load) and returns how many
// slots may be written: 0 when the ring is full or the index is out of
// range (counted in BadIndex).
func (p *Producer) Free() int {
	c := atomic.LoadUint32(p.r.cons)
	used := p.prod - c
	if used > p.r.n {
		p.BadIndex++
		p.free = 0
		return 0
	}
	p.free = p.r.n - used
	return int(p.free)
}

// FrameCap is the capacity of a slot.
func (p *Producer) FrameCap() int { return p.r.frameCap }

// Slot returns the frame area of the i-th free slot (0 <= i < Free()), to
// be filled and then committed with SetLen.
func (p *Producer) Slot(i int) []byte {
	return p.r.slot(p.prod + uint32(i))[slotHdr:]
}

// SetLen records the length of the frame in the i-th free slot (1..FrameCap).
func (p *Producer) SetLen(i, n int) {
	s := p.r.slot(p.prod + uint32(i))
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&s[0])), uint32(n))
}

// Publish hands the first k free slots to the consumer (k <= the last
// Free()) and reports whether the consumer asked to be woken (the
// need-wakeup flag was set: this call cleared it; send a wake-up then).
func (p *Producer) Publish(k int) (wake bool) {
	if k <= 0 {
		return false
	}
	k = min(k, int(p.free))
	p.free -= uint32(k)
	p.prod += uint32(k)
	atomic.StoreUint32(p.r.prod, p.prod)
	return atomic.LoadUint32(p.r.flag) != 0 && atomic.CompareAndSwapUint32(p.r.flag, 1, 0)
}

// Consumer drains one ring. Its own index lives in the Consumer, never
// read back from shared memory. It is used by one goroutine.
type Consumer struct {
	r     ring
	cons  uint32
	avail uint32
	// BadIndex counts producer indices that were out of range (the ring
	// then counts as empty); BadLen frames whose length was 0 or above
	// the frame capacity (dropped).
	BadIndex, BadLen uint64
}

// Consumer returns the consumer of ring which (FromEndpoint for usnetd,
// ToEndpoint for the endpoint).
func (m *Mem) Consumer(which int) *Consumer {
	r := m.ring(which)
	return &Consumer{r: r, cons: atomic.LoadUint32(r.cons)}
}

// Avail looks at the producer index (one atomic load) and returns how many
// slots hold frames: 0 when the ring is empty or the index is out of range
// (counted in BadIndex).
func (c *Consumer) Avail() int {
	p := atomic.LoadUint32(c.r.prod)
	n := p - c.cons
	if n > c.r.n {
		c.BadIndex++
		c.avail = 0
		return 0
	}
	c.avail = n
	return int(n)
}

// Read copies the frame in the i-th available slot (0 <= i < Avail())
// into dst and returns its length, reading the length word once; 0 when
// the length is out of range (counted in BadLen) or dst is too short
// (counted in BadLen as well: the frame is longer than the receiver takes).
func (c *Consumer) Read(i int, dst []byte) int {
	s := c.r.slot(c.cons + uint32(i))
	n := atomic.LoadUint32((*uint32)(unsafe.Pointer(&s[0])))
	if n == 0 || n > uint32(c.r.frameCap) || n > uint32(len(dst)) {
		c.BadLen++
		return 0
	}
	return copy(dst[:n], s[slotHdr:slotHdr+n])
}

// Release hands k read slots back to the producer (k <= the last Avail()).
func (c *Consumer) Release(k int) {
	if k <= 0 {
		return
	}
	k = min(k, int(c.avail))
	c.avail -= uint32(k)
	c.cons += uint32(k)
	atomic.StoreUint32(c.r.cons, c.cons)
}

// ArmWakeup sets the ring's need-wakeup flag and reports whether frames
// arrived meanwhile (then do not sleep; the flag may stay set, which costs
// the producer one wake-up at most).
func (c *Consumer) ArmWakeup() bool {
	atomic.StoreUint32(c.r.flag, 1)
	return c.Avail() > 0
}

// Wake-ups.

// NewWakePair returns a SOCK_SEQPACKET socket pair for wake-ups, both ends
// close-on-exec and non-blocking: [0] for usnetd, [1] for the endpoint.
func NewWakePair() ([2]int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return [2]int{-1, -1}, fmt.Errorf("shm: socketpair: %w", err)
	}
	return [2]int{fds[0], fds[1]}, nil
}

var kickByte = []byte{1}

// Kick sends one wake-up on fd, never blocking: a full socket buffer means
// wake-ups are pending already. It returns an error only when the peer is
// gone (EPIPE, ECONNRESET).
func Kick(fd int) error {
	err := unix.Sendto(fd, kickByte, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, nil)
	if err == nil || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR) {
		return nil
	}
	return err
}

// Drain reads every pending wake-up on fd without blocking. It reports
// whether the peer closed its end.
func Drain(fd int) (peerGone bool) {
	var b [16]byte
	for {
		n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return !errors.Is(err, unix.EAGAIN)
		case n == 0:
			return true // EOF: the peer closed
		}
	}
}

// Wait sleeps in poll(2) until fd has a wake-up, its peer closed, or
// timeout passed (negative: forever). It reports whether the peer closed.
// It is for the endpoint's side; usnetd waits in Go's netpoller.
func Wait(fd int, timeout time.Duration) (peerGone bool, err error) {
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(pfd, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		return pfd[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0, nil
	}
}
