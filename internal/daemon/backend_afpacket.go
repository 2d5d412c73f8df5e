package daemon

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/afpacket"
	"github.com/usnetd/usnetd/backends/afxdp"
	"github.com/usnetd/usnetd/firewall"
	l4 "github.com/usnetd/usnetd/switch"
)

// afpacketBackend: packet sockets read every frame of the NIC (TPACKET_V3
// rings in a fanout group, one per worker); the firewall's TCX ingress
// program, which runs after the packet taps, lets the kernel see only its
// own frames; the TCX egress learner teaches the kernel-allow map the
// kernel's own connections, as with afxdp.
type afpacketBackend struct {
	fw   *firewall.Firewall
	port *afpacket.Port
	host *hostPath // the kernel's port; nil with NO_HOST_RINGS
}

func (d *daemon) openAFPacket(ifname string, rules []l4.Rule, frame int, fw *firewall.Firewall) (_ nicBackend, err error) {
	if fw == nil {
		allow := make([]firewall.Allowed, 0, len(rules))
		for _, r := range rules {
			allow = append(allow, firewall.Allowed{Key: r.Key, Sticky: r.Sticky})
		}
		fw, err = firewall.Attach(firewall.Options{
			Interface:   ifname,
			Hook:        firewall.HookTC,
			NoHostRings: d.cfg.NoHostRings,
			Allow:       allow,
			Log:         d.log,
		})
		if err != nil {
			return nil, fmt.Errorf("eBPF firewall (tc ingress): %w", err)
		}
	}
	defer func() {
		if err != nil {
			_ = fw.Release() // fail closed
		}
	}()
	// The kernel's own frames stay out of the packet sockets: a socket
	// filter over the firewall's kernel maps drops them before they are
	// copied (the sockets keep the program; the loader's reference goes).
	sf, err := fw.SocketFilter()
	if err != nil {
		return nil, fmt.Errorf("eBPF socket filter: %w", err)
	}
	defer sf.Close()
	port, err := afpacket.Open(afpacket.Options{
		Filter:    sf.Program(),
		Interface: ifname,
		Workers:   d.cfg.Workers, // any number: the fanout group spreads flows over them
		MaxFrame:  frame,
		Logger:    d.log,
	})
	if errors.Is(err, afpacket.ErrFrameSize) {
		return nil, fmt.Errorf("AF_PACKET: %w: MTU %d: %w", ErrMTU, frame-ethHeader-vlanTag, err)
	}
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET: %w", err)
	}
	host, err := d.openHostPath(ifname, fw)
	if err != nil {
		_ = port.Close()
		return nil, err
	}
	return &afpacketBackend{fw: fw, port: port, host: host}, nil
}

// AttachKernel adds the host path's port to the pipeline.
func (b *afpacketBackend) AttachKernel(p *l4.Pipeline) (l4.Owner, error) {
	return attachHostPath(b.host, p)
}

func (b *afpacketBackend) Describe() string {
	return fmt.Sprintf("afpacket (tc ingress, %d workers in fanout group %d, block timeout %v, tx sendmmsg)",
		b.port.RxQueues(), b.port.FanoutID(), b.port.BlockTimeout())
}

func (b *afpacketBackend) Port() l4.Port { return b.port }

func (b *afpacketBackend) MaxFrame() int { return b.port.MaxFrame() }

func (b *afpacketBackend) Name() string { return "afpacket" }

// Drops: the packet sockets' kernel counter (PACKET_STATISTICS tp_drops:
// the ring was full) and the port's own.
func (b *afpacketBackend) Drops() map[string]uint64 {
	st := b.port.Stats()
	d := map[string]uint64{}
	for _, q := range st.Queues {
		d["rx_ring_full"] += q.Drops
		d["rx_oversize"] += q.RxOversize
		d["rx_truncated"] += q.RxTruncated
		d["rx_bad_frame"] += q.RxBadFrame
		d["rx_gso_bad"] += q.RxGSOBad
	}
	d["tx_dropped"] = st.Tx.Dropped
	d["tx_full"] = st.Tx.Full
	b.host.addDrops(d)
	return d
}

func (b *afpacketBackend) LearnedKernel() ([]l4.Key, error) { return learnedKernel(b.fw) }

func (b *afpacketBackend) Expire(isOpen func(l4.Key) bool) (int, error) {
	return b.fw.ExpireLearned(isOpen)
}

func (b *afpacketBackend) AllowKernel(k l4.Key, sticky bool) error {
	return b.fw.AllowKernel(k, sticky)
}

func (b *afpacketBackend) RevokeKernel(k l4.Key) error { return revokeKernel(b.fw, k) }

// Release closes the packet sockets and leaves the firewall attached: its
// TCX ingress program drops what is not the kernel's.
func (b *afpacketBackend) Release() error {
	_ = b.host.close(b.fw)
	perr := b.port.Close()
	ferr := b.fw.Release()
	if perr != nil {
		return perr
	}
	return ferr
}

// keepFirewall closes the packet sockets of a NIC that is gone and hands
// over the firewall, still loaded, for the NIC's return.
func (b *afpacketBackend) keepFirewall() (*firewall.Firewall, error) {
	_ = b.host.close(b.fw)
	return b.fw, b.port.Close()
}

func (b *afpacketBackend) Close() error {
	_ = b.host.close(b.fw)
	perr := b.port.Close()
	ferr := b.fw.Close()
	if perr != nil {
		return perr
	}
	return ferr
}

// revokeKernel removes k from the firewall's maps; an absent key is no
// error (it is gone either way).
func revokeKernel(fw *firewall.Firewall, k l4.Key) error {
	if err := fw.RevokeKernel(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// learnedKernel returns the keys the firewall's egress learner wrote.
func learnedKernel(fw *firewall.Firewall) ([]l4.Key, error) {
	es, err := fw.KernelEntries()
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

// afxdpUnavailable tells, for BACKEND=auto, an error of openAFXDP that
// means "no AF_XDP here" (fall back to afpacket) from one that would stop
// afpacket as well or that the operator must see (a wrong WORKERS, an
// interface that does not exist, a firewall held by another usnetd):
//
//   - the kernel has no AF_XDP (socket(AF_XDP) gives EAFNOSUPPORT) or lacks
//     a feature the socket needs (afxdp.ErrNotSupported);
//   - the XDP program could not be attached: the driver refused native
//     and generic mode, or another program holds the interface's XDP hook
//     (firewall.ErrAttachXDP);
//   - the driver refused the AF_XDP socket (EOPNOTSUPP from bind or a
//     socket option);
//   - AF_XDP cannot carry the NIC's frames (afxdp.ErrFrameSize: an MTU
//     above what multi-buffer sockets hold, or a driver without them).
func afxdpUnavailable(err error) bool {
	return errors.Is(err, afxdp.ErrNotSupported) ||
		errors.Is(err, afxdp.ErrFrameSize) ||
		errors.Is(err, firewall.ErrAttachXDP) ||
		errors.Is(err, unix.EAFNOSUPPORT) ||
		errors.Is(err, unix.EOPNOTSUPP)
}

func (b *afpacketBackend) firewall() *firewall.Firewall { return b.fw }
