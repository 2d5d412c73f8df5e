package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control"
	"github.com/usnetd/usnetd/firewall"
	"github.com/usnetd/usnetd/internal/config"
	"github.com/usnetd/usnetd/internal/lograte"
	"github.com/usnetd/usnetd/internal/pcap"
	"github.com/usnetd/usnetd/metrics"
	l4 "github.com/usnetd/usnetd/switch"
)

// Options are what Run needs besides the context.
type Options struct {
	Config *config.Config
	Log    zerolog.Logger
	// Ready, if set, is called once: when every NIC is claimed and the
	// control socket and metrics server listen (systemd's READY=1).
	Ready func()
	// Stopping, if set, is called when the shutdown begins (STOPPING=1).
	Stopping func()
	// Watchdog, if set, runs from Ready until the shutdown begins, with a
	// health check: true while the daemon's loops make progress and every
	// NIC is claimed.
	Watchdog func(ctx context.Context, healthy func() bool)
	// Status, if set, is called with a one-line status whenever it changes
	// (systemd's STATUS=): which NICs are served, which are gone and why.
	Status func(status string)
}

// Housekeeping periods.
const (
	fragSweepEvery  = time.Second      // ages the fragment memory (30 ticks = 30 s)
	kernelSyncEvery = time.Second      // copies the eBPF learner's entries into the Go table
	expireEvery     = 90 * time.Second // the original's period: drop learned kernel rules without a socket
)

// domain is one configured NIC: its switch and pipeline, which live as
// long as the daemon, and the backend that claims the NIC, which comes and
// goes with the NIC (follow.go).
type domain struct {
	ifname string
	sw     *l4.Switch
	p      *l4.Pipeline

	// mu guards the claim: the follower changes it, housekeeping and the
	// shutdown use it.
	mu  sync.Mutex
	nic nicBackend // nil while the NIC is gone
	// keptFW is the firewall of the NIC while it is gone (afxdp,
	// afpacket), loaded and waiting to be moved onto its successor.
	keptFW     *firewall.Firewall
	nicPort    l4.PortID // the NIC's port in p
	kernel     l4.Owner  // owner of the kernel's rules: l4.KernelOwner or the kernel's port (macvtap's TAP, the host path)
	ifindex    int       // of the claimed NIC; 0 while gone
	mac        net.HardwareAddr
	addrs      ifAddrs
	rules      []l4.Rule // the DEBUG_PORTS rules in force (Owner = kernel)
	pipes      []*pipe   // STATIC_PIPES of this interface
	lastErr    string    // why the last claim of a re-created NIC failed, logged once
	lastMTUErr string    // why the NIC's new MTU is refused, logged once
	goneAt     time.Time

	claimed    atomic.Bool   // the NIC is claimed: firewall and backend attached
	reattaches atomic.Uint64 // claims of a re-created NIC

	// fw is the NIC's eBPF firewall (afxdp, afpacket; nil with macvtap),
	// also while the NIC is gone and its firewall is kept: the control
	// server keeps the endpoints' rules in it (endpointPorts) without
	// taking mu, whose holder calls into the control server.
	fw atomic.Pointer[firewall.Firewall]

	lastBackend string // backendName's answer while the NIC is gone

	bufSize int          // the pipeline's buffers, sized for the MTU at the start
	mtu     atomic.Int64 // the NIC's MTU as last learned (MTUChanged)
	maxMTU  int          // the largest MTU whose frames the buffers and the backend carry
}

