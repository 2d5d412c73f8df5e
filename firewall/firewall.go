package firewall

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// DefaultPinRoot is where a Firewall pins its maps and links: one
// directory per interface below it.
const DefaultPinRoot = "/sys/fs/bpf/usnetd"

// Attach modes: Options.XDPMode takes the XDP ones, and Mode reports
// which one is in use.
const (
	ModeNative  = "native"  // XDP in the driver (XDP_FLAGS_DRV_MODE)
	ModeGeneric = "generic" // XDP in the core network stack, for any driver (XDP_FLAGS_SKB_MODE)
	ModeTCX     = "tcx"     // HookTC: a TCX ingress link
)

// Hook is where the firewall judges the frames that arrive on the
// interface; the decision is the same in both (bpf/classify.h), what it
// does with the frames that are not the kernel's differs.
type Hook string

const (
	// HookXDP (the default) is the AF_XDP backend's: an XDP program passes
	// the kernel's frames (XDP_PASS) and redirects the rest into the
	// XSKMAP, so that they reach usnetd and never the kernel.
	HookXDP Hook = "xdp"
	// HookTC is the AF_PACKET backend's: a TCX ingress program lets the
	// kernel's frames go on (TCX_NEXT) and drops the rest (TC_ACT_SHOT).
	// usnetd reads every frame through AF_PACKET, whose taps run before tc
	// ingress, so it sees the kernel's frames too; the XSKMAP is unused.
	HookTC Hook = "tc"
)

// Default sizes and times.
const (
	DefaultMaxRules   = 16384
	DefaultMaxLearned = 65536
	// DefaultMaxEndpointRules bounds the endpoints' rules the firewall
	// knows (AddEndpointPort).
	DefaultMaxEndpointRules = 65536
	// DefaultMinIdle is how long ExpireLearned keeps a learned entry
	// after the kernel's traffic last refreshed it, socket or not.
	DefaultMinIdle = 30 * time.Second
)

// Options configure Attach.
type Options struct {
	// Interface names the interface; Ifindex may be given instead. Both
	// are resolved in the calling thread's network namespace.
	Interface string
	Ifindex   int

	// PinRoot is the directory under which PinRoot/INTERFACE/ holds the
	// pinned maps and links; "" means DefaultPinRoot. When PinRoot lies
	// under /sys/fs/bpf and that is not a bpf filesystem (as inside
	// `ip netns exec`), Attach mounts one there.
	PinRoot string

	// Hook is HookXDP (also "") or HookTC. A restart with another hook
	// than the earlier instance's attaches the new hook first and then
	// removes the earlier one's link, so the kernel is never unfiltered.
	Hook Hook

	// XDPMode is "" (native, falling back to generic when the driver
	// refuses), ModeNative or ModeGeneric; only with HookXDP. With "", a
	// restart keeps the mode of the earlier instance's link. An explicit
	// mode that differs from it makes Attach detach that link before
	// attaching anew: for that moment the kernel is unfiltered.
	XDPMode string

	// MultiBuffer loads the XDP program as multi-buffer aware
	// (BPF_F_XDP_HAS_FRAGS), for an MTU whose frames do not fit one
	// buffer: a veth (and most drivers) refuse any other XDP program
	// above an MTU of about 3,500, and AF_XDP multi-buffer sockets need
	// it. Only then: in generic mode such a program makes the kernel copy
	// every frame (the kernel's own traffic included) into page-pool
	// pages, which costs the kernel's TCP about half its rate on a veth
	// (BENCHMARKS.md). Only with HookXDP.
	MultiBuffer bool

	// NoHostRings gives the kernel nothing from the NIC (NO_HOST_RINGS):
	// every frame goes to the AF_XDP sockets (HookXDP) or is dropped
	// (HookTC), ARP included. The egress program is attached all the
	// same: it keeps the kernel from sending from the endpoints' flows.
	NoHostRings bool

	// Queues is the number of entries of the XSKMAP (one per RX queue);
	// 0 means the interface's number of RX queues. Frames arriving on a
	// queue at or above it are dropped. Unused with HookTC.
	Queues int

	// MaxRules and MaxLearned size the registered and learned maps; 0
	// means DefaultMaxRules and DefaultMaxLearned. MaxEndpointRules sizes
	// the endpoints' rules (AddEndpointPort); 0 means
	// DefaultMaxEndpointRules.
	MaxRules, MaxLearned, MaxEndpointRules int

	// Allow is put into the registered map before the programs go live,
	// so that a restart never closes, even for a moment, the ports the
	// operator opened (DEBUG_PORTS). Registered entries of an earlier
	// instance are not kept: the Go rule table is the truth.
	Allow []Allowed

	// MinIdle: ExpireLearned keeps learned entries that the kernel's
	// traffic refreshed less than MinIdle ago, whatever isOpen says. 0
	// means DefaultMinIdle; a negative value means no such grace.
	MinIdle time.Duration

	// Log receives what the Firewall does: which interface, which XDP
	// mode, what it found from an earlier instance. The zero Logger
	// discards.
	Log zerolog.Logger
}

