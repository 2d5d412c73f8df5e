package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/firewall"
	"github.com/usnetd/usnetd/internal/config"
	l4 "github.com/usnetd/usnetd/switch"
)

// Following the host's links and addresses.
//
// The follower subscribes to the kernel's link and address events
// (rtnetlink) and, as a safety net for events lost to a full socket
// buffer, looks at every configured NIC once a second (reconcile):
//
//   - A claimed NIC that is deleted (or renamed, or replaced by a new link
//     of its name) is let go: its port leaves the pipeline and its backend
//     closes. The switch domain stays, with its endpoints' channels and
//     rules: they wait for the NIC. While a NIC is gone the daemon is not
//     healthy (no watchdog pings), the status line says which NIC is gone,
//     and usnetd_interface_claimed{interface} is 0.
//   - A link of a configured name that appears is claimed again (firewall,
//     backend, NIC port) and usnetd_interface_reattach_total counts it.
//   - When a claimed NIC's addresses change, applyAddrs puts the
//     DEBUG_PORTS rules on the new addresses (Go table and firewall map)
//     and gives the control server the new list.

// followEvery is the period of the safety-net look at the NICs.
const followEvery = time.Second

// follow runs until ctx is done.
func (d *daemon) follow(ctx context.Context) {
	tick := time.NewTicker(followEvery)
	defer tick.Stop()
	for {
		links := make(chan netlink.LinkUpdate, 64)
		addrs := make(chan netlink.AddrUpdate, 64)
		done := make(chan struct{})
		onErr := func(err error) { d.log.Debug().Err(err).Msg("netlink subscription") }
		var lch <-chan netlink.LinkUpdate
		var ach <-chan netlink.AddrUpdate
		if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
			d.log.Warn().Err(err).Msg("cannot follow link events; looking at the NICs once a second instead")
		} else {
			lch = links
		}
		if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
			d.log.Warn().Err(err).Msg("cannot follow address events; looking at the NICs once a second instead")
		} else {
			ach = addrs
		}
		// What changed before the subscriptions began.
		d.reconcile()
		resubscribe := false
		for !resubscribe {
			select {
			case <-ctx.Done():
				close(done)
				drain(lch, ach)
				return
			case u, ok := <-lch:
				if !ok {
					resubscribe, lch = true, nil
					break
				}
				for _, dom := range d.domains {
					if u.Attrs().Name == dom.ifname || int(u.Index) == d.ifindexOf(dom) {
						d.reconcileDomain(dom)
					}
				}
			case u, ok := <-ach:
				if !ok {
					resubscribe, ach = true, nil
					break
				}
				for _, dom := range d.domains {
					if u.LinkIndex == d.ifindexOf(dom) {
						d.reconcileDomain(dom)
					}
				}
			case <-tick.C:
				d.reconcile()
			}
		}
		// A subscription ended (its socket failed): start both again.
		close(done)
		drain(lch, ach)
		d.log.Warn().Msg("netlink subscription ended; subscribing again")
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// drain reads the channels until the subscriptions' goroutines close them
// (after done closed their sockets), so that none stays blocked on a send.
func drain(lch <-chan netlink.LinkUpdate, ach <-chan netlink.AddrUpdate) {
	if lch != nil {
		for range lch {
		}
	}
	if ach != nil {
		for range ach {
		}
	}
}

func (d *daemon) ifindexOf(dom *domain) int {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	return dom.ifindex
}

func (d *daemon) reconcile() {
	for _, dom := range d.domains {
		d.reconcileDomain(dom)
	}
}

// reconcileDomain brings dom in line with its NIC as the kernel has it now.
func (d *daemon) reconcileDomain(dom *domain) {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	link, err := netlink.LinkByName(dom.ifname)
	var nf netlink.LinkNotFoundError
	if err != nil && !errors.As(err, &nf) && !errors.Is(err, unix.ENODEV) {
		d.log.Warn().Err(err).Str("interface", dom.ifname).Msg("looking up the interface")
		return
	}
	if link == nil {
		if dom.nic != nil {
			d.nicGone(dom, "deleted")
		}
		return
	}
	if dom.nic != nil && link.Attrs().Index != dom.ifindex {
		d.nicGone(dom, fmt.Sprintf("replaced by a new link of its name (ifindex %d, was %d)", link.Attrs().Index, dom.ifindex))
	}
	if dom.nic == nil {
		d.reattach(dom, link)
		return
	}
	if mtu := link.Attrs().MTU; int64(mtu) != dom.mtu.Load() {
		// Frames above what the buffers carry are dropped and counted
		// (rx_oversize, rx_too_long): said once, until the MTU changes.
		if err := d.mtuChanged(dom, mtu); err != nil {
			if msg := err.Error(); msg != dom.lastMTUErr {
				d.log.Error().Err(err).Msg("the interface's new MTU is larger than usnetd carries")
				dom.lastMTUErr = msg
			}
		} else {
			dom.lastMTUErr = ""
		}
	}
	addrs, err := linkAddrs(link)
	if err != nil {
		d.log.Warn().Err(err).Str("interface", dom.ifname).Msg("reading the interface's addresses")
		return
	}
	if !addrs.equal(dom.addrs) {
		if err := d.applyAddrs(dom, addrs); err != nil {
			d.log.Error().Err(err).Str("interface", dom.ifname).Msg("following the interface's addresses")
		}
	}
}