// nicBackend is a way of claiming a NIC: it gives the pipeline its NIC port
// and keeps the kernel-side copy of the kernel's rules.
type nicBackend interface {
	// Describe says what is in use, for the log: backend, mode, queues.
	Describe() string
	// Port is the NIC's switch port.
	Port() l4.Port
	// LearnedKernel returns the kernel's connections learned on the
	// kernel side (reverse tuples); nil for backends where the switch
	// learns them itself.
	LearnedKernel() ([]l4.Key, error)
	// Expire removes learned kernel entries whose socket isOpen says is
	// gone, and returns how many.
	Expire(isOpen func(l4.Key) bool) (int, error)
	// AllowKernel and RevokeKernel add and remove a DEBUG_PORTS rule in
	// the backend's kernel-side copy (the firewall's map); no-ops where
	// the switch is the kernel's firewall (macvtap).
	AllowKernel(k l4.Key, sticky bool) error
	RevokeKernel(k l4.Key) error
	// Name is the backend's name for metrics: "afxdp", "afpacket", "macvtap".
	Name() string
	// Drops returns the frames the backend (and the kernel below it)
	// dropped, by reason, as running totals (usnetd_backend_drops_total).
	Drops() map[string]uint64
	// MaxFrame is the longest frame the backend carries (Ethernet header
	// included), or 0 when only the pipeline's buffers bound it.
	MaxFrame() int
	// Close gives the NIC back: the kernel is unfiltered afterwards.
	Close() error
	// Release lets go of the NIC but leaves the kernel filtered (fail
	// closed): the firewall stays attached and pinned (afxdp, afpacket),
	// or the macvtap and the TAP stay and cut the kernel off (macvtap).
	// The next claim takes over what it left.
	Release() error
}

// kernelPortBackend is a nicBackend whose kernel path is a switch port
// (macvtap: the kernel's TAP; afxdp, afpacket: the host path's TAP). AttachKernel adds that port to the
// pipeline and returns its owner, which then owns the kernel's rules
// (DEBUG_PORTS) instead of l4.KernelOwner; the backend keeps the owner and
// the table for Expire.
type kernelPortBackend interface {
	AttachKernel(p *l4.Pipeline) (l4.Owner, error)
}

// firewallBackend is a nicBackend with an eBPF firewall (afxdp,
// afpacket): the control plane keeps the endpoints' rules in it, and
// /metrics shows its counters.
type firewallBackend interface {
	firewall() *firewall.Firewall
}

// Run claims the NICs, serves until ctx is done, then gives everything back.
func Run(ctx context.Context, opt Options) (err error) {
	// Lines that clients and traffic can trigger are rate-limited per
	// message; /metrics counts what was left out.
	logLimit := lograte.New(0, 0)
	cfg, log := opt.Config, logLimit.Logger(opt.Log)
	if cfg.MemoryLimit > 0 {
		debug.SetMemoryLimit(cfg.MemoryLimit)
	}
	d := &daemon{cfg: cfg, log: log, logLimit: logLimit, pin: &pinner{cpus: cfg.CPUs, log: log}, status: opt.Status}
	defer func() {
		// Fail closed: a start that fails leaves every firewall it
		// attached or took over in place; a clean stop removes them
		// unless KEEP_FIREWALL.
		keep := ""
		switch {
		case err != nil:
			keep = "the start failed"
		case cfg.KeepFirewall:
			keep = "KEEP_FIREWALL=true"
		}
		if cerr := d.close(keep); err == nil {
			err = cerr
		}
	}()
	if cfg.PCAPLog != "" {
		if err := d.openPcap(); err != nil {
			return err
		}
	}
	for _, ifname := range cfg.Interfaces {
		dom, err := d.claim(ifname)
		if err != nil {
			return fmt.Errorf("interface %s: %w", ifname, err)
		}
		d.domains = append(d.domains, dom)
	}
	if d.tap != nil {
		d.runPcap()
		d.pcapRunning = true
	}
	// The control socket is bound first (refusing to displace a live
	// usnetd, whose pipes a second one must not replace), then the pipes
	// take their rules, then clients are served.
	if err := d.startControl(); err != nil {
		return err
	}
	if err := d.openPipes(); err != nil {
		return err
	}
	d.serveControl()
	if cfg.MetricsAddr != "" {
		c := metrics.NewCollector(d.metricDomains)
		if d.tap != nil {
			c.SetTap(d.tap)
		}
		c.SetRefused(d.ctl.Refused)
		c.SetSuppressed(d.logLimit.Suppressed)
		reg := metrics.NewRegistry(c)
		reg.MustRegister(claimCollector{d})
		srv, err := metrics.Listen(cfg.MetricsAddr, reg)
		if err != nil {
			return fmt.Errorf("METRICS_ADDR=%q: %w", cfg.MetricsAddr, err)
		}
		d.metrics = srv
		d.wg.Go(func() {
			if err := srv.Serve(); err != nil {
				log.Error().Err(err).Msg("metrics server stopped")
			}
		})
		log.Info().Str("addr", srv.Addr().String()).Msg("metrics at /metrics")
	}
	hk, stopHK := context.WithCancel(context.Background())
	d.wg.Go(func() { d.housekeeping(hk) })
	d.wg.Go(func() { d.follow(hk) })
	d.stopHK = stopHK
	d.setStatus()

	log.Info().Strs("interfaces", cfg.Interfaces).Msg("usnetd is up")
	if opt.Ready != nil {
		opt.Ready()
	}
	if opt.Watchdog != nil {
		wctx, stopWD := context.WithCancel(ctx)
		defer stopWD()
		d.wg.Go(func() { opt.Watchdog(wctx, d.healthy) })
	}
	<-ctx.Done()
	log.Info().Msg("stopping")
	if opt.Stopping != nil {
		opt.Stopping()
	}
	return nil
}

