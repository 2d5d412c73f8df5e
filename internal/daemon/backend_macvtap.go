package daemon

import (
	"fmt"

	"github.com/usnetd/usnetd/backends/macvtap"
	l4 "github.com/usnetd/usnetd/switch"
)

// macvtapBackend: a passthru macvtap carries the NIC's frames, and the
// kernel gets a TAP in the NIC's place, with the NIC's routes. The TAP is
// a switch port of its own (kernelPortBackend): the kernel is switched
// like an endpoint, its connections are learned by the switch as rules
// owned by that port, and DEBUG_PORTS rules are that port's too.
type macvtapBackend struct {
	claim  *macvtap.Claim
	table  *l4.Table // set by AttachKernel
	kernel l4.Owner  // the TAP's port
}

func (d *daemon) openMacvtap(ifname string) (nicBackend, error) {
	c, err := macvtap.Open(macvtap.Options{
		Interface: ifname,
		Queues:    d.cfg.Workers, // 0: the backend's default
		NoKernel:  d.cfg.NoHostRings,
		Logger:    d.log,
	})
	if err != nil {
		return nil, fmt.Errorf("macvtap: %w", err)
	}
	return &macvtapBackend{claim: c}, nil
}

func (b *macvtapBackend) Describe() string {
	mv, tap := b.claim.Names()
	s := fmt.Sprintf("macvtap (%s via %s, %d queues", mv, b.claim.CharDevice(), b.claim.NIC().RxQueues())
	if b.claim.Kernel() == nil {
		return s + ", no kernel path)"
	}
	return s + fmt.Sprintf(", kernel on %s with %d routes)", tap, b.claim.MovedRoutes())
}

func (b *macvtapBackend) Port() l4.Port { return b.claim.NIC() }

// MaxFrame: a read takes as much as the buffer holds, and a longer frame
// is counted (RxTooLong); only the buffers bound it.
func (b *macvtapBackend) MaxFrame() int { return 0 }

func (b *macvtapBackend) Name() string { return "macvtap" }

// Drops: the macvtap's (from and to the NIC) and the TAP's (from and to
// the kernel) counters.
func (b *macvtapBackend) Drops() map[string]uint64 {
	d := map[string]uint64{}
	add := func(prefix string, st macvtap.Stats) {
		d[prefix+"rx_too_long"] += st.RxTooLong
		d[prefix+"rx_error"] += st.RxErrors
		d[prefix+"tx_dropped"] += st.TxDropped
		d[prefix+"tx_error"] += st.TxErrors
	}
	add("", b.claim.NIC().Stats())
	if k := b.claim.Kernel(); k != nil {
		add("kernel_", k.Stats())
	}
	return d
}

// AttachKernel adds the TAP's port to the pipeline. The TAP has the NIC's
// MAC, which claim puts in the local-MAC set: endpoints' frames to the
// kernel are switched locally from the start. Without a kernel path (NO_HOST_RINGS) there is no port, and the
// kernel's rules stay l4.KernelOwner's: frames for them are dropped.
func (b *macvtapBackend) AttachKernel(p *l4.Pipeline) (l4.Owner, error) {
	if b.claim.Kernel() == nil {
		return l4.KernelOwner, nil
	}
	o, err := p.AddPort(b.claim.Kernel())
	if err != nil {
		return l4.Owner{}, fmt.Errorf("macvtap: kernel port: %w", err)
	}
	b.table, b.kernel = p.Switch().Table, o
	return o, nil
}

// LearnedKernel is nil: the switch learns the kernel's connections itself.
func (b *macvtapBackend) LearnedKernel() ([]l4.Key, error) { return nil, nil }

// Expire removes the learned rules of the kernel's port whose socket is
// gone (and those without ports, which isOpen never holds open).
func (b *macvtapBackend) Expire(isOpen func(l4.Key) bool) (int, error) {
	if b.table == nil {
		return 0, nil
	}
	return expireLearned(b.table, b.kernel, isOpen), nil
}

func expireLearned(t *l4.Table, kernel l4.Owner, isOpen func(l4.Key) bool) int {
	return t.RemoveIf(func(r l4.Rule) bool {
		return r.Owner == kernel && r.Kind == l4.Learned && !r.Sticky && !isOpen(r.Key)
	})
}

// AllowKernel and RevokeKernel: the switch is the kernel's firewall here,
// and the table holds the rules already.
func (b *macvtapBackend) AllowKernel(l4.Key, bool) error { return nil }
func (b *macvtapBackend) RevokeKernel(l4.Key) error      { return nil }

func (b *macvtapBackend) Close() error { return b.claim.Close() }

// Release leaves the macvtap and the TAP: nobody reads the macvtap, so the
// kernel is cut off from the NIC until the next claim repairs them.
func (b *macvtapBackend) Release() error {
	b.claim.Leave()
	return nil
}
