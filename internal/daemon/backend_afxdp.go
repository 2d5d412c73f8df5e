package daemon

import (
	"errors"
	"fmt"
	"net"

	"github.com/usnetd/usnetd/backends/afxdp"
	"github.com/usnetd/usnetd/backends/neightap"
	"github.com/usnetd/usnetd/firewall"
	"github.com/usnetd/usnetd/internal/config"
	l4 "github.com/usnetd/usnetd/switch"
)

// openBackend claims ifname the way BACKEND says. BACKEND=auto tries
// afxdp and falls back to afpacket where AF_XDP is not available (see
// afxdpUnavailable), saying why in the log.
//
// frame is the longest frame the NIC's MTU makes: the backend carries it
// or fails saying so. kept, if not nil, is the firewall of a NIC of this
// name that was deleted (keptFirewall): it is moved onto the NIC now of
// that name (Firewall.Reattach, no new load) and used instead of a new
// one; the backend owns it from here on, whatever happens.
func (d *daemon) openBackend(ifname string, rules []l4.Rule, frame int, kept *firewall.Firewall) (nicBackend, error) {
	if kept != nil {
		for _, r := range rules { // in the map before the program meets the new NIC
			if err := kept.AllowKernel(r.Key, r.Sticky); err != nil {
				d.log.Warn().Err(err).Str("interface", ifname).Msg("DEBUG_PORTS rule into the kept firewall")
			}
		}
		if err := kept.Reattach(); err != nil {
			d.log.Warn().Err(err).Str("interface", ifname).Msg("cannot move the firewall onto the re-created interface; attaching a new one")
			_ = kept.Close()
			kept = nil
		}
	}
	if kept != nil {
		if kept.Hook() == firewall.HookTC {
			return d.openAFPacket(ifname, rules, frame, kept)
		}
		return d.openAFXDP(ifname, rules, frame, kept)
	}
	switch d.cfg.Backend {
	case config.BackendAFXDP:
		return d.openAFXDP(ifname, rules, frame, nil)
	case config.BackendMacvtap:
		return d.openMacvtap(ifname)
	case config.BackendAFPacket:
		return d.openAFPacket(ifname, rules, frame, nil)
	case config.BackendAuto:
		b, err := d.openAFXDP(ifname, rules, frame, nil)
		if err == nil || !afxdpUnavailable(err) {
			return b, err
		}
		d.log.Warn().Str("interface", ifname).Str("reason", err.Error()).
			Msg("AF_XDP is not available on this interface: falling back to BACKEND=afpacket")
		return d.openAFPacket(ifname, rules, frame, nil)
	default:
		return nil, fmt.Errorf("BACKEND=%s is not available in this version of usnetd (use afxdp, afpacket, macvtap or auto)", d.cfg.Backend)
	}
}

// afxdpBackend: the XDP classifier passes the kernel's frames to the kernel
// and redirects the rest to one AF_XDP socket per queue; the TCX egress
// learner teaches the kernel-allow map the kernel's own connections.
type afxdpBackend struct {
	fw    *firewall.Firewall
	port  *afxdp.Port
	neigh *neightap.Port // port with the neighbour tap as its last queue
	host  *hostPath      // the kernel's port; nil with NO_HOST_RINGS
}

func (d *daemon) openAFXDP(ifname string, rules []l4.Rule, frame int, fw *firewall.Firewall) (_ nicBackend, err error) {
	// Frames longer than a UMEM chunk: multi-buffer sockets, and an XDP
	// program that takes frames in several buffers.
	multi := frame > afxdp.DefaultFrameSize-afxdp.Headroom
	if fw == nil {
		allow := make([]firewall.Allowed, 0, len(rules))
		for _, r := range rules {
			allow = append(allow, firewall.Allowed{Key: r.Key, Sticky: r.Sticky})
		}
		mode := ""
		switch d.cfg.XDPMode {
		case "native":
			mode = firewall.ModeNative
		case "generic":
			mode = firewall.ModeGeneric
		}
		fw, err = firewall.Attach(firewall.Options{
			Interface:   ifname,
			XDPMode:     mode,
			MultiBuffer: multi,
			NoHostRings: d.cfg.NoHostRings,
			Allow:       allow,
			Log:         d.log,
		})
		if err != nil {
			return nil, fmt.Errorf("eBPF firewall: %w", err)
		}
	}
	defer func() {
		if err != nil {
			_ = fw.Release() // fail closed; with BACKEND=auto, afpacket takes it over
		}
	}()
	maxFrame := 0 // the default: one UMEM chunk
	if multi {
		maxFrame = frame
	}
	port, err := afxdp.Open(afxdp.Options{
		Interface: ifname,
		MaxFrame:  maxFrame,
		XSKMap:    fw.XSKMap(),
		ForceCopy: d.cfg.NoZeroCopy,
		Logger:    d.log,
	})
	if errors.Is(err, afxdp.ErrFrameSize) {
		return nil, fmt.Errorf("AF_XDP: %w: MTU %d: %w", ErrMTU, frame-ethHeader-vlanTag, err)
	}
	if err != nil {
		return nil, fmt.Errorf("AF_XDP: %w", err)
	}
	if w := d.cfg.Workers; w != 0 && w != port.RxQueues() {
		_ = port.Close()
		return nil, fmt.Errorf("WORKERS=%d, but %s has %d queues: with AF_XDP every queue needs its worker; "+
			"set WORKERS=0, or change the queues with `ethtool -L %s combined %d`", w, ifname, port.RxQueues(), ifname, w)
	}
	nic, err := net.InterfaceByName(ifname)
	if err != nil {
		_ = port.Close()
		return nil, err
	}
	neigh, err := neightap.New(port, nic.Index)
	if err != nil {
		_ = port.Close()
		return nil, err
	}
	host, err := d.openHostPath(ifname, fw)
	if err != nil {
		_ = neigh.Close()
		return nil, err
	}
	return &afxdpBackend{fw: fw, port: port, neigh: neigh, host: host}, nil
}