type daemon struct {
	cfg        *config.Config
	log        zerolog.Logger
	logLimit   *lograte.Limiter
	pin        *pinner
	domains    []*domain
	metrics    *metrics.Server
	ctl        *control.Server
	stopHK     context.CancelFunc
	wg         sync.WaitGroup
	closed     bool
	status     func(string) // Options.Status
	statusMu   sync.Mutex
	lastStatus string

	lastTick atomic.Int64 // the housekeeping loop's last round, Unix ns

	tap         *l4.Tap // PCAP_LOG
	pcapw       *pcap.NgWriter
	pcapRunning bool
	tapStop     chan struct{} // stops the pcap writer, after the pipelines
	tapDone     chan struct{}
	tapError    error // the writer's, read after tapDone
}

func (d *daemon) metricDomains() []metrics.Domain {
	ds := make([]metrics.Domain, 0, len(d.domains))
	for _, dom := range d.domains {
		md := metrics.Domain{Interface: dom.ifname, Pipeline: dom.p, Backend: dom.backendName(), BackendDrops: dom.backendDrops}
		if fw := dom.fw.Load(); fw != nil {
			md.Firewall = fw.Counters
		}
		if d.ctl != nil {
			ifname := dom.ifname
			md.ChannelDrops = func() map[string]uint64 { return d.ctl.ChannelDrops(ifname) }
			md.SHMChannels = func() map[string]uint64 { return d.ctl.SHMChannels(ifname) }
		}
		ds = append(ds, md)
	}
	return ds
}

// claim takes one NIC at start: switch, pipeline, then the NIC itself
// (attachNIC). Every DEBUG_PORTS entry needs an address on the NIC now.
func (d *daemon) claim(ifname string) (dom *domain, err error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("no such interface (INTERFACES): %w", err)
	}
	mtu := link.Attrs().MTU
	if mtu < 68 {
		return nil, fmt.Errorf("MTU %d: below the minimum of 68", mtu)
	}
	sw := l4.NewSwitch(l4.NewTable())
	bufSize := bufSizeFor(mtu)
	p, err := l4.NewPipeline(sw, l4.PipelineConfig{
		RingSize:      d.cfg.RingSize,
		BatchSize:     d.cfg.BatchSize,
		Buffers:       poolBuffers(d.cfg, bufSize),
		BufSize:       bufSize,
		Tap:           d.tap,
		OnThreadStart: d.pin.hook(ifname),
	})
	if err != nil {
		return nil, err
	}
	dom = &domain{ifname: ifname, sw: sw, p: p, kernel: l4.KernelOwner, bufSize: bufSize}
	dom.mu.Lock()
	defer dom.mu.Unlock()
	if err := d.attachNIC(dom, link, true); err != nil {
		_ = p.Close()
		return nil, err
	}
	return dom, nil
}