// Allowed is a registered kernel-allow entry for Options.Allow.
type Allowed struct {
	Key    l4.Key
	Sticky bool
}

// Pin names inside an interface's pin directory.
const (
	pinXDPLink       = "xdp_link"
	pinTCXLink       = "tcx_egress_link"
	pinTCIngressLink = "tcx_ingress_link"
)

// A Firewall is the kernel-side firewall of one interface: the ingress
// classifier (XDP or TCX ingress, see Hook), the TCX egress learner and
// their maps, pinned under PinRoot/INTERFACE/.
//
// Its methods are safe for concurrent use. Map updates take effect for
// the next frame; there is no transaction across several calls.
type Firewall struct {
	log     zerolog.Logger
	ifname  string
	ifindex int
	root    string
	dir     string
	hook    Hook
	mode    string
	minIdle time.Duration
	xdpOpt  string // Options.XDPMode, for Reattach
	baseLog zerolog.Logger

	mu     sync.RWMutex
	closed bool
	// epMu serialises the endpoint-rule updates (under mu's read lock);
	// epPorts holds the values of the endpoint_ports map: the endpoint
	// rules per (local, proto, lport) and per (local, proto).
	epMu    sync.Mutex
	epPorts map[bpfEpPortKey]uint32
	objs    bpfObjects
	in      link.Link // the ingress hook's: XDP, or TCX ingress
	tcx     link.Link // the egress program's (also with NoHostRings: it keeps the kernel off the endpoints' flows)
	host    link.Link // the host path's TCX ingress on usnetd's TAP (AttachHostPort); not pinned
	lock    *os.File  // flock on dir: one live Firewall per directory
}

// Attach loads the firewall's eBPF objects and attaches them to one
// interface: the classifier through a bpf_link, as an XDP program (HookXDP:
// native mode, falling back to generic) or a TCX ingress program (HookTC,
// first in the interface's TCX ingress chain), and the egress learner
// through TCX. Maps and links are pinned under PinRoot/INTERFACE/, so that
// they outlive the process.
//
// Network namespace: the interface is looked up, and the programs are
// attached, in the network namespace of the calling thread. To attach in
// another one, lock the goroutine to its thread (runtime.LockOSThread),
// setns(2) the thread there and call Attach from it; the pins land in the
// caller's mount namespace, whatever the network namespace. A pin
// directory is named by the interface only, so firewalls in two network
// namespaces on same-named interfaces need different PinRoots.
//
// Restart: if PinRoot/INTERFACE/ holds the links of an earlier instance
// that died without Close, Attach swaps the new programs into those links
// (link.Update, atomic for the traffic) instead of attaching a second
// copy, and keeps the earlier instance's learned entries when the map is
// compatible, so the kernel's established connections survive the
// restart. A directory held by a live Firewall gives ErrInUse.
//
// The steps: checkOptions, newFirewall, lockPinDir, load, attachHooks,
// pinAll. When one fails, Attach undoes the earlier ones (undoAttach) and
// returns the error without logging it: the caller, who handles it, logs
// it.
func Attach(opts Options) (_ *Firewall, err error) {
	attrs, err := checkOptions(&opts)
	if err != nil {
		return nil, err
	}
	fw := newFirewall(opts, attrs)
	if err := fw.lockPinDir(); err != nil {
		return nil, err
	}
	var newLinks []link.Link // attached here and not pinned yet: undone on failure
	defer func() {
		if err != nil {
			fw.undoAttach(newLinks)
		}
	}()
	spec, err := fw.load(opts, attrs)
	if err != nil {
		return nil, err
	}
	if err := fw.attachHooks(opts, &newLinks); err != nil {
		return nil, err
	}
	if err := fw.pinAll(newLinks); err != nil {
		return nil, err
	}
	ev := fw.log.Info().Str("hook", string(fw.hook)).Str("mode", fw.mode).Bool("no_host_rings", opts.NoHostRings).
		Str("pins", fw.dir)
	if fw.hook == HookXDP {
		ev = ev.Int("queues", int(spec.Maps["xsks"].MaxEntries))
	}
	ev.Msg("firewall: attached")
	return fw, nil
}

