package macvtap

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"runtime"
	"strconv"
	"sync"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Errors of Open; they are wrapped (with the errno where there is one), so
// test them with errors.Is.
var (
	// ErrNoInterface: the NIC does not exist in the calling thread's
	// network namespace.
	ErrNoInterface = errors.New("macvtap: no such interface")
	// ErrOptions: an Options field is out of range.
	ErrOptions = errors.New("macvtap: invalid options")
	// ErrNameTaken: a link has the name of one of the helper links (see
	// Names) but is not one that usnetd makes (a passthru macvtap on the
	// NIC, a TAP): Open neither uses nor deletes it.
	ErrNameTaken = errors.New("macvtap: helper link name taken by a foreign link")
	// ErrNoDevice: the macvtap's character device could not be found or
	// opened (see doc.go, "The character device").
	ErrNoDevice = errors.New("macvtap: character device not available")
)

// Options configure a Claim. Zero values mean the defaults.
type Options struct {
	// Interface is the NIC. It is resolved, and every link, address and
	// route is changed, in the network namespace of the calling OS
	// thread; Claim keeps a netlink socket there, so Close may be called
	// from any goroutine.
	Interface string
	// Queues is the number of queues of the macvtap and of the TAP: one
	// file descriptor each, and one receive queue (RX worker) of the
	// port. 0 means DefaultQueues; at most MaxQueues.
	Queues int
	// NoKernel claims the NIC without a kernel path (NO_HOST_RINGS): no
	// TAP, the NIC's routes stay where they are, and the kernel receives
	// nothing through this NIC while the claim lasts.
	NoKernel bool
	// TxQueueLen is the queue length of the macvtap and the TAP: how many
	// frames each of their queues holds until Recv reads them; 0 means
	// DefaultTxQueueLen.
	TxQueueLen int
	// Logger gets one line when the NIC is claimed and one when it is
	// given back, and a warning when leftovers of a crashed run are
	// repaired; the zero Logger is silent.
	Logger zerolog.Logger
}

const (
	// DefaultQueues is the queue count of Options.Queues 0. On the
	// 2-core machines this was measured on (BenchmarkKernelTCP,
	// BENCHMARKS.md) no queue count was consistently faster for one TCP
	// flow or for four, two queues were mostly the slowest, and one and
	// four were alike once the pipeline's rings had the same room: the
	// frames of a flow stay on one queue anyway, and more RX workers than
	// cores only add wake-ups.
	DefaultQueues = 1
	// MaxQueues is the kernel's limit of queues per macvtap and per
	// TAP (MAX_TAP_QUEUES).
	MaxQueues = 256
	// DefaultTxQueueLen is the queue length of Options.TxQueueLen 0.
	DefaultTxQueueLen = 1000
)

func (o *Options) fill() error {
	if o.Queues == 0 {
		o.Queues = DefaultQueues
	}
	if o.TxQueueLen == 0 {
		o.TxQueueLen = DefaultTxQueueLen
	}
	switch {
	case o.Interface == "":
		return fmt.Errorf("%w: no interface", ErrOptions)
	case len(o.Interface) > unix.IFNAMSIZ-1:
		return fmt.Errorf("%w: interface name %q longer than %d bytes", ErrOptions, o.Interface, unix.IFNAMSIZ-1)
	case o.Queues < 1 || o.Queues > MaxQueues:
		return fmt.Errorf("%w: %d queues: want 1..%d", ErrOptions, o.Queues, MaxQueues)
	case o.TxQueueLen < 1 || o.TxQueueLen > 1<<20:
		return fmt.Errorf("%w: queue length %d: want 1..%d", ErrOptions, o.TxQueueLen, 1<<20)
	}
	return nil
}

// Name suffixes of the helper links.
const (
	macvtapSuffix = "pass"
	tapSuffix     = "usnetd"
)