// nicGone lets go of a NIC that the kernel no longer has under its name:
// its ports leave the pipeline, its backend closes, its DEBUG_PORTS rules
// go. The domain and its endpoints stay. dom.mu is held.
func (d *daemon) nicGone(dom *domain, why string) {
	dom.claimed.Store(false)
	dom.goneAt = time.Now()
	d.log.Warn().Str("interface", dom.ifname).Int("ifindex", dom.ifindex).Str("reason", why).
		Msg("interface gone: its endpoints wait for it; it is claimed again when a link of its name appears")
	d.setStatus()
	if err := dom.p.RemovePort(dom.nicPort); err != nil {
		d.log.Warn().Err(err).Str("interface", dom.ifname).Msg("removing the NIC's port")
	}
	if dom.kernel != l4.KernelOwner {
		if err := dom.p.RemovePort(dom.kernel.Port); err != nil {
			d.log.Warn().Err(err).Str("interface", dom.ifname).Msg("removing the kernel's port")
		}
	}
	// The old addresses' DEBUG_PORTS go, from the table and the firewall.
	if err := d.applyAddrs(dom, ifAddrs{}); err != nil {
		d.log.Warn().Err(err).Str("interface", dom.ifname).Msg("removing the DEBUG_PORTS rules of a gone interface")
	}
	// The firewall's links went with the link. afxdp and afpacket keep the
	// loaded firewall for the NIC's return (moving it there takes a few
	// system calls; a new one would take the verifier's time); macvtap's
	// helper links and routes are removed.
	if k, ok := dom.nic.(interface {
		keepFirewall() (*firewall.Firewall, error)
	}); ok {
		fw, err := k.keepFirewall()
		if err != nil {
			d.log.Info().Err(err).Str("interface", dom.ifname).Msg("closing the ports of a gone interface")
		}
		dom.keptFW = fw
	} else if err := dom.nic.Close(); err != nil {
		d.log.Info().Err(err).Str("interface", dom.ifname).Msg("closing the backend of a gone interface")
	}
	dom.nic, dom.ifindex, dom.lastErr = nil, 0, ""
	dom.kernel = l4.KernelOwner
}

// reattach claims link, a NIC that appeared under dom's name. A failure is
// logged (once per distinct error) and tried again at the next event or
// second. dom.mu is held.
func (d *daemon) reattach(dom *domain, link netlink.Link) {
	if err := d.attachNIC(dom, link, false); err != nil {
		if msg := err.Error(); msg != dom.lastErr {
			dom.lastErr = msg
			d.log.Error().Err(err).Str("interface", dom.ifname).Msg("claiming the interface again failed; retrying")
		}
		return
	}
	dom.reattaches.Add(1)
	dom.lastErr = ""
	ev := d.log.Info().Str("interface", dom.ifname).Int("ifindex", dom.ifindex)
	if !dom.goneAt.IsZero() {
		ev = ev.Dur("gone_for", time.Since(dom.goneAt))
	}
	ev.Msg("interface claimed again")
	d.setStatus()
}