// checkOptions validates opts, fills in the default hook and returns the
// interface's attributes.
func checkOptions(opts *Options) (*netlink.LinkAttrs, error) {
	lk, err := findLink(*opts)
	if err != nil {
		return nil, err
	}
	attrs := lk.Attrs()
	if attrs.EncapType != "ether" {
		return nil, fmt.Errorf("%w: %s is %q, not an Ethernet interface", ErrInterface, attrs.Name, attrs.EncapType)
	}
	switch opts.Hook {
	case "":
		opts.Hook = HookXDP
	case HookXDP, HookTC:
	default:
		return nil, fmt.Errorf("firewall: hook %q: want %q or %q", opts.Hook, HookXDP, HookTC)
	}
	switch opts.XDPMode {
	case "", ModeNative, ModeGeneric:
	default:
		return nil, fmt.Errorf("firewall: XDP mode %q: want %q or %q", opts.XDPMode, ModeNative, ModeGeneric)
	}
	if opts.Hook == HookTC && opts.XDPMode != "" {
		return nil, fmt.Errorf("firewall: XDP mode %q with hook %q", opts.XDPMode, opts.Hook)
	}
	if opts.Queues < 0 || opts.MaxRules < 0 || opts.MaxLearned < 0 || opts.MaxEndpointRules < 0 {
		return nil, fmt.Errorf("firewall: negative size in options")
	}
	for _, a := range opts.Allow {
		if err := checkKey(a.Key); err != nil {
			return nil, err
		}
	}
	return attrs, nil
}

// newFirewall is the Firewall of checked opts on the interface attrs,
// nothing loaded yet.
func newFirewall(opts Options, attrs *netlink.LinkAttrs) *Firewall {
	root := opts.PinRoot
	if root == "" {
		root = DefaultPinRoot
	}
	root = filepath.Clean(root)
	fw := &Firewall{
		log:     opts.Log.With().Str("interface", attrs.Name).Int("ifindex", attrs.Index).Logger(),
		ifname:  attrs.Name,
		ifindex: attrs.Index,
		root:    root,
		dir:     filepath.Join(root, attrs.Name),
		hook:    opts.Hook,
		minIdle: opts.MinIdle,
		epPorts: map[bpfEpPortKey]uint32{},
		xdpOpt:  opts.XDPMode,
		baseLog: opts.Log,
	}
	if fw.minIdle == 0 {
		fw.minIdle = DefaultMinIdle
	}
	return fw
}

// lockPinDir mounts the bpffs where needed and takes the pin directory's
// lock: one live Firewall per directory.
func (fw *Firewall) lockPinDir() error {
	if err := ensureBPFFS(fw.root, fw.log); err != nil {
		return err
	}
	var err error
	fw.lock, err = lockDir(fw.dir)
	return err
}

// undoAttach undoes a failed Attach after lockPinDir: it closes the links
// attached and not pinned yet and the objects, removes the directories if
// empty (an earlier instance's pins stay) and drops the lock. The caller
// reports the error; it is not logged here.
func (fw *Firewall) undoAttach(newLinks []link.Link) {
	for _, l := range newLinks {
		_ = l.Close()
	}
	fw.objs.Close()
	_ = os.Remove(fw.dir)
	_ = os.Remove(fw.root)
	fw.lock.Close()
}

// load loads the eBPF objects, sized and configured for opts, keeping the
// learned map of an earlier instance where it fits, and fills the
// registered map with opts.Allow before any program is attached.
func (fw *Firewall) load(opts Options, attrs *netlink.LinkAttrs) (*ebpf.CollectionSpec, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLoad, err)
	}
	if err := configure(spec, opts, attrs); err != nil {
		return nil, err
	}
	replace := map[string]*ebpf.Map{}
	if m := fw.reusableLearned(spec.Maps["kernel_learned"]); m != nil {
		replace["kernel_learned"] = m
		defer m.Close() // the collection holds its own reference
	}
	if err := spec.LoadAndAssign(&fw.objs, &ebpf.CollectionOptions{MapReplacements: replace}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLoad, err)
	}
	if err := fw.setNICMAC(attrs.HardwareAddr); err != nil {
		return nil, err
	}
	now := monotonicNow()
	for _, a := range opts.Allow {
		if err := fw.objs.KernelRules.Put(keyOf(a.Key), valueOf(a.Sticky, false, now)); err != nil {
			return nil, fmt.Errorf("firewall: allow %v: %w", a.Key, err)
		}
	}
	return spec, nil
}

