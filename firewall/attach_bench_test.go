package firewall

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/usnetd/usnetd/internal/netlab"
)

// BenchmarkAttach: what claiming a NIC costs on the firewall's side
// (loading and verifying the programs, attaching and pinning them), which
// is most of the time usnetd needs to claim a re-created NIC; beside it,
// loading the objects without attaching (the verifier's share).
func BenchmarkAttach(b *testing.B) {
	for _, hook := range []Hook{HookXDP, HookTC} {
		b.Run("attach+close/"+string(hook), func(b *testing.B) {
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
			if _, err := lab.Veth(host, ifname, peer, "eth0", netlab.VethOpts{Up: true}); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				var fw *Firewall
				if err := host.Do(func() (err error) {
					fw, err = Attach(Options{Interface: ifname, Hook: hook})
					return err
				}); err != nil {
					b.Fatal(err)
				}
				if err := fw.Close(); err != nil {
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