// attachNIC claims the NIC link for dom, whose mutex the caller holds:
// backend (with the firewall, opened with the DEBUG_PORTS rules of the
// NIC's addresses now), its ports in the pipeline, the rules in the table.
// strict (the start) refuses DEBUG_PORTS entries without an address. On
// an error after the firewall is attached, the backend is released, not
// closed: the kernel stays filtered.
func (d *daemon) attachNIC(dom *domain, link netlink.Link, strict bool) (err error) {
	addrs, err := linkAddrs(link)
	if err != nil {
		return err
	}
	rules, missing, err := kernelRules(d.cfg.DebugPorts, dom.ifname, addrs)
	if err != nil {
		return err
	}
	if strict && len(missing) > 0 {
		return missingError(missing, dom.ifname)
	}
	// The frames of the NIC's MTU must fit the pipeline's buffers, sized
	// at the start, and the backend.
	mtu := link.Attrs().MTU
	if frameBytes(mtu) > dom.bufSize {
		return fmt.Errorf("%w: MTU %d needs frames of %d bytes; the buffers, sized at the start, hold %d (MTU %d): restart usnetd",
			ErrMTU, mtu, frameBytes(mtu), dom.bufSize, dom.bufSize-ethHeader-vlanTag)
	}
	kept := dom.keptFW
	dom.keptFW = nil // openBackend owns it now
	nic, err := d.openBackend(dom.ifname, rules, frameBytes(mtu), kept)
	if err != nil {
		return err
	}
	var added []l4.PortID
	defer func() {
		if err != nil {
			for i := len(added) - 1; i >= 0; i-- {
				_ = dom.p.RemovePort(added[i])
			}
			_ = nic.Release()
		}
	}()
	maxFrame := dom.bufSize
	if m := nic.MaxFrame(); m > 0 {
		maxFrame = min(maxFrame, m)
	}
	if maxFrame < frameBytes(mtu) {
		return fmt.Errorf("%w: MTU %d needs frames of %d bytes; %s carries at most %d (MTU %d)",
			ErrMTU, mtu, frameBytes(mtu), nic.Describe(), maxFrame, maxFrame-ethHeader-vlanTag)
	}
	// The endpoints' rules go into the firewall, before the NIC's port
	// takes frames: a firewall of the NIC's successor (not kept) starts
	// without them. Storing the firewall first means that a rule the
	// control server adds meanwhile reaches it either way.
	if fb, ok := nic.(firewallBackend); ok {
		if fw := fb.firewall(); dom.fw.Swap(fw) != fw {
			if err := syncEndpointRules(dom.sw.Table, fw); err != nil {
				return err
			}
		}
	}
	nicOwner, err := dom.p.AddPort(nic.Port())
	if err != nil {
		return err
	}
	added = append(added, nicOwner.Port)
	kernel := l4.KernelOwner
	if kb, ok := nic.(kernelPortBackend); ok {
		if kernel, err = kb.AttachKernel(dom.p); err != nil {
			return err
		}
		if kernel != l4.KernelOwner {
			added = append(added, kernel.Port)
		}
	}
	dom.nic, dom.nicPort, dom.kernel = nic, nicOwner.Port, kernel
	dom.ifindex, dom.mac = link.Attrs().Index, link.Attrs().HardwareAddr
	dom.maxMTU = maxFrame - ethHeader - vlanTag
	dom.mtu.Store(int64(mtu))
	if err := d.applyAddrs(dom, addrs); err != nil {
		dom.nic, dom.ifindex = nil, 0
		return err
	}
	dom.claimed.Store(true)
	ev := d.log.Info().Str("interface", dom.ifname).Str("backend", nic.Describe()).
		Str("mac", dom.mac.String()).Int("kernel_rules", len(dom.rules)).
		Int("mtu", mtu).Int("buffer_size", dom.bufSize)
	if len(addrs.v4) > 0 {
		ev = ev.Str("ipv4", addrs.v4[0].String())
	}
	if len(d.cfg.CPUs) > 0 {
		ev = ev.Ints("cpus", d.cfg.CPUs)
	}
	ev.Msg("interface claimed")
	return nil
}

// currentMTU is the NIC's MTU as usnetd carries it now (QueryStatus).
func (dom *domain) currentMTU() int { return int(dom.mtu.Load()) }

// poolBuffers sizes one interface's buffer pool from MEMORY_LIMIT: a
// quarter of it is frame buffers, split between the interfaces; at least
// what the rings of a NIC queue and a few batches need, at most 2^20.
func poolBuffers(cfg *config.Config, bufSize int) int {
	stride := (bufSize + 63) / 64 * 64
	n := int(cfg.MemoryLimit / 4 / int64(max(len(cfg.Interfaces), 1)) / int64(stride))
	lo := 4 * (cfg.RingSize + 4*cfg.BatchSize)
	return min(max(n, lo, 2048), 1<<20)
}