// applyAddrs makes addrs the addresses of dom's NIC: the DEBUG_PORTS
// rules move to them (added before the old ones go, in the Go table and
// the firewall's map), and the control server's list (QueryUsedPorts)
// follows. dom.mu is held.
//
// This is the one place where the NIC's addresses change: what else must
// follow them (the switch's local addresses and MACs) is set here.
func (d *daemon) applyAddrs(dom *domain, addrs ifAddrs) error {
	rules, missing, err := kernelRules(d.cfg.DebugPorts, dom.ifname, addrs)
	if err != nil {
		return err
	}
	for i := range rules {
		rules[i].Owner = dom.kernel
	}
	var errs []error
	for _, r := range rules {
		if err := dom.sw.Table.Insert(r); err != nil && !errors.Is(err, l4.ErrExists) {
			errs = append(errs, fmt.Errorf("DEBUG_PORTS rule %v: %w", r.Key, err))
			continue
		}
		if dom.nic != nil {
			if err := dom.nic.AllowKernel(r.Key, true); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, old := range dom.rules {
		if slices.ContainsFunc(rules, func(r l4.Rule) bool { return r.Key == old.Key && r.Owner == old.Owner }) {
			continue
		}
		dom.sw.Table.Remove(old.Key, old.Owner.Port)
		if dom.nic != nil {
			if err := dom.nic.RevokeKernel(old.Key); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := d.followPipes(dom, addrs); err != nil {
		errs = append(errs, err)
	}
	changed := !addrs.equal(dom.addrs) || len(dom.rules) != len(rules)
	dom.rules, dom.addrs = rules, addrs
	if d.ctl != nil {
		d.ctl.SetAddrs(dom.ifname, addrs.all)
	}
	// What endpoints may send as: the NIC's MAC (a re-created NIC may have
	// a new one, set by attachNIC before it calls this) and ADD_MACS; every
	// address of the NIC (link-local included) and ENDPOINT_ADDRS.
	dom.sw.SetLocal(d.localMACs(dom), d.localAddrs(dom, addrs))
	if changed {
		ev := d.log.Info().Str("interface", dom.ifname).Stringers("addresses", addrStringers(addrs.list())).
			Int("kernel_rules", len(rules))
		if len(missing) > 0 {
			ev = ev.Str("without_address", specList(missing))
		}
		ev.Msg("interface addresses: DEBUG_PORTS follow")
	}
	return errors.Join(errs...)
}

func addrStringers[T fmt.Stringer](as []T) []fmt.Stringer {
	out := make([]fmt.Stringer, len(as))
	for i, a := range as {
		out[i] = a
	}
	return out
}

func specList(specs []config.PortSpec) string {
	s := make([]string, len(specs))
	for i, p := range specs {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// setStatus sends the status line (systemd's STATUS=) when it changed.
func (d *daemon) setStatus() {
	if d.status == nil {
		return
	}
	var up, gone []string
	for _, dom := range d.domains {
		if dom.claimed.Load() {
			up = append(up, dom.ifname)
		} else {
			gone = append(gone, dom.ifname)
		}
	}
	st := "serving " + strings.Join(up, ", ")
	if len(gone) > 0 {
		st = "unhealthy: interface " + strings.Join(gone, ", ") + " gone, waiting for it to come back (endpoints stay attached)"
		if len(up) > 0 {
			st += "; serving " + strings.Join(up, ", ")
		}
	}
	d.statusMu.Lock()
	defer d.statusMu.Unlock()
	if st != d.lastStatus {
		d.lastStatus = st
		d.status(st)
	}
}

// claimCollector exports whether each NIC is claimed and how often it was
// claimed again.
type claimCollector struct{ d *daemon }

var (
	descClaimed = prometheus.NewDesc("usnetd_interface_claimed",
		"1 while the interface is claimed (firewall and backend attached), 0 while it is gone.", []string{"interface"}, nil)
	descReattach = prometheus.NewDesc("usnetd_interface_reattach_total",
		"Times the interface was claimed again after it was deleted and re-created.", []string{"interface"}, nil)
)

func (c claimCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descClaimed
	ch <- descReattach
}

func (c claimCollector) Collect(ch chan<- prometheus.Metric) {
	for _, dom := range c.d.domains {
		v := 0.0
		if dom.claimed.Load() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descClaimed, prometheus.GaugeValue, v, dom.ifname)
		ch <- prometheus.MustNewConstMetric(descReattach, prometheus.CounterValue, float64(dom.reattaches.Load()), dom.ifname)
	}
}

// localMACs are the MACs endpoints may use: the NIC's and ADD_MACS.
func (d *daemon) localMACs(dom *domain) []l4.MAC {
	macs := slices.Clone(d.cfg.AddMACs)
	if len(dom.mac) == 6 {
		var m l4.MAC
		copy(m[:], dom.mac)
		macs = append([]l4.MAC{m}, macs...)
	}
	return macs
}

// localAddrs are the addresses endpoints may use: the NIC's and the
// ENDPOINT_ADDRS granted on it.
func (d *daemon) localAddrs(dom *domain, addrs ifAddrs) []l4.Addr {
	var local []l4.Addr
	for _, a := range append(slices.Clone(addrs.all), d.cfg.EndpointAddrsOf(dom.ifname)...) {
		local = append(local, l4.AddrFromNetip(a))
	}
	return local
}