// Names returns the names of the helper links of NIC ifname: the passthru
// macvtap "<ifname>pass" and the kernel's TAP "<ifname>usnetd". A name that
// would be longer than the kernel's 15 bytes keeps the start of ifname, then
// four hex digits of a hash of the whole ifname, then the suffix
// ("enp0s20f0u1u4" gives "enp0s2088e4pass" and "enp0s88e4usnetd"), so that
// NICs whose names share a long prefix still get distinct names, and the
// next start (after a crash) finds the same names again.
func Names(ifname string) (macvtap, tap string) {
	return helperName(ifname, macvtapSuffix), helperName(ifname, tapSuffix)
}

func helperName(ifname, suffix string) string {
	const max = unix.IFNAMSIZ - 1
	if len(ifname)+len(suffix) <= max {
		return ifname + suffix
	}
	h := fnv.New32a()
	h.Write([]byte(ifname))
	tag := strconv.FormatUint(uint64(h.Sum32()&0xffff)|0x10000, 16)[1:] // four digits
	return ifname[:max-len(suffix)-len(tag)] + tag + suffix
}

// Claim is a NIC claimed through a passthru macvtap, with the kernel's TAP
// (unless Options.NoKernel). Its two ports are its own: Close closes them.
type Claim struct {
	opt     Options
	log     zerolog.Logger
	h       *netlink.Handle // in the NIC's namespace
	nicIdx  int
	nicName string
	nicMAC  net.HardwareAddr
	mvName  string
	tapName string

	mvIdx    int // the macvtap, once made
	tapIdx   int // the TAP, once made
	moved    []netlink.Route
	repaired Repair
	devPath  string

	nic    *Port
	kernel *Port

	closeOnce sync.Once
	closeErr  error
}

// Repair says what Open found of a crashed run and put right.
type Repair struct {
	Macvtap bool // a leftover macvtap was deleted
	TAP     bool // a leftover TAP was deleted
	Routes  int  // routes moved from the leftover TAP back to the NIC
}

// Open claims the NIC: it repairs what a crashed run left (see doc.go),
// makes the passthru macvtap and opens its queues, and, unless
// Options.NoKernel, makes the kernel's TAP with the NIC's MAC, MTU and
// addresses and moves the NIC's routes of the main table onto it. On an
// error it undoes what it did.
//
// It must run in the NIC's network namespace: call it on a thread there
// (netlab's Do, or a process that lives in that namespace).
func Open(opt Options) (_ *Claim, err error) {
	if err := opt.fill(); err != nil {
		return nil, err
	}
	// Everything below runs on this thread: netlink sockets, /dev/net/tun
	// and the thread that looks for the character device all take the
	// namespace from it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("macvtap: netlink: %w", err)
	}
	c := &Claim{opt: opt, log: opt.Logger, h: h, nicName: opt.Interface}
	c.mvName, c.tapName = Names(opt.Interface)
	defer func() {
		if err != nil {
			if cerr := c.teardown(); cerr != nil {
				c.log.Error().Err(cerr).Str("interface", c.nicName).Msg("macvtap: undoing a failed claim")
			}
			h.Close()
		}
	}()
	nic, err := h.LinkByName(opt.Interface)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrNoInterface, opt.Interface, err)
	}
	c.nicIdx, c.nicMAC = nic.Attrs().Index, nic.Attrs().HardwareAddr
	if c.repaired, err = c.repair(); err != nil {
		return nil, err
	}
	if c.repaired != (Repair{}) {
		c.log.Warn().Str("interface", c.nicName).Bool("macvtap", c.repaired.Macvtap).Bool("tap", c.repaired.TAP).
			Int("routes_moved_back", c.repaired.Routes).Msg("macvtap: repaired the leftovers of a crashed run")
	}
	if err := c.makeMacvtap(); err != nil {
		return nil, err
	}
	fds, how, err := openCharDev(c.mvName, c.mvIdx, opt.Queues)
	if err != nil {
		return nil, err
	}
	c.devPath = how
	if c.nic, err = newPort(c.nicName, kindNIC, fds); err != nil {
		closeAll(fds)
		return nil, err
	}
	if err := h.LinkSetUp(mvLink(c.mvIdx)); err != nil {
		return nil, fmt.Errorf("macvtap: set %s up: %w", c.mvName, err)
	}
	if !opt.NoKernel {
		if err := c.makeTAP(nic); err != nil {
			return nil, err
		}
		if err := c.moveRoutes(); err != nil {
			return nil, err
		}
	}
	ev := c.log.Info().Str("interface", c.nicName).Str("macvtap", c.mvName).Int("queues", opt.Queues).
		Str("char_device", c.devPath).Bool("kernel_path", !opt.NoKernel)
	if !opt.NoKernel {
		ev = ev.Str("tap", c.tapName).Int("routes_moved", len(c.moved))
	}
	ev.Msg("macvtap: NIC claimed")
	return c, nil
}

