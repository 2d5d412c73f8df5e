package daemon

import (
	"fmt"
	"net"

	"github.com/usnetd/usnetd/backends/afxdp"
	"github.com/usnetd/usnetd/firewall"
	"github.com/usnetd/usnetd/internal/config"
	l4 "github.com/usnetd/usnetd/switch"
)

// openBackend claims ifname the way BACKEND says. BACKEND=auto tries
// afxdp and falls back to afpacket where AF_XDP is not available (see
// afxdpUnavailable), saying why in the log.
func (d *daemon) openBackend(ifname string, rules []l4.Rule) (nicBackend, error) {
	switch d.cfg.Backend {
	case config.BackendAFXDP:
		return d.openAFXDP(ifname, rules)
	case config.BackendMacvtap:
		return d.openMacvtap(ifname)
	case config.BackendAFPacket:
		return d.openAFPacket(ifname, rules)
	case config.BackendAuto:
		b, err := d.openAFXDP(ifname, rules)
		if err == nil || !afxdpUnavailable(err) {
			return b, err
		}
		d.log.Warn().Str("interface", ifname).Str("reason", err.Error()).
			Msg("AF_XDP is not available on this interface: falling back to BACKEND=afpacket")
		return d.openAFPacket(ifname, rules)
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
	neigh *neighPort // port with the neighbour tap as its last queue
}

func (d *daemon) openAFXDP(ifname string, rules []l4.Rule) (_ nicBackend, err error) {
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
	fw, err := firewall.Attach(firewall.Options{
		Interface:   ifname,
		XDPMode:     mode,
		NoHostRings: d.cfg.NoHostRings,
		Allow:       allow,
		Log:         d.log,
	})
	if err != nil {
		return nil, fmt.Errorf("eBPF firewall: %w", err)
	}
	defer func() {
		if err != nil {
			_ = fw.Release() // fail closed; with BACKEND=auto, afpacket takes it over
		}
	}()
	port, err := afxdp.Open(afxdp.Options{
		Interface: ifname,
		XSKMap:    fw.XSKMap(),
		ForceCopy: d.cfg.NoZeroCopy,
		Logger:    d.log,
	})
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
	neigh, err := newNeighPort(port, nic.Index)
	if err != nil {
		_ = port.Close()
		return nil, err
	}
	return &afxdpBackend{fw: fw, port: port, neigh: neigh}, nil
}

func (b *afxdpBackend) Describe() string {
	return fmt.Sprintf("afxdp (xdp %s, %s, %d queues)", b.fw.Mode(), b.port.Mode(), b.port.RxQueues())
}

func (b *afxdpBackend) Port() l4.Port { return b.neigh }

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
	perr := b.neigh.Close()
	ferr := b.fw.Release()
	if perr != nil {
		return perr
	}
	return ferr
}

func (b *afxdpBackend) Close() error {
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