// attachHooks attaches (or swaps into an earlier instance's links) the
// classifier on the chosen hook, removes the other hook's link of an
// earlier instance, and attaches the egress program. Links it attaches
// afresh are added to newLinks, also when it fails.
func (fw *Firewall) attachHooks(opts Options, newLinks *[]link.Link) error {
	var (
		fresh bool
		err   error
	)
	if opts.Hook == HookTC {
		fw.in, fresh, err = fw.updateOrAttach(pinTCIngressLink, fw.objs.UsnetdTcIngress, "", func() (link.Link, error) {
			l, err := link.AttachTCX(link.TCXOptions{
				Interface: fw.ifindex,
				Program:   fw.objs.UsnetdTcIngress,
				Attach:    ebpf.AttachTCXIngress,
				// First: a program before it that ended the chain with
				// TC_ACT_OK would let anything through.
				Anchor: link.Head(),
			})
			if err != nil {
				return nil, fmt.Errorf("%w: TCX ingress to %s: %w", ErrAttach, fw.ifname, err)
			}
			return l, nil
		})
		if err != nil {
			return err
		}
		fw.mode = ModeTCX
	} else {
		fw.in, fresh, err = fw.updateOrAttach(pinXDPLink, fw.objs.UsnetdXdp, opts.XDPMode, func() (link.Link, error) {
			return fw.attachXDP(opts.XDPMode)
		})
		if err != nil {
			return err
		}
	}
	if fresh {
		*newLinks = append(*newLinks, fw.in)
	}
	if opts.Hook == HookTC {
		fw.dropPinnedLink(pinXDPLink)
	} else {
		fw.dropPinnedLink(pinTCIngressLink)
		if fw.mode, err = xdpMode(fw.ifindex); err != nil {
			return err
		}
	}

	// The egress program: also with NoHostRings, where it learns in vain
	// but keeps the kernel from sending from the endpoints' flows.
	fw.tcx, fresh, err = fw.updateOrAttach(pinTCXLink, fw.objs.UsnetdLearn, "", func() (link.Link, error) {
		return link.AttachTCX(link.TCXOptions{
			Interface: fw.ifindex,
			Program:   fw.objs.UsnetdLearn,
			Attach:    ebpf.AttachTCXEgress,
		})
	})
	if err != nil {
		return err
	}
	if fresh {
		*newLinks = append(*newLinks, fw.tcx)
	}
	return nil
}