// linkAddrs reads the interface's IPv4 addresses, its global IPv6
// addresses and all its addresses (IPv6 link-local included).
// addresses.
func linkAddrs(link netlink.Link) (ifAddrs, error) {
	var a ifAddrs
	list, err := netlink.AddrList(link, unix.AF_UNSPEC)
	if err != nil {
		return a, fmt.Errorf("reading addresses: %w", err)
	}
	for _, ad := range list {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		a.all = append(a.all, ip)
		switch {
		case ip.Is4():
			a.v4 = append(a.v4, ip)
		case ip.Is6() && ip.IsGlobalUnicast():
			a.v6 = append(a.v6, ip)
		}
	}
	slices.SortFunc(a.v4, netip.Addr.Compare)
	slices.SortFunc(a.v6, netip.Addr.Compare)
	slices.SortFunc(a.all, netip.Addr.Compare)
	a.v4, a.v6, a.all = slices.Compact(a.v4), slices.Compact(a.v6), slices.Compact(a.all)
	return a, nil
}

// healthy reports whether the housekeeping loop ticked recently (it runs
// every second and also proves that the pipelines answer: FragSweep and the
// kernel sync go through them) and every NIC is claimed. The watchdog
// pings systemd only while this is true, so a daemon whose loops hang, or
// whose NIC stays gone, is restarted (the status line says which).
func (d *daemon) healthy() bool {
	for _, dom := range d.domains {
		if !dom.claimed.Load() {
			return false
		}
	}
	last := d.lastTick.Load()
	return last != 0 && time.Since(time.Unix(0, last)) < 10*fragSweepEvery
}

// housekeeping runs the periodic work until ctx is done.
func (d *daemon) housekeeping(ctx context.Context) {
	d.lastTick.Store(time.Now().UnixNano())
	frag := time.NewTicker(fragSweepEvery)
	defer frag.Stop()
	expire := time.NewTicker(expireEvery)
	defer expire.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-frag.C:
			for _, dom := range d.domains {
				dom.p.FragSweep()
				d.syncKernel(dom)
			}
			d.lastTick.Store(time.Now().UnixNano())
		case <-expire.C:
			d.expire()
		}
	}
}

// syncKernel copies the kernel's learned connections from the backend into
// the Go table (the one truth, which the control plane asks before it gives
// a port away and which QueryUsedPorts lists), and drops the learned
// kernel rules that the backend no longer has.
func (d *daemon) syncKernel(dom *domain) {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	if dom.nic == nil {
		return
	}
	keys, err := dom.nic.LearnedKernel()
	if err != nil {
		d.log.Warn().Err(err).Str("interface", dom.ifname).Msg("reading the kernel's learned connections")
		return
	}
	if keys == nil {
		return
	}
	have := make(map[l4.Key]bool, len(keys))
	for _, k := range keys {
		have[k] = true
		_ = dom.sw.Table.Insert(l4.Rule{Key: k, Owner: dom.kernel, Kind: l4.Learned})
	}
	dom.sw.Table.RemoveIf(func(r l4.Rule) bool {
		return r.Owner == dom.kernel && r.Kind == l4.Learned && !have[r.Key]
	})
}

// expire removes learned kernel entries whose socket is gone, as the
// original did every 90 s, and the learned kernel rules without ports.
func (d *daemon) expire() {
	inv, err := newInventory()
	if err != nil {
		d.log.Warn().Err(err).Msg("reading the kernel's sockets")
		return
	}
	for _, dom := range d.domains {
		dom.mu.Lock()
		n, err := 0, error(nil)
		if dom.nic != nil {
			n, err = dom.nic.Expire(inv)
		}
		dom.mu.Unlock()
		if err != nil {
			d.log.Warn().Err(err).Str("interface", dom.ifname).Msg("expiring learned kernel entries")
			continue
		}
		if n > 0 {
			d.log.Debug().Str("interface", dom.ifname).Int("removed", n).Msg("expired learned kernel entries")
		}
		d.syncKernel(dom)
	}
}

