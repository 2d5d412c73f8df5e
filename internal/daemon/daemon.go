package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control"
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
	// health check: true while the daemon's loops make progress.
	Watchdog func(ctx context.Context, healthy func() bool)
}

// Housekeeping periods.
const (
	fragSweepEvery  = time.Second      // ages the fragment memory (30 ticks = 30 s)
	kernelSyncEvery = time.Second      // copies the eBPF learner's entries into the Go table
	expireEvery     = 90 * time.Second // the original's period: drop learned kernel rules without a socket
)

// domain is one claimed NIC: its switch, pipeline and backend.
type domain struct {
	ifname string
	addrs  ifAddrs
	mac    net.HardwareAddr
	sw     *l4.Switch
	p      *l4.Pipeline
	nic    nicBackend
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
	// Close gives the NIC back.
	Close() error
}

// kernelPortBackend is a nicBackend whose kernel path is a switch port
// (macvtap: the kernel's TAP). AttachKernel adds that port to the
// pipeline and returns its owner, which then owns the kernel's rules
// (DEBUG_PORTS) instead of l4.KernelOwner; the backend keeps the owner and
// the table for Expire.
type kernelPortBackend interface {
	AttachKernel(p *l4.Pipeline) (l4.Owner, error)
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
	if len(cfg.StaticPipes) > 0 {
		return fmt.Errorf("STATIC_PIPES=%q: static pipes were netmap pipes, which this usnetd does not have; "+
			"attach the stack through the control socket (RequestUDS) instead", cfg.StaticPipes[0].String())
	}
	d := &daemon{cfg: cfg, log: log, logLimit: logLimit, pin: &pinner{cpus: cfg.CPUs, log: log}}
	defer func() {
		if cerr := d.close(); err == nil {
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
	if err := d.startControl(); err != nil {
		return err
	}
	if cfg.MetricsAddr != "" {
		c := metrics.NewCollector(d.metricDomains)
		if d.tap != nil {
			c.SetTap(d.tap)
		}
		c.SetRefused(d.ctl.Refused)
		c.SetSuppressed(d.logLimit.Suppressed)
		srv, err := metrics.Listen(cfg.MetricsAddr, metrics.NewRegistry(c))
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
	d.stopHK = stopHK

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
	cfg      *config.Config
	log      zerolog.Logger
	logLimit *lograte.Limiter
	pin      *pinner
	domains  []*domain
	metrics  *metrics.Server
	ctl      *control.Server
	stopHK   context.CancelFunc
	wg       sync.WaitGroup
	closed   bool

	lastTick atomic.Int64 // the housekeeping loop's last round, Unix ns

	tap         *l4.Tap // PCAP_LOG
	pcapw       *pcap.Writer
	pcapRunning bool
	tapStop     chan struct{} // stops the pcap writer, after the pipelines
	tapDone     chan struct{}
	tapError    error // the writer's, read after tapDone
}

func (d *daemon) metricDomains() []metrics.Domain {
	ds := make([]metrics.Domain, 0, len(d.domains))
	for _, dom := range d.domains {
		ds = append(ds, metrics.Domain{Interface: dom.ifname, Pipeline: dom.p})
	}
	return ds
}

// claim takes one NIC: addresses, kernel rules, backend, switch, pipeline.
func (d *daemon) claim(ifname string) (dom *domain, err error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("no such interface (INTERFACES): %w", err)
	}
	addrs, err := linkAddrs(link)
	if err != nil {
		return nil, err
	}
	rules, err := kernelRules(d.cfg.DebugPorts, ifname, addrs)
	if err != nil {
		return nil, err
	}
	nic, err := d.openBackend(ifname, rules)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = nic.Close()
		}
	}()
	sw := l4.NewSwitch(l4.NewTable(), d.cfg.AddMACs...)
	p, err := l4.NewPipeline(sw, l4.PipelineConfig{
		RingSize:      d.cfg.RingSize,
		BatchSize:     d.cfg.BatchSize,
		Buffers:       poolBuffers(d.cfg, l4.DefaultBufSize),
		BufSize:       l4.DefaultBufSize,
		Tap:           d.tap,
		OnThreadStart: d.pin.hook(ifname),
	})
	if err != nil {
		return nil, err
	}
	if _, err := p.AddPort(nic.Port()); err != nil {
		_ = p.Close()
		return nil, err
	}
	kernel := l4.KernelOwner
	if kb, ok := nic.(kernelPortBackend); ok {
		if kernel, err = kb.AttachKernel(p); err != nil {
			_ = p.Close()
			return nil, err
		}
	}
	for _, r := range rules {
		r.Owner = kernel
		if err := sw.Table.Insert(r); err != nil && !errors.Is(err, l4.ErrExists) {
			_ = p.Close()
			return nil, fmt.Errorf("DEBUG_PORTS rule %v: %w", r.Key, err)
		}
	}
	dom = &domain{ifname: ifname, addrs: addrs, mac: link.Attrs().HardwareAddr, sw: sw, p: p, nic: nic}
	ev := d.log.Info().Str("interface", ifname).Str("backend", nic.Describe()).
		Str("mac", dom.mac.String()).Int("kernel_rules", len(rules))
	if addrs.v4.IsValid() {
		ev = ev.Str("ipv4", addrs.v4.String())
	}
	if len(d.cfg.CPUs) > 0 {
		ev = ev.Ints("cpus", d.cfg.CPUs)
	}
	ev.Msg("interface claimed")
	return dom, nil
}

