package firewall

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/usnetd/usnetd/internal/netlab"
	l4 "github.com/usnetd/usnetd/switch"
)

// BenchmarkXDPClassify times the XDP classifier per frame with
// BPF_PROG_TEST_RUN (the kernel repeats the program b.N times on one frame
// and reports the mean), on frames of each kind of decision, beside a
// baseline in the same run: the classifier as it was before the endpoint
// rules and the differential fixes (testdata/classifier_before.o, built
// from this package's C at that time: direct packet access, six extension
// headers, kernel maps only).
func BenchmarkXDPClassify(b *testing.B) {
	netlab.Require(b)
	now := loadObjects(b, false)
	before := loadBefore(b)
	h4, p4 := addr(host4), addr(peer4)
	kernelRules := []l4.Key{l4.ListenKey(h4, l4.ProtoTCP, 22)}
	learned := []l4.Key{l4.FlowKey(h4, 40000, p4, 80, l4.ProtoTCP)}
	for _, k := range kernelRules {
		for _, m := range []*ebpf.Map{now.KernelRules, before.Maps["kernel_rules"]} {
			if err := m.Put(keyOf(k), valueOf(false, false, monotonicNow())); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, k := range learned {
		for _, m := range []*ebpf.Map{now.KernelLearned, before.Maps["kernel_learned"]} {
			if err := m.Put(keyOf(k), valueOf(false, true, monotonicNow())); err != nil {
				b.Fatal(err)
			}
		}
	}
	endpointRule(b, now, l4.ListenKey(h4, l4.ProtoUDP, 9999))
	frames := []struct {
		name  string
		frame []byte
	}{
		{"tcp-listening", tcpFrame(b, peer4, 50000, host4, 22, frameOpts{})},
		{"tcp-learned", tcpFrame(b, peer4, 80, host4, 40000, frameOpts{tcpFlags: "A"})},
		{"udp-userspace", udpFrame(b, peer4, 53, host4, 9999, frameOpts{})},
		{"icmp-error", icmpErrorFrame(b, other4, host4, stripEth(tcpFrame(b, host4, 40000, peer4, 80, frameOpts{})))},
		{"v6-4-ext-headers", tcpFrame(b, peer6, 50000, host6, 22, frameOpts{ext6: extChain(4)})},
	}
	for _, v := range []struct {
		name string
		prog *ebpf.Program
	}{{"before", before.Programs["usnetd_xdp"]}, {"now", now.UsnetdXdp}} {
		for _, f := range frames {
			b.Run(v.name+"/"+f.name, func(b *testing.B) {
				_, d, err := v.prog.Benchmark(f.frame, b.N, b.ResetTimer)
				if err != nil {
					b.Fatal(err)
				}
				ns := float64(d.Nanoseconds())
				b.ReportMetric(ns, "ns/frame")
				if ns > 0 {
					b.ReportMetric(1e3/ns, "Mpps")
				}
			})
		}
	}
}

func loadBefore(b *testing.B) *ebpf.Collection {
	spec, err := ebpf.LoadCollectionSpec("testdata/classifier_before.o")
	if err != nil {
		b.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(coll.Close)
	return coll
}

// BenchmarkEgressHostPath times the egress program per frame of the
// kernel's (a TCP segment of a learned flow, to the wire) without a host
// path, with one and no ADD_MACS, and with ADD_MACS (the endpoint_macs
// lookup that every outgoing frame then pays), in the same run.
func BenchmarkEgressHostPath(b *testing.B) {
	netlab.Require(b)
	objs := loadObjects(b, false)
	h4, p4 := addr(host4), addr(peer4)
	if err := objs.KernelLearned.Put(keyOf(l4.FlowKey(h4, 40000, p4, 80, l4.ProtoTCP)), valueOf(false, true, monotonicNow())); err != nil {
		b.Fatal(err)
	}
	frame := tcpFrame(b, host4, 40000, peer4, 80, frameOpts{tcpFlags: "A"})
	for _, v := range []struct {
		name string
		macs uint32
	}{{"no_host_path", 0}, {"host_path", 0}, {"host_path_add_macs", 1}} {
		name := v.name
		if name != "no_host_path" {
			if err := objs.HostPort.Put(uint32(0), &bpfHostPort{TapIfindex: 1, NicIfindex: 1, Macs: v.macs}); err != nil {
				b.Fatal(err)
			}
			if err := objs.EndpointMacs.Put(&bpfMacKey{Mac: [6]byte{2, 0, 0x5e, 0, 0, 1}}, uint32(0)); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(name, func(b *testing.B) {
			ret, d, err := objs.UsnetdLearn.Benchmark(frame, b.N, b.ResetTimer)
			if err != nil {
				b.Fatal(err)
			}
			if int32(ret) != -1 { // TCX_NEXT: to the wire
				b.Fatalf("egress verdict %d, want TCX_NEXT", int32(ret))
			}
			ns := float64(d.Nanoseconds())
			b.ReportMetric(ns, "ns/frame")
			if ns > 0 {
				b.ReportMetric(1e3/ns, "Mpps")
			}
		})
	}
}