// pinAll pins the maps, replacing those of an earlier instance, and then
// the links attached afresh.
func (fw *Firewall) pinAll(newLinks []link.Link) error {
	for name, m := range fw.maps() {
		if err := pinReplacing(m, filepath.Join(fw.dir, name)); err != nil {
			return err
		}
	}
	for _, l := range newLinks {
		name := fw.inPin()
		if l == fw.tcx {
			name = pinTCXLink
		}
		if err := pinReplacing(l, filepath.Join(fw.dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// inPin is the pin name of the ingress hook's link.
func (fw *Firewall) inPin() string {
	if fw.hook == HookTC {
		return pinTCIngressLink
	}
	return pinXDPLink
}

func findLink(opts Options) (netlink.Link, error) {
	var (
		lk  netlink.Link
		err error
	)
	switch {
	case opts.Interface != "":
		lk, err = netlink.LinkByName(opts.Interface)
	case opts.Ifindex > 0:
		lk, err = netlink.LinkByIndex(opts.Ifindex)
	default:
		return nil, fmt.Errorf("%w: no interface given", ErrInterface)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInterface, ifaceName(opts), err)
	}
	if opts.Interface != "" && opts.Ifindex > 0 && lk.Attrs().Index != opts.Ifindex {
		return nil, fmt.Errorf("%w: %s has ifindex %d, not %d", ErrInterface, opts.Interface, lk.Attrs().Index, opts.Ifindex)
	}
	return lk, nil
}

func ifaceName(opts Options) string {
	if opts.Interface != "" {
		return opts.Interface
	}
	return fmt.Sprintf("ifindex %d", opts.Ifindex)
}

// configure sets the load-time constants and map sizes.
func configure(spec *ebpf.CollectionSpec, opts Options, attrs *netlink.LinkAttrs) error {
	if p := spec.Programs["usnetd_xdp"]; p != nil && !opts.MultiBuffer {
		p.Flags &^= unix.BPF_F_XDP_HAS_FRAGS // compiled as xdp.frags
	}
	if opts.NoHostRings {
		if err := spec.Variables["cfg_no_host_rings"].Set(uint8(1)); err != nil {
			return fmt.Errorf("%w: %w", ErrLoad, err)
		}
	}
	q := opts.Queues
	if q == 0 {
		q = max(attrs.NumRxQueues, 1)
	}
	spec.Maps["xsks"].MaxEntries = uint32(q)
	if opts.MaxRules > 0 {
		spec.Maps["kernel_rules"].MaxEntries = uint32(opts.MaxRules)
	}
	if opts.MaxLearned > 0 {
		spec.Maps["kernel_learned"].MaxEntries = uint32(opts.MaxLearned)
	}
	if opts.MaxEndpointRules > 0 {
		spec.Maps["endpoint_rules"].MaxEntries = uint32(opts.MaxEndpointRules)
		spec.Maps["endpoint_ports"].MaxEntries = 2 * uint32(opts.MaxEndpointRules)
	}
	return nil
}

// reusableLearned returns the learned map an earlier instance pinned, if
// it fits spec; otherwise it removes the pin and returns nil.
func (fw *Firewall) reusableLearned(spec *ebpf.MapSpec) *ebpf.Map {
	path := filepath.Join(fw.dir, "kernel_learned")
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		if err = spec.Compatible(m); err == nil {
			n := 0
			var k bpfFwKey
			var v bpfFwValue
			for it := m.Iterate(); it.Next(&k, &v); {
				n++
			}
			fw.log.Info().Int("entries", n).Msg("firewall: keeping the learned entries of an earlier instance")
			return m
		}
		m.Close()
	}
	fw.log.Warn().Err(err).Msg("firewall: discarding the learned map of an earlier instance")
	_ = os.Remove(path)
	return nil
}

// updateOrAttach puts prog into the link pinned at name by an earlier
// instance, if that link is still attached to this interface (and, when
// mode is given, in that XDP mode); otherwise it removes that link and
// attaches a new one with attach. fresh reports a new link, not yet pinned.
func (fw *Firewall) updateOrAttach(name string, prog *ebpf.Program, mode string, attach func() (link.Link, error)) (l link.Link, fresh bool, err error) {
	path := filepath.Join(fw.dir, name)
	old, err := link.LoadPinnedLink(path, nil)
	switch {
	case err == nil:
		why := fw.reusable(old, prog, mode)
		if why == "" {
			if err := old.Update(prog); err == nil {
				fw.log.Info().Str("link", name).Msg("firewall: replaced the program of an earlier instance's link")
				return old, false, nil
			} else {
				why = "update: " + err.Error()
			}
		}
		fw.log.Warn().Str("link", name).Str("reason", why).Msg("firewall: removing an earlier instance's link")
		_ = old.Unpin()
		_ = old.Detach()
		_ = old.Close()
	case errors.Is(err, os.ErrNotExist):
	default:
		fw.log.Warn().Str("link", name).Err(err).Msg("firewall: removing an unusable pin")
		_ = os.Remove(path)
	}
	l, err = attach()
	if err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// reusable says why old cannot take prog, or "" when it can.
func (fw *Firewall) reusable(old link.Link, prog *ebpf.Program, mode string) string {
	info, err := old.Info()
	if err != nil {
		return "link info: " + err.Error()
	}
	switch prog.Type() {
	case ebpf.XDP:
		x := info.XDP()
		if x == nil {
			return fmt.Sprintf("not an XDP link (type %v)", info.Type)
		}
		if int(x.Ifindex) != fw.ifindex {
			return fmt.Sprintf("attached to ifindex %d (0: detached)", x.Ifindex)
		}
		if mode != "" {
			if m, err := xdpMode(fw.ifindex); err != nil || m != mode {
				return fmt.Sprintf("XDP mode %q, %q wanted", m, mode)
			}
		}
	case ebpf.SchedCLS:
		x := info.TCX()
		if x == nil {
			return fmt.Sprintf("not a TCX link (type %v)", info.Type)
		}
		want := ebpf.AttachTCXEgress
		if prog == fw.objs.UsnetdTcIngress {
			want = ebpf.AttachTCXIngress
		}
		if int(x.Ifindex) != fw.ifindex || ebpf.AttachType(x.AttachType) != want {
			return fmt.Sprintf("attached to ifindex %d (0: detached) as %v, %v wanted", x.Ifindex, ebpf.AttachType(x.AttachType), want)
		}
	}
	return ""
}

// dropPinnedLink removes (and so detaches) a link an earlier instance pinned.
func (fw *Firewall) dropPinnedLink(name string) {
	path := filepath.Join(fw.dir, name)
	old, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	fw.log.Info().Str("link", name).Msg("firewall: removing an earlier instance's link")
	if err == nil {
		_ = old.Unpin()
		_ = old.Detach()
		_ = old.Close()
	}
	_ = os.Remove(path)
}

func (fw *Firewall) attachXDP(mode string) (link.Link, error) {
	opts := link.XDPOptions{Program: fw.objs.UsnetdXdp, Interface: fw.ifindex, Flags: link.XDPDriverMode}
	if mode == ModeGeneric {
		opts.Flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(opts)
	if err != nil && mode == "" {
		fw.log.Info().Err(err).Msg("firewall: native XDP refused, falling back to generic mode")
		nerr := err
		opts.Flags = link.XDPGenericMode
		if l, err = link.AttachXDP(opts); err != nil {
			return nil, fmt.Errorf("%w: to %s: native mode: %w; generic mode: %w", ErrAttachXDP, fw.ifname, nerr, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: to %s: %w", ErrAttachXDP, fw.ifname, err)
	}
	return l, nil
}

// xdpMode asks the kernel which mode the interface's XDP program runs in.
func xdpMode(ifindex int) (string, error) {
	lk, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return "", fmt.Errorf("%w: ifindex %d: %w", ErrInterface, ifindex, err)
	}
	x := lk.Attrs().Xdp
	if x == nil || !x.Attached {
		return "", fmt.Errorf("%w: no XDP program on %s", ErrAttach, lk.Attrs().Name)
	}
	switch x.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return ModeNative, nil
	case nl.XDP_ATTACHED_SKB:
		return ModeGeneric, nil
	case nl.XDP_ATTACHED_HW:
		return "offload", nil
	}
	return "", fmt.Errorf("%w: %s has XDP programs in several modes (attach mode %d)", ErrAttach, lk.Attrs().Name, x.AttachMode)
}

type pinner interface {
	Pin(string) error
}

// pinReplacing pins obj at path, removing what an earlier instance left
// there.
func pinReplacing(obj pinner, path string) error {
	if m, ok := obj.(*ebpf.Map); ok && m.IsPinned() {
		// Reused from an earlier instance: already there.
		if _, err := os.Stat(path); err == nil {
			return nil
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("firewall: replacing pin: %w", err)
	}
	if err := obj.Pin(path); err != nil {
		return fmt.Errorf("firewall: pin %s: %w", path, err)
	}
	return nil
}

// setNICMAC tells the classifier the kernel's own MAC (the NIC's): DHCP
// answers for other MACs go to userspace. A MAC that is not 6 bytes
// leaves it unknown (every DHCP answer that no rule claims is the
// kernel's).
func (fw *Firewall) setNICMAC(mac net.HardwareAddr) error {
	var v bpfNicMac
	if len(mac) == 6 {
		copy(v.Mac[:], mac)
		v.Set = 1
	}
	if err := fw.objs.NicMac.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("firewall: the NIC's MAC: %w", err)
	}
	return nil
}

func (fw *Firewall) maps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"kernel_rules":   fw.objs.KernelRules,
		"kernel_learned": fw.objs.KernelLearned,
		"frag_verdicts":  fw.objs.FragVerdicts,
		"endpoint_rules": fw.objs.EndpointRules,
		"endpoint_ports": fw.objs.EndpointPorts,
		"xsks":           fw.objs.Xsks,
		"counters":       fw.objs.Counters,
	}
}

// Close detaches both programs, unpins and closes every map and link, and
// removes the interface's pin directory (and PinRoot, if that is then
// empty). The kernel then sees the interface's traffic unfiltered. Close
// is idempotent. Release is the alternative that leaves the firewall
// attached.
func (fw *Firewall) Close() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return nil
	}
	fw.closed = true
	var errs []error
	if err := fw.detachHost(); err != nil {
		errs = append(errs, err)
	}
	for _, l := range []link.Link{fw.tcx, fw.in} {
		if l == nil {
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, err)
		}
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range fw.maps() {
		if err := m.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := fw.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(fw.dir); err != nil {
		errs = append(errs, err)
	}
	if err := fw.lock.Close(); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(fw.root) // fails, as it should, while other interfaces live there
	err := errors.Join(errs...)
	if err != nil {
		err = fmt.Errorf("firewall: close %s: %w", fw.ifname, err)
	}
	fw.log.Info().Err(err).Msg("firewall: detached")
	return err
}

// Release closes the process's references to the firewall's programs,
// maps and links and releases the pin directory's lock, but unpins and
// detaches nothing: the programs stay attached through their pinned
// links, with the maps as they are, and the kernel stays filtered while no
// process holds the firewall (fail closed). The next Attach on the
// interface takes the pins over (see Attach: Restart). Frames that the
// classifier gives to usnetd find no AF_XDP socket in the XSKMAP (HookXDP)
// or are dropped (HookTC): only the kernel's traffic flows.
//
// To remove such a firewall without a usnetd, delete the pin directory
// (PinDir): with the last reference gone, the kernel detaches the links.
// Release and Close are idempotent, and after either the other does
// nothing.
func (fw *Firewall) Release() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return nil
	}
	fw.closed = true
	var errs []error
	// The host path goes: its TAP dies with usnetd, and the kernel's
	// frames to the endpoints' MACs go to the wire again.
	if err := fw.detachHost(); err != nil {
		errs = append(errs, err)
	}
	for _, l := range []link.Link{fw.tcx, fw.in} {
		if l != nil {
			if err := l.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := fw.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := fw.lock.Close(); err != nil {
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	if err != nil {
		err = fmt.Errorf("firewall: release %s: %w", fw.ifname, err)
	}
	fw.log.Info().Err(err).Str("pins", fw.dir).Msg("firewall: released, left attached and pinned")
	return err
}

// Reattach moves the firewall onto the interface that now has its name: a
// NIC deleted and made again under the same name (a driver reload, a
// container's veth that restarts) comes back without programs, and with
// another ifindex. The loaded programs and their maps are attached to it
// (XDP or TCX ingress, and the egress learner) in place of the links of
// the old interface, which went with it, and the new links are pinned in
// their place. Nothing is loaded again, so no verifier runs: it takes the
// time of a few system calls, whereas Attach takes the verifier's (seconds
// on a busy machine). The maps keep their entries: the caller puts the
// kernel's rules for the new interface's addresses in (AllowKernel,
// RevokeKernel); learned entries of the old interface's connections age
// out (ExpireLearned).
//
// The XSKMAP keeps its size: a new interface with more RX queues than it
// has entries gives ErrInterface (Close, then Attach anew). Reattach on an
// interface that still has the firewall's links does nothing. On an
// error, the Firewall is left without links on the new interface;
// Reattach may be tried again, or Close called.
// An error is returned, not logged: the caller logs it.
func (fw *Firewall) Reattach() (err error) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return ErrClosed
	}
	lk, err := netlink.LinkByName(fw.ifname)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInterface, fw.ifname, err)
	}
	attrs := lk.Attrs()
	if attrs.Index == fw.ifindex && fw.in != nil {
		return nil
	}
	if attrs.EncapType != "ether" {
		return fmt.Errorf("%w: %s is %q, not an Ethernet interface", ErrInterface, attrs.Name, attrs.EncapType)
	}
	if q := max(attrs.NumRxQueues, 1); fw.hook == HookXDP && q > int(fw.objs.Xsks.MaxEntries()) {
		return fmt.Errorf("%w: the new %s has %d RX queues, the firewall's XSKMAP %d", ErrInterface, fw.ifname, q, fw.objs.Xsks.MaxEntries())
	}
	// The old links: their interface is gone, and with it the attachment.
	for _, l := range []link.Link{fw.tcx, fw.in} {
		if l != nil {
			_ = l.Unpin()
			_ = l.Close()
		}
	}
	fw.in, fw.tcx = nil, nil
	fw.ifindex = attrs.Index
	if err := fw.setNICMAC(attrs.HardwareAddr); err != nil {
		return err
	}
	fw.log = fw.baseLog.With().Str("interface", attrs.Name).Int("ifindex", attrs.Index).Logger()

	var in, tcx link.Link
	defer func() {
		if err != nil {
			for _, l := range []link.Link{tcx, in} {
				if l != nil {
					_ = l.Unpin()
					_ = l.Close()
				}
			}
		}
	}()
	if fw.hook == HookTC {
		in, err = link.AttachTCX(link.TCXOptions{Interface: fw.ifindex, Program: fw.objs.UsnetdTcIngress,
			Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
		if err != nil {
			return fmt.Errorf("%w: TCX ingress to %s: %w", ErrAttach, fw.ifname, err)
		}
	} else if in, err = fw.attachXDP(fw.xdpOpt); err != nil {
		return err
	}
	if tcx, err = link.AttachTCX(link.TCXOptions{Interface: fw.ifindex, Program: fw.objs.UsnetdLearn,
		Attach: ebpf.AttachTCXEgress}); err != nil {
		return fmt.Errorf("%w: TCX egress to %s: %w", ErrAttach, fw.ifname, err)
	}
	if err = pinReplacing(in, filepath.Join(fw.dir, fw.inPin())); err != nil {
		return err
	}
	if tcx != nil {
		if err = pinReplacing(tcx, filepath.Join(fw.dir, pinTCXLink)); err != nil {
			return err
		}
	}
	mode := ModeTCX
	if fw.hook == HookXDP {
		if mode, err = xdpMode(fw.ifindex); err != nil {
			return err
		}
	}
	fw.in, fw.tcx, fw.mode = in, tcx, mode
	fw.log.Info().Str("hook", string(fw.hook)).Str("mode", fw.mode).Msg("firewall: attached to the re-created interface")
	return nil
}

// Interface returns the interface's name, Ifindex its index.
func (fw *Firewall) Interface() string { return fw.ifname }

// Ifindex returns the interface's index in its network namespace.
func (fw *Firewall) Ifindex() int { return fw.ifindex }

// PinDir returns the directory holding the pins: PinRoot/INTERFACE.
func (fw *Firewall) PinDir() string { return fw.dir }

// Mode returns how the classifier is attached: ModeNative or ModeGeneric
// (HookXDP), or ModeTCX (HookTC).
func (fw *Firewall) Mode() string { return fw.mode }

// Hook returns the hook the classifier is attached to.
func (fw *Firewall) Hook() Hook { return fw.hook }

// XSKMap returns the XSKMAP: the AF_XDP backend puts the fd of the socket
// bound to RX queue q at key uint32(q). A frame that arrives on a queue
// without a socket is dropped (counted as dropped_no_xsk), never given to
// the kernel. The map belongs to the Firewall: do not close it. With
// HookTC nothing reads it.
func (fw *Firewall) XSKMap() *ebpf.Map { return fw.objs.Xsks }

// rlock takes the read lock unless fw is closed.
func (fw *Firewall) rlock() error {
	fw.mu.RLock()
	if fw.closed {
		fw.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

func valueOf(sticky, learned bool, now uint64) bpfFwValue {
	v := bpfFwValue{LastSeenNs: now}
	if sticky {
		v.Flags |= flagSticky
	}
	if learned {
		v.Flags |= flagLearned
	}
	return v
}

// AllowKernel lets the kernel see the traffic that k matches, with the
// three-step lookup of l4.Table: an exact 5-tuple, (local, proto, lport,
// remote), a listening (local, proto, lport), or for protocols without
// ports (local, proto, remote) and (local, proto). The entry is registered:
// ExpireLearned never removes it. sticky marks DEBUG_PORTS entries (it is
// recorded and reported by KernelEntries). Allowing an allowed key again
// updates its stickiness. A full map gives an error wrapping unix.E2BIG.
func (fw *Firewall) AllowKernel(k l4.Key, sticky bool) error {
	if err := checkKey(k); err != nil {
		return err
	}
	if err := fw.rlock(); err != nil {
		return err
	}
	defer fw.mu.RUnlock()
	if err := fw.objs.KernelRules.Put(keyOf(k), valueOf(sticky, false, monotonicNow())); err != nil {
		return fmt.Errorf("firewall: allow %v on %s: %w", k, fw.ifname, err)
	}
	fw.log.Debug().Stringer("key", k).Bool("sticky", sticky).Msg("firewall: kernel allowed")
	return nil
}

// RevokeKernel removes the entry with exactly the key k, registered or
// learned. Traffic of the kernel's connections that the entry let in is
// dropped from the next frame on. An absent key gives an error wrapping
// ebpf.ErrKeyNotExist.
func (fw *Firewall) RevokeKernel(k l4.Key) error {
	if err := fw.rlock(); err != nil {
		return err
	}
	defer fw.mu.RUnlock()
	bk := keyOf(k)
	errR := fw.objs.KernelRules.Delete(bk)
	errL := fw.objs.KernelLearned.Delete(bk)
	if errR == nil || errL == nil {
		fw.log.Debug().Stringer("key", k).Msg("firewall: kernel revoked")
		return nil
	}
	for _, err := range []error{errR, errL} {
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("firewall: revoke %v on %s: %w", k, fw.ifname, err)
		}
	}
	return fmt.Errorf("firewall: revoke %v on %s: %w", k, fw.ifname, ebpf.ErrKeyNotExist)
}

// KernelEntries returns every entry of the kernel-allow maps: registered
// ones first, then learned ones, each sorted by key.
func (fw *Firewall) KernelEntries() ([]Entry, error) {
	if err := fw.rlock(); err != nil {
		return nil, err
	}
	defer fw.mu.RUnlock()
	now := monotonicNow()
	var out []Entry
	for _, m := range []*ebpf.Map{fw.objs.KernelRules, fw.objs.KernelLearned} {
		start := len(out)
		var k bpfFwKey
		var v bpfFwValue
		it := m.Iterate()
		for it.Next(&k, &v) {
			out = append(out, entryOf(k, v, now))
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("firewall: reading %s on %s: %w", m, fw.ifname, err)
		}
		slices.SortFunc(out[start:], func(a, b Entry) int { return compareKeys(a.Key, b.Key) })
	}
	return out, nil
}

func entryOf(k bpfFwKey, v bpfFwValue, now uint64) Entry {
	e := Entry{Key: l4Key(k), Sticky: v.Flags&flagSticky != 0, Learned: v.Flags&flagLearned != 0}
	if now > v.LastSeenNs {
		e.Idle = time.Duration(now - v.LastSeenNs)
	}
	return e
}

func compareKeys(a, b l4.Key) int {
	if c := slices.Compare(a.Local[:], b.Local[:]); c != 0 {
		return c
	}
	if a.Proto != b.Proto {
		return int(a.Proto) - int(b.Proto)
	}
	if a.LocalPort != b.LocalPort {
		return int(a.LocalPort) - int(b.LocalPort)
	}
	if c := slices.Compare(a.Remote[:], b.Remote[:]); c != 0 {
		return c
	}
	if a.RemotePort != b.RemotePort {
		return int(a.RemotePort) - int(b.RemotePort)
	}
	return int(a.Flags) - int(b.Flags)
}

// Counters returns the programs' counters (see CounterNames), summed over
// CPUs, since the maps were created (a restart starts them again at 0).
func (fw *Firewall) Counters() (map[string]uint64, error) {
	if err := fw.rlock(); err != nil {
		return nil, err
	}
	defer fw.mu.RUnlock()
	return readCounters(fw.objs.Counters)
}

func readCounters(m *ebpf.Map) (map[string]uint64, error) {
	out := make(map[string]uint64, len(counterNames))
	var perCPU []uint64
	for i, name := range counterNames {
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("firewall: reading counter %s: %w", name, err)
		}
		var sum uint64
		for _, n := range perCPU {
			sum += n
		}
		out[name] = sum
	}
	return out, nil
}

// monotonicNow is bpf_ktime_get_ns's clock: CLOCK_MONOTONIC in ns.
func monotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("firewall: clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return uint64(ts.Nano())
}