// NIC returns the NIC's port (kind PortNIC): frames read from and written
// to the macvtap.
func (c *Claim) NIC() *Port { return c.nic }

// Kernel returns the kernel's port (kind PortKernel): frames read from and
// written to the TAP. It is nil with Options.NoKernel.
func (c *Claim) Kernel() *Port { return c.kernel }

// MAC returns the NIC's MAC, which the TAP has too: with a kernel path, it
// is the MAC of a local port (the kernel's), not of the wire.
func (c *Claim) MAC() net.HardwareAddr { return c.nicMAC }

// Names returns the names of the macvtap and of the TAP.
func (c *Claim) Names() (macvtap, tap string) { return c.mvName, c.tapName }

// Repaired says what Open repaired of a crashed run.
func (c *Claim) Repaired() Repair { return c.repaired }

// MovedRoutes returns how many routes moved from the NIC to the TAP.
func (c *Claim) MovedRoutes() int { return len(c.moved) }

// CharDevice says how the macvtap's character device was opened: its path
// (/dev/tapN) or "private node" (see doc.go).
func (c *Claim) CharDevice() string { return c.devPath }

// Close gives the NIC back: the NIC's routes return as they were, both
// ports close, the TAP and the macvtap are deleted. It goes on after an
// error and returns them all. Close is idempotent and may be called from
// any goroutine.
func (c *Claim) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.teardown()
		c.h.Close()
		c.log.Info().Str("interface", c.nicName).Err(c.closeErr).Msg("macvtap: NIC given back")
	})
	return c.closeErr
}

// teardown undoes whatever of Open was done, in reverse: routes back to
// the NIC first (while the TAP still holds them, so that a crash here
// leaves them on the TAP, where the next start finds them), then the
// ports, the TAP and the macvtap.
func (c *Claim) teardown() error {
	var errs []error
	if len(c.moved) > 0 {
		if err := restoreRoutes(c.h, c.moved); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []*Port{c.kernel, c.nic} {
		if p != nil {
			if err := p.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.tapIdx != 0 {
		if err := delLink(c.h, c.tapIdx); err != nil {
			errs = append(errs, fmt.Errorf("macvtap: delete %s: %w", c.tapName, err))
		}
		c.tapIdx = 0
	}
	if c.mvIdx != 0 {
		if err := delLink(c.h, c.mvIdx); err != nil {
			errs = append(errs, fmt.Errorf("macvtap: delete %s: %w", c.mvName, err))
		}
		c.mvIdx = 0
	}
	c.moved = nil
	return errors.Join(errs...)
}

// Leave closes the ports and changes nothing else: the macvtap and the
// TAP stay, with the NIC's routes on the TAP, as after a crash. With
// nobody reading the macvtap's queues, the kernel is cut off from the NIC
// (fail closed); the next Open repairs and sets up afresh. Close after
// Leave does nothing.
func (c *Claim) Leave() {
	c.abandon()
	c.log.Info().Str("interface", c.nicName).Msg("macvtap: left the macvtap and the TAP in place (the kernel is cut off from the NIC)")
}

// abandon closes the ports and the netlink socket and changes nothing
// else: what a crash leaves behind (tests use it).
func (c *Claim) abandon() {
	c.closeOnce.Do(func() {
		for _, p := range []*Port{c.kernel, c.nic} {
			if p != nil {
				_ = p.Close()
			}
		}
		c.h.Close()
		c.closeErr = errors.New("macvtap: claim abandoned")
	})
}

func delLink(h *netlink.Handle, idx int) error {
	l, err := h.LinkByIndex(idx)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return err
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