// close gives back everything that was claimed, in reverse order. With a
// reason to keep (a failed start, KEEP_FIREWALL), the backends are
// released: the kernel stays filtered.
func (d *daemon) close(keep string) error {
	if d.closed {
		return nil
	}
	d.closed = true
	if d.stopHK != nil {
		d.stopHK()
	}
	if d.ctl != nil {
		// First: endpoints leave the pipelines, the socket file goes.
		if err := d.ctl.Close(); err != nil {
			d.log.Warn().Err(err).Msg("closing the control socket")
		}
	}
	if d.metrics != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = d.metrics.Shutdown(ctx)
		cancel()
	}
	d.wg.Wait()
	var errs []error
	for i := len(d.domains) - 1; i >= 0; i-- {
		dom := d.domains[i]
		dom.mu.Lock()
		d.closePipes(dom)
		if err := dom.p.Close(); err != nil {
			errs = append(errs, err)
		}
		switch {
		case dom.nic == nil:
			if dom.keptFW != nil {
				var err error
				if keep != "" {
					err = dom.keptFW.Release()
				} else {
					err = dom.keptFW.Close()
				}
				if err != nil {
					d.log.Info().Err(err).Str("interface", dom.ifname).Msg("the firewall of the gone interface")
				}
				dom.keptFW = nil
			}
			d.log.Info().Str("interface", dom.ifname).Msg("interface released (it was gone)")
		case keep != "":
			if err := dom.nic.Release(); err != nil {
				errs = append(errs, fmt.Errorf("interface %s: %w", dom.ifname, err))
			}
			d.log.Warn().Str("interface", dom.ifname).Str("reason", keep).
				Msg("interface released; its firewall stays (fail closed) until the next usnetd takes it over")
		default:
			if err := dom.nic.Close(); err != nil {
				errs = append(errs, fmt.Errorf("interface %s: %w", dom.ifname, err))
			}
			d.log.Info().Str("interface", dom.ifname).Msg("interface released")
		}
		dom.nic = nil
		dom.claimed.Store(false)
		dom.mu.Unlock()
	}
	if err := d.closePcap(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// openPcap opens PCAP_LOG and makes the tap that the pipelines feed.
func (d *daemon) openPcap() error {
	w, err := pcap.CreateNg(d.cfg.PCAPLog)
	if err != nil {
		return err
	}
	tap, err := l4.NewTap(max(d.cfg.RingSize, 1024))
	if err != nil {
		w.Close()
		return err
	}
	d.pcapw, d.tap, d.tapStop, d.tapDone = w, tap, make(chan struct{}), make(chan struct{})
	return nil
}

// runPcap starts the PCAP_LOG writer: one goroutine that drains the tap
// (every received frame with its verdict, by reference) into the pcapng
// file, off the hot path (pcapWriter). When the disk is slower than the
// switch, the tap's rings drop and count (usnetd_pcap_dropped_total).
// Call it once the domains are claimed.
func (d *daemon) runPcap() {
	d.log.Info().Str("file", d.cfg.PCAPLog).Msg("writing every received frame and its verdict to PCAP_LOG (pcapng)")
	tap := d.tap
	pw := newPcapWriter(d.pcapw, d.domains)
	cache := d.domains[0].p.Pool().NewCache() // frames of other domains' pools go back to their own
	go func() {
		defer close(d.tapDone)
		var werr error
		write := func(b *l4.Buf) {
			if werr == nil {
				if werr = pw.write(b); werr != nil {
					d.log.Error().Err(werr).Str("file", d.cfg.PCAPLog).Msg("PCAP_LOG write failed; frames are no longer written")
				}
			}
		}
		for tap.Drain(write, cache, d.tapStop) {
			if werr == nil {
				werr = d.pcapw.Flush()
			}
		}
		cache.Flush()
		d.tapError = werr
	}()
}

// closePcap stops the writer after the pipelines closed (its last drain
// empties the tap) and closes the file.
func (d *daemon) closePcap() error {
	if d.tap == nil {
		return nil
	}
	close(d.tapStop)
	if d.pcapRunning {
		<-d.tapDone
	}
	err := d.pcapw.Close()
	if d.tapError != nil {
		err = d.tapError
	}
	if err != nil {
		return fmt.Errorf("PCAP_LOG %s: %w", d.cfg.PCAPLog, err)
	}
	return nil
}

// Version is what QueryStatus and the log report.
var Version = "dev"

// startControl binds the control socket, refusing to displace a live
// usnetd; serveControl serves it.
func (d *daemon) startControl() error {
	ifaces := make([]control.Interface, 0, len(d.domains))
	for _, dom := range d.domains {
		in := control.Interface{Name: dom.ifname, Pipeline: dom.p, Backend: dom.nic.Describe(), MTU: dom.currentMTU}
		if m, ok := dom.nic.(interface{ XDPMode() string }); ok {
			in.XDPMode = m.XDPMode()
		}
		in.EndpointPorts = endpointPorts{dom}
		in.Addrs = slices.Clone(dom.addrs.all)
		in.Granted = d.cfg.EndpointAddrsOf(dom.ifname)
		ifaces = append(ifaces, in)
	}
	srv, err := control.NewServer(control.ServerConfig{
		SocketPath:           d.cfg.SocketPath,
		AllowGID:             d.cfg.AllowGID,
		HasAllowGID:          d.cfg.HasAllowGID,
		MaxRulesPerClient:    d.cfg.MaxRulesPerClient,
		MaxChannelsPerClient: d.cfg.MaxChannelsPerClient,
		MaxClients:           d.cfg.MaxClients,
		MaxClientsPerUID:     d.cfg.MaxClientsPerUID,
		MaxChannels:          d.cfg.MaxChannels,
		MaxChannelsPerUID:    d.cfg.MaxChannelsPerUID,
		MaxRules:             d.cfg.MaxRules,
		MaxRulesPerUID:       d.cfg.MaxRulesPerUID,
		SHMMemory:            d.cfg.MemoryLimit / 4, // the shared-memory channels' rings
		Interfaces:           ifaces,
		Log:                  d.log,
		Version:              Version,
	})
	if err != nil {
		return fmt.Errorf("SOCKET_PATH=%q: %w", d.cfg.SocketPath, err)
	}
	d.ctl = srv
	return nil
}

// serveControl serves the control socket that startControl bound until
// the daemon closes.
func (d *daemon) serveControl() {
	srv := d.ctl
	d.wg.Go(func() {
		if err := srv.Serve(context.Background()); err != nil {
			d.log.Error().Err(err).Msg("control socket stopped")
		}
	})
}

// backendDrops reads the drops of the backend claiming the NIC now; none
// while the NIC is gone.
func (dom *domain) backendDrops() map[string]uint64 {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	if dom.nic == nil {
		return nil
	}
	return dom.nic.Drops()
}

// endpointPorts is a domain's control.EndpointPorts: the firewall of the
// NIC as it is now (dom.fw), none with macvtap, whose switch keeps the
// kernel off the endpoints' flows by itself.
type endpointPorts struct{ dom *domain }

func (e endpointPorts) AddEndpointPort(k l4.Key) error {
	if fw := e.dom.fw.Load(); fw != nil {
		return fw.AddEndpointPort(k)
	}
	return nil
}

func (e endpointPorts) RemoveEndpointPort(k l4.Key) error {
	if fw := e.dom.fw.Load(); fw != nil {
		return fw.RemoveEndpointPort(k)
	}
	return nil
}

// syncEndpointRules puts every rule that endpoints registered in t into
// fw (adding one it has is a no-op).
func syncEndpointRules(t *l4.Table, fw *firewall.Firewall) error {
	for _, r := range t.Rules() {
		if r.Kind == l4.Registered && r.Owner.Kind == l4.PortEndpoint {
			if err := fw.AddEndpointPort(r.Key); err != nil {
				return fmt.Errorf("endpoint rule %v into the firewall: %w", r.Key, err)
			}
		}
	}
	return nil
}

// backendName names the backend claiming the NIC now, or the last one.
func (dom *domain) backendName() string {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	if dom.nic != nil {
		dom.lastBackend = dom.nic.Name()
	}
	return dom.lastBackend
}