// poolBuffers sizes one interface's buffer pool from MEMORY_LIMIT: a
// quarter of it is frame buffers, split between the interfaces; at least
// what the rings of a NIC queue and a few batches need, at most 2^20.
func poolBuffers(cfg *config.Config, bufSize int) int {
	stride := (bufSize + 63) / 64 * 64
	n := int(cfg.MemoryLimit / 4 / int64(max(len(cfg.Interfaces), 1)) / int64(stride))
	lo := 4 * (cfg.RingSize + 4*cfg.BatchSize)
	return min(max(n, lo, 2048), 1<<20)
}

// linkAddrs reads the interface's first IPv4 address and its global IPv6
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
		switch {
		case ip.Is4() && !a.v4.IsValid():
			a.v4 = ip
		case ip.Is6() && ip.IsGlobalUnicast():
			a.v6 = append(a.v6, ip)
		}
	}
	return a, nil
}

// healthy reports whether the housekeeping loop ticked recently (it runs
// every second and also proves that the pipelines answer: FragSweep and the
// kernel sync go through them). The watchdog pings systemd only while this
// is true, so a daemon whose loops hang is restarted.
func (d *daemon) healthy() bool {
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
		_ = dom.sw.Table.Insert(l4.Rule{Key: k, Owner: l4.KernelOwner, Kind: l4.Learned})
	}
	dom.sw.Table.RemoveIf(func(r l4.Rule) bool {
		return r.Owner == l4.KernelOwner && r.Kind == l4.Learned && !have[r.Key]
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
		n, err := dom.nic.Expire(inv)
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

// close gives back everything that was claimed, in reverse order.
func (d *daemon) close() error {
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
		if err := dom.p.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := dom.nic.Close(); err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w", dom.ifname, err))
		}
		d.log.Info().Str("interface", dom.ifname).Msg("interface released")
	}
	if err := d.closePcap(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// openPcap opens PCAP_LOG and makes the tap that the pipelines feed.
func (d *daemon) openPcap() error {
	w, err := pcap.Create(d.cfg.PCAPLog)
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
// (every switched frame, by reference) into the file, off the hot path.
// When the disk is slower than the switch, the tap's rings drop and count
// (usnetd_pcap_dropped_total). Call it once the domains are claimed.
func (d *daemon) runPcap() {
	d.log.Info().Str("file", d.cfg.PCAPLog).Msg("writing every switched frame to PCAP_LOG")
	w, tap := d.pcapw, d.tap
	cache := d.domains[0].p.Pool().NewCache() // frames of other domains' pools go back to their own
	go func() {
		defer close(d.tapDone)
		var werr error
		write := func(b *l4.Buf) {
			if werr == nil {
				if werr = w.WritePacket(b.Time(), b.Bytes()); werr != nil {
					d.log.Error().Err(werr).Str("file", d.cfg.PCAPLog).Msg("PCAP_LOG write failed; frames are no longer written")
				}
			}
		}
		for tap.Drain(write, cache, d.tapStop) {
			if werr == nil {
				werr = w.Flush()
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

// startControl binds the control socket (refusing to displace a live
// usnetd) and serves it until the daemon closes.
func (d *daemon) startControl() error {
	ifaces := make([]control.Interface, 0, len(d.domains))
	for _, dom := range d.domains {
		in := control.Interface{Name: dom.ifname, Pipeline: dom.p, Backend: dom.nic.Describe()}
		if m, ok := dom.nic.(interface{ XDPMode() string }); ok {
			in.XDPMode = m.XDPMode()
		}
		if dom.addrs.v4.IsValid() {
			in.Addrs = append(in.Addrs, dom.addrs.v4)
		}
		in.Addrs = append(in.Addrs, dom.addrs.v6...)
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
		Interfaces:           ifaces,
		Log:                  d.log,
		Version:              Version,
	})
	if err != nil {
		return fmt.Errorf("SOCKET_PATH=%q: %w", d.cfg.SocketPath, err)
	}
	d.ctl = srv
	d.wg.Go(func() {
		if err := srv.Serve(context.Background()); err != nil {
			d.log.Error().Err(err).Msg("control socket stopped")
		}
	})
	return nil
}
