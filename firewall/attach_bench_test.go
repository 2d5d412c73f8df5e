package firewall

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/usnetd/usnetd/internal/netlab"
)

// BenchmarkAttach: what putting the firewall on a NIC costs. "attach" is
// a fresh Attach (load, verify, attach, pin) and Close; "reattach" is
// Reattach onto a NIC deleted and made again under its name (the
// re-creation is not timed), what usnetd does when a NIC comes back;
// "load only" is loading the objects without attaching: the verifier's
// share of "attach".
func BenchmarkAttach(b *testing.B) {
	lab, err := netlab.New(b, "")
	if err != nil {
		b.Fatal(err)
	}
	host, err := lab.AddNS("host")
	if err != nil {
		b.Fatal(err)
	}
	peer, err := lab.AddNS("peer")
	if err != nil {
		b.Fatal(err)
	}
	ifname := lab.Name() + "h"
	veth := func() {
		if _, err := lab.Veth(host, ifname, peer, "eth0", netlab.VethOpts{Up: true}); err != nil {
			b.Fatal(err)
		}
	}
	veth()
	attach := func(hook Hook) *Firewall {
		var fw *Firewall
		if err := host.Do(func() (err error) {
			fw, err = Attach(Options{Interface: ifname, Hook: hook})
			return err
		}); err != nil {
			b.Fatal(err)
		}
		return fw
	}
	for _, hook := range []Hook{HookXDP, HookTC} {
		b.Run("attach/"+string(hook), func(b *testing.B) {
			for b.Loop() {
				if err := attach(hook).Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("reattach/"+string(hook), func(b *testing.B) {
			fw := attach(hook)
			defer fw.Close()
			for b.Loop() {
				b.StopTimer()
				lk, err := host.Link(ifname)
				if err != nil {
					b.Fatal(err)
				}
				if err := host.Do(func() error { return netlink.LinkDel(lk) }); err != nil {
					b.Fatal(err)
				}
				veth()
				b.StartTimer()
				if err := host.Do(fw.Reattach); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("load only", func(b *testing.B) {
		for b.Loop() {
			spec, err := loadBpf()
			if err != nil {
				b.Fatal(err)
			}
			var objs bpfObjects
			if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{}); err != nil {
				b.Fatal(err)
			}
			objs.Close()
		}
	})
}