// AttachKernel adds the host path's port to the pipeline.
func (b *afxdpBackend) AttachKernel(p *l4.Pipeline) (l4.Owner, error) {
	return attachHostPath(b.host, p)
}

func (b *afxdpBackend) Describe() string {
	return fmt.Sprintf("afxdp (xdp %s, %s, %d queues)", b.fw.Mode(), b.port.Mode(), b.port.RxQueues())
}

func (b *afxdpBackend) Port() l4.Port { return b.neigh }

func (b *afxdpBackend) MaxFrame() int { return b.port.MaxFrame() }

func (b *afxdpBackend) Name() string { return "afxdp" }

// Drops: the sockets' kernel counters (XDP_STATISTICS) and the port's own,
// and the frames the XDP program had no socket for.
func (b *afxdpBackend) Drops() map[string]uint64 {
	d := map[string]uint64{}
	for _, q := range b.port.Stats() {
		d["rx_kernel_dropped"] += q.RxDropped
		d["rx_ring_full"] += q.RxRingFull
		d["rx_invalid_desc"] += q.RxInvalidDescs + q.RxBadDesc
		d["rx_oversize"] += q.RxOversize
		d["tx_invalid_desc"] += q.TxInvalidDescs
		d["tx_dropped"] += q.TxDropped
		d["tx_full"] += q.TxFull
	}
	d["no_socket"] = 0
	if c, err := b.fw.Counters(); err == nil {
		d["no_socket"] = c["dropped_no_xsk"]
	}
	b.host.addDrops(d)
	return d
}

// XDPMode is the XDP attach mode in use ("native" or "generic").
func (b *afxdpBackend) XDPMode() string { return b.fw.Mode() }

func (b *afxdpBackend) LearnedKernel() ([]l4.Key, error) {
	es, err := b.fw.KernelEntries()
	if err != nil {
		return nil, err
	}
	keys := []l4.Key{}
	for _, e := range es {
		if e.Learned {
			keys = append(keys, e.Key)
		}
	}
	return keys, nil
}

func (b *afxdpBackend) Expire(isOpen func(l4.Key) bool) (int, error) {
	return b.fw.ExpireLearned(isOpen)
}

func (b *afxdpBackend) AllowKernel(k l4.Key, sticky bool) error { return b.fw.AllowKernel(k, sticky) }

func (b *afxdpBackend) RevokeKernel(k l4.Key) error { return revokeKernel(b.fw, k) }

// Release closes the AF_XDP sockets (the kernel takes them out of the
// XSKMAP: usnetd's frames are dropped) and leaves the firewall attached.
func (b *afxdpBackend) Release() error {
	_ = b.host.close(b.fw)
	perr := b.neigh.Close()
	ferr := b.fw.Release()
	if perr != nil {
		return perr
	}
	return ferr
}

// keepFirewall closes the AF_XDP sockets and the neighbour tap of a NIC
// that is gone and hands over the firewall, still loaded, for the NIC's
// return.
func (b *afxdpBackend) keepFirewall() (*firewall.Firewall, error) {
	_ = b.host.close(b.fw)
	return b.fw, b.neigh.Close()
}

func (b *afxdpBackend) Close() error {
	_ = b.host.close(b.fw)
	perr := b.neigh.Close() // and the AF_XDP port
	ferr := b.fw.Close()
	if perr != nil {
		return perr
	}
	return ferr
}

// newInventory reads the kernel's sockets once and answers whether a
// learned tuple is still backed by one.
func newInventory() (func(l4.Key) bool, error) {
	inv, err := firewall.NewInventory()
	if err != nil {
		return nil, err
	}
	defer inv.Close()
	if err := inv.Refresh(); err != nil {
		return nil, err
	}
	return inv.IsOpen, nil
}

func (b *afxdpBackend) firewall() *firewall.Firewall { return b.fw }
