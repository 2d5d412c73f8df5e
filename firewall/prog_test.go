package firewall

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/usnetd/usnetd/internal/netlab"
	l4 "github.com/usnetd/usnetd/switch"
)

// Verdicts of the two ingress hooks (the XDP classifier and the TCX
// ingress filter, which share their decision) and of the learner, checked
// with BPF_PROG_TEST_RUN on crafted frames: no interface, no namespace.
// The XSKMAP is empty, so "to userspace" shows as XDP_DROP with
// dropped_no_xsk counted in XDP, and as TC_ACT_SHOT with tc_dropped in TC.

const (
	xdpDrop   = 1
	xdpPass   = 2
	tcActShot = 2
	tcxNext   = 0xffffffff // TCX_NEXT (-1) as the u32 that test runs return
)

// An ingress hook as the tests see it: its program, its two verdicts and
// the counter of frames the kernel does not get.
type hookProg struct {
	name       string
	prog       func(*bpfObjects) *ebpf.Program
	pass, drop uint32
	dropped    string
}

var hookProgs = []hookProg{
	{"xdp", func(o *bpfObjects) *ebpf.Program { return o.UsnetdXdp }, xdpPass, xdpDrop, "dropped_no_xsk"},
	{"tc", func(o *bpfObjects) *ebpf.Program { return o.UsnetdTcIngress }, tcxNext, tcActShot, "tc_dropped"},
}

// forHooks runs f once per ingress hook, each with objects of its own.
func forHooks(t *testing.T, noHostRings bool, f func(t *testing.T, h hookProg, objs *bpfObjects)) {
	for _, h := range hookProgs {
		t.Run(h.name, func(t *testing.T) { f(t, h, loadObjects(t, noHostRings)) })
	}
}

// verdict runs the hook's program on frame and reports whether the kernel
// gets the frame; it fails the test on any other return value, and checks
// that the frame counted in exactly one verdict counter.
func (h hookProg) verdict(t *testing.T, objs *bpfObjects, frame []byte) (bool, map[string]uint64) {
	t.Helper()
	got, d := run(t, objs, h.prog(objs), frame)
	if got != h.pass && got != h.drop {
		t.Fatalf("%s returned %#x (counters %s)", h.name, got, fmtDelta(d))
	}
	kernel := got == h.pass
	want := h.dropped
	if kernel {
		want = "pass_kernel"
	}
	if d[want] != 1 || d["pass_kernel"]+d["to_xsk"]+d["dropped_no_xsk"]+d["tc_dropped"] != 1 {
		t.Errorf("counters %s: want exactly one %s", fmtDelta(d), want)
	}
	return kernel, d
}

// loadObjects loads the programs and maps without attaching them.
func loadObjects(t testing.TB, noHostRings bool) *bpfObjects {
	t.Helper()
	netlab.Require(t) // root: loading programs needs CAP_BPF and CAP_NET_ADMIN
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	if noHostRings {
		if err := spec.Variables["cfg_no_host_rings"].Set(uint8(1)); err != nil {
			t.Fatal(err)
		}
	}
	var objs bpfObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("verifier: %+v", ve)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	return &objs
}

// run runs prog on frame and returns its verdict and the counters that
// changed.
func run(t *testing.T, objs *bpfObjects, prog *ebpf.Program, frame []byte) (uint32, map[string]uint64) {
	t.Helper()
	before, err := readCounters(objs.Counters)
	if err != nil {
		t.Fatal(err)
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	after, err := readCounters(objs.Counters)
	if err != nil {
		t.Fatal(err)
	}
	delta := map[string]uint64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			delta[k] = d
		}
	}
	return ret, delta
}

func allow(t *testing.T, objs *bpfObjects, k l4.Key) {
	t.Helper()
	if err := checkKey(k); err != nil {
		t.Fatal(err)
	}
	if err := objs.KernelRules.Put(keyOf(k), valueOf(true, false, monotonicNow())); err != nil {
		t.Fatal(err)
	}
}

func learn(t *testing.T, objs *bpfObjects, k l4.Key) {
	t.Helper()
	if err := checkKey(k); err != nil {
		t.Fatal(err)
	}
	if err := objs.KernelLearned.Put(keyOf(k), valueOf(false, true, monotonicNow())); err != nil {
		t.Fatal(err)
	}
}

// endpointRule puts k into the endpoint maps as Firewall.AddEndpointPort
// does.
func endpointRule(t testing.TB, objs *bpfObjects, k l4.Key) {
	t.Helper()
	if err := checkKey(k); err != nil {
		t.Fatal(err)
	}
	if err := objs.EndpointRules.Put(keyOf(k), uint32(0)); err != nil {
		t.Fatal(err)
	}
	for _, pk := range portKeysOf(k) {
		var n uint32
		_ = objs.EndpointPorts.Lookup(pk, &n)
		if err := objs.EndpointPorts.Put(pk, n+1); err != nil {
			t.Fatal(err)
		}
	}
}

// extChain returns n IPv6 extension headers of 8 bytes (hop-by-hop, then
// destination options) followed by TCP.
func extChain(n int) []byte {
	var b []byte
	for i := range n {
		next := byte(60)
		if i == n-1 {
			next = 6
		}
		b = append(b, next, 0, 1, 4, 0, 0, 0, 0)
	}
	return b
}

var (
	host4  = "198.18.0.1"
	peer4  = "198.18.0.2"
	other4 = "198.18.0.3"
	host6  = "2001:db8::1"
	peer6  = "2001:db8::2"
	other6 = "2001:db8::3"
)

func addr(s string) l4.Addr { return l4.MustParseAddr(s) }

func fmtDelta(d map[string]uint64) string { return fmt.Sprint(d) }

// TestVerdicts runs one table of frames through both ingress hooks.
func TestVerdicts(t *testing.T) {
	forHooks(t, false, testVerdicts)
}

func testVerdicts(t *testing.T, h hookProg, objs *bpfObjects) {
	// The kernel's rules: a listening TCP port on both families, a port
	// open to one remote only, a learned TCP flow, ICMP echo learned
	// towards peer6.
	allow(t, objs, l4.ListenKey(addr(host4), l4.ProtoTCP, 22))
	allow(t, objs, l4.ListenKey(addr(host6), l4.ProtoTCP, 22))
	allow(t, objs, l4.Key{Local: addr(host4), Remote: addr(peer4), LocalPort: 2222, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote})
	allow(t, objs, l4.Key{Local: addr(host6), Remote: addr(peer6), LocalPort: 2222, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote})
	learn(t, objs, l4.FlowKey(addr(host4), 40000, addr(peer4), 80, l4.ProtoTCP))
	learn(t, objs, l4.FlowKey(addr(host6), 40000, addr(peer6), 80, l4.ProtoTCP))
	learn(t, objs, l4.FlowKey(addr(host4), 5353, addr(peer4), 53, l4.ProtoUDP))
	learn(t, objs, l4.FlowKey(addr(host6), 0, addr(peer6), 0, l4.ProtoICMPv6))
	// The endpoints' rules: UDP 9999 on both families, and TCP 22 from
	// other4 only (more specific than the kernel's listening rule).
	endpointRule(t, objs, l4.ListenKey(addr(host4), l4.ProtoUDP, 9999))
	endpointRule(t, objs, l4.ListenKey(addr(host6), l4.ProtoUDP, 9999))
	endpointRule(t, objs, l4.Key{Local: addr(host4), Remote: addr(other4), LocalPort: 22, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote})
	endpointUDP6 := stripEth(udpFrame(t, host6, 9999, peer6, 53, frameOpts{})) // what the endpoint sent

	kernelTCP4 := stripEth(tcpFrame(t, host4, 40000, peer4, 80, frameOpts{})) // what the kernel sent
	otherTCP4 := stripEth(tcpFrame(t, host4, 41000, peer4, 80, frameOpts{}))  // what an endpoint sent
	kernelUDP6 := stripEth(tcpFrame(t, host6, 40000, peer6, 80, frameOpts{})) // (TCP, despite the name)
	otherUDP6 := stripEth(udpFrame(t, host6, 41000, peer6, 53, frameOpts{}))  //
	firstFragOther := stripEth(udpFrame(t, host4, 7, peer4, 7, frameOpts{}))  // irrelevant quote

	hopByHop := []byte{6 /* next: TCP */, 0, 1, 4, 0, 0, 0, 0} // PadN option filling 8 bytes

	cases := []struct {
		name   string
		frame  []byte
		want   uint32
		reason string // counter that must have moved (besides the verdict's)
	}{
		{"v4 listening rule", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{}), xdpPass, "pass_allowed"},
		{"v4 closed port", tcpFrame(t, peer4, 50000, host4, 23, frameOpts{}), xdpDrop, ""},
		{"v4 other local address", tcpFrame(t, peer4, 50000, other4, 22, frameOpts{}), xdpDrop, ""},
		{"v6 listening rule", tcpFrame(t, peer6, 50000, host6, 22, frameOpts{}), xdpPass, "pass_allowed"},
		{"v6 closed port", tcpFrame(t, peer6, 50000, host6, 23, frameOpts{}), xdpDrop, ""},
		{"v4 remote-IP rule, that remote", tcpFrame(t, peer4, 50001, host4, 2222, frameOpts{}), xdpPass, "pass_allowed"},
		{"v4 remote-IP rule, another remote", tcpFrame(t, other4, 50001, host4, 2222, frameOpts{}), xdpDrop, ""},
		{"v6 remote-IP rule, that remote", tcpFrame(t, peer6, 50001, host6, 2222, frameOpts{}), xdpPass, "pass_allowed"},
		{"v6 remote-IP rule, another remote", tcpFrame(t, other6, 50001, host6, 2222, frameOpts{}), xdpDrop, ""},
		{"v4 learned flow", tcpFrame(t, peer4, 80, host4, 40000, frameOpts{tcpFlags: "SA"}), xdpPass, "pass_allowed"},
		{"v4 learned flow, other remote port", tcpFrame(t, peer4, 81, host4, 40000, frameOpts{tcpFlags: "SA"}), xdpDrop, ""},
		{"v4 learned UDP flow", udpFrame(t, peer4, 53, host4, 5353, frameOpts{}), xdpPass, "pass_allowed"},
		{"v4 UDP, protocol differs from rule", udpFrame(t, peer4, 50000, host4, 22, frameOpts{}), xdpDrop, ""},
		{"v6 learned flow", tcpFrame(t, peer6, 80, host6, 40000, frameOpts{tcpFlags: "SA"}), xdpPass, "pass_allowed"},
		{"v4 with IP options", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{ihl: 6}), xdpPass, "pass_allowed"},
		{"v6 hop-by-hop then TCP", tcpFrame(t, peer6, 50000, host6, 22, frameOpts{ext6: hopByHop}), xdpPass, "pass_allowed"},
		{"v6 hop-by-hop then TCP, closed", tcpFrame(t, peer6, 50000, host6, 23, frameOpts{ext6: hopByHop}), xdpDrop, ""},
		{"VLAN-tagged, allowed", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{vlan: 7}), xdpPass, "pass_allowed"},
		{"VLAN-tagged, closed", tcpFrame(t, peer4, 50000, host4, 23, frameOpts{vlan: 7}), xdpDrop, ""},
		{"VLAN-tagged v6, allowed", tcpFrame(t, peer6, 50000, host6, 22, frameOpts{vlan: 7}), xdpPass, "pass_allowed"},
		{"ARP", arpFrame(t), xdpPass, "pass_arp"},
		{"EAPOL", eapolFrame(t), xdpPass, "pass_eapol"},
		{"DHCP answer", udpFrame(t, peer4, 67, "255.255.255.255", 68, frameOpts{}), xdpPass, "pass_dhcp"},
		{"DHCP request from outside", udpFrame(t, peer4, 68, host4, 67, frameOpts{}), xdpDrop, ""},
		{"DHCPv6 answer", udpFrame(t, "fe80::2", 547, "fe80::1", 546, frameOpts{}), xdpPass, "pass_dhcp"},
		{"NDP neighbour solicitation", icmpFrame(t, peer6, "ff02::1:ff00:1", 135, 0, make([]byte, 20)), xdpPass, "pass_ndp"},
		{"NDP neighbour advertisement", icmpFrame(t, peer6, host6, 136, 0, make([]byte, 20)), xdpPass, "pass_ndp"},
		{"NDP router advertisement", icmpFrame(t, "fe80::2", "ff02::1", 134, 0, make([]byte, 12)), xdpPass, "pass_ndp"},
		{"MLD query", icmpFrame(t, "fe80::2", "ff02::1", 130, 0, make([]byte, 20)), xdpPass, "pass_ndp"},
		{"v4 echo request, not allowed", echoFrame(t, peer4, host4, false), xdpDrop, ""},
		{"v6 echo reply, learned", echoFrame(t, peer6, host6, true), xdpPass, "pass_allowed"},
		{"v6 echo request from the learned remote", echoFrame(t, peer6, host6, false), xdpPass, "pass_allowed"},
		{"v6 echo reply, other remote", echoFrame(t, other6, host6, true), xdpDrop, ""},
		{"v4 ICMP error about a kernel flow", icmpErrorFrame(t, other4, host4, kernelTCP4), xdpPass, "pass_icmp_error"},
		{"v4 ICMP error about another flow", icmpErrorFrame(t, other4, host4, otherTCP4), xdpDrop, ""},
		{"v4 ICMP error about a flow of a listening rule", icmpErrorFrame(t, other4, host4, stripEth(tcpFrame(t, host4, 22, peer4, 50000, frameOpts{tcpFlags: "SA"}))), xdpPass, "pass_icmp_error"},
		{"v4 ICMP error about a flow of an endpoint's rule", icmpErrorFrame(t, other4, host4, stripEth(tcpFrame(t, host4, 22, other4, 50000, frameOpts{tcpFlags: "SA"}))), xdpDrop, ""},
		{"v4 ICMP error, quote truncated to 24 bytes", icmpErrorFrame(t, other4, host4, kernelTCP4[:24]), xdpPass, "pass_icmp_error"},
		{"v4 ICMP error, quote without ports", icmpErrorFrame(t, other4, host4, kernelTCP4[:22]), xdpDrop, ""},
		{"v4 ICMP error quoting garbage", icmpErrorFrame(t, other4, host4, []byte{0x45, 0, 0}), xdpDrop, ""},
		{"v6 ICMP error about a kernel flow", icmpErrorFrame(t, other6, host6, kernelUDP6), xdpPass, "pass_icmp_error"},
		{"v6 ICMP error about another flow", icmpErrorFrame(t, other6, host6, otherUDP6), xdpDrop, ""},
		{"v4 first fragment of nobody's", udpFrame(t, peer4, 9, host4, 9, frameOpts{moreFrags: true, fragID: 77}), xdpDrop, ""},
		{"v4 later fragment without first", ipFrame(t, peer4, host4, layers.IPProtocolUDP, nil, frameOpts{fragOff: 3, fragID: 78, payload: firstFragOther}), xdpDrop, "fragment_to_xsk"},
		{"v6 later fragment without first", ipFrame(t, peer6, host6, layers.IPProtocolUDP, nil, frameOpts{fragOff: 3, fragID: 78, payload: firstFragOther}), xdpDrop, "fragment_to_xsk"},
		{"v4 later fragment without first, no endpoint on SCTP", ipFrame(t, peer4, host4, layers.IPProtocolSCTP, nil, frameOpts{fragOff: 3, fragID: 78, payload: firstFragOther}), xdpPass, "pass_fragment_early"},
		{"v6 later fragment without first, no endpoint on SCTP", ipFrame(t, peer6, host6, layers.IPProtocolSCTP, nil, frameOpts{fragOff: 3, fragID: 78, payload: firstFragOther}), xdpPass, "pass_fragment_early"},
		{"v4 endpoint's UDP port", udpFrame(t, peer4, 53, host4, 9999, frameOpts{}), xdpDrop, ""},
		{"v4 endpoint's remote-IP rule beats the kernel's listening rule", tcpFrame(t, other4, 50000, host4, 22, frameOpts{}), xdpDrop, ""},
		{"v4 the kernel's listening rule, another remote", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{}), xdpPass, "pass_allowed"},
		{"v6 ICMP error about an endpoint's flow, from a learned ICMP remote", icmpErrorFrame(t, peer6, host6, endpointUDP6), xdpDrop, ""},
		{"v4 ICMP redirect about a kernel flow", icmpFrame(t, other4, host4, 5, 1, append([]byte{0, 0, 0, 0}, kernelTCP4...)), xdpPass, "pass_icmp_error"},
		{"v6 eight extension headers", tcpFrame(t, peer6, 50000, host6, 22, frameOpts{ext6: extChain(8)}), xdpPass, "pass_allowed"},
		{"v6 nine extension headers", tcpFrame(t, peer6, 50000, host6, 22, frameOpts{ext6: extChain(9)}), xdpDrop, "parse_error"},
		{"802.1ad tag", func() []byte {
			b := tcpFrame(t, peer4, 50000, host4, 22, frameOpts{vlan: 7})
			b[12], b[13] = 0x88, 0xa8
			return b
		}(), xdpDrop, ""},
		{"v4 to loopback", udpFrame(t, peer4, 67, "127.0.0.1", 68, frameOpts{}), xdpDrop, ""},
		{"v4 Ethernet padding is not the ports", func() []byte {
			b := ipFrame(t, peer4, host4, layers.IPProtocolTCP, nil, frameOpts{payload: []byte{0xc3, 0x50}})
			return append(b, 0, 22, 0, 0) // the rest of "ports" in the padding
		}(), xdpDrop, "parse_error"},
		{"truncated IPv4 header", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{})[:14+19], xdpDrop, "parse_error"},
		{"truncated TCP ports", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{})[:14+20+3], xdpDrop, "parse_error"},
		{"truncated IPv6 header", tcpFrame(t, peer6, 50000, host6, 22, frameOpts{})[:14+39], xdpDrop, "parse_error"},
		{"truncated ICMPv6", icmpFrame(t, peer6, host6, 135, 0, nil)[:14+40+3], xdpDrop, "parse_error"},
		{"truncated VLAN tag", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{vlan: 7})[:16], xdpDrop, "parse_error"},
		{"IPv4 ethertype carrying IPv6", append(append([]byte{}, tcpFrame(t, peer6, 50000, host6, 22, frameOpts{})[:12]...), append([]byte{8, 0}, tcpFrame(t, peer6, 50000, host6, 22, frameOpts{})[14:]...)...), xdpDrop, "parse_error"},
		{"IPv6 to the IPv4-mapped form of an open port", tcpFrame(t, "::ffff:198.18.0.2", 50000, "::ffff:198.18.0.1", 22, frameOpts{v6Mapped: true}), xdpDrop, "parse_error"},
		{"unknown ethertype", append(arpFrame(t)[:12], 0x88, 0xcc, 0, 0, 0, 0), xdpDrop, ""},
	}
	// BPF_PROG_TEST_RUN refuses (EINVAL) to build an skb whose IPv4 or
	// IPv6 frame is shorter than the IP header; the TC hook judges such
	// frames as any truncated one ("truncated TCP ports" runs).
	tcRefused := map[string]bool{"truncated IPv4 header": true, "truncated IPv6 header": true}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if h.name == "tc" && tcRefused[c.name] {
				t.Skip("a test run cannot build this skb")
			}
			kernel, d := h.verdict(t, objs, c.frame)
			if kernel != (c.want == xdpPass) {
				t.Fatalf("kernel gets it: %v, want %v (counters %s)", kernel, c.want == xdpPass, fmtDelta(d))
			}
			if c.reason != "" && d[c.reason] != 1 {
				t.Errorf("counters %s: want %s", fmtDelta(d), c.reason)
			}
		})
	}
}

// Fragments: later fragments follow the first fragment's kernel verdict;
// those of userspace datagrams (or arriving first) go to userspace.
func TestFragments(t *testing.T) {
	forHooks(t, false, testFragments)
}

func testFragments(t *testing.T, h hookProg, objs *bpfObjects) {
	type verdict = bool
	const xdpPass, xdpDrop verdict = true, false
	run := func(t *testing.T, objs *bpfObjects, _ *ebpf.Program, frame []byte) (verdict, map[string]uint64) {
		t.Helper()
		return h.verdict(t, objs, frame)
	}
	allow(t, objs, l4.ListenKey(addr(host4), l4.ProtoUDP, 53))
	allow(t, objs, l4.ListenKey(addr(host6), l4.ProtoUDP, 53))
	// An endpoint on UDP: a later fragment before its first could be its.
	endpointRule(t, objs, l4.ListenKey(addr(host4), l4.ProtoUDP, 9999))
	endpointRule(t, objs, l4.ListenKey(addr(host6), l4.ProtoUDP, 9999))
	for _, fam := range []struct{ peer, host string }{{peer4, host4}, {peer6, host6}} {
		rest := make([]byte, 16)
		later := func(id uint32, more bool) []byte {
			return ipFrame(t, fam.peer, fam.host, layers.IPProtocolUDP, nil, frameOpts{fragOff: 2, fragID: id, moreFrags: more, payload: rest})
		}
		first := udpFrame(t, fam.peer, 5000, fam.host, 53, frameOpts{moreFrags: true, fragID: 100})
		if got, d := run(t, objs, nil, later(100, true)); got != xdpDrop || d["fragment_to_xsk"] != 1 {
			t.Errorf("%s: later fragment before the first: %v %s", fam.peer, got, fmtDelta(d))
		}
		if got, d := run(t, objs, nil, first); got != xdpPass || d["pass_allowed"] != 1 {
			t.Errorf("%s: first fragment: %v %s", fam.peer, got, fmtDelta(d))
		}
		for _, more := range []bool{true, false} {
			if got, d := run(t, objs, nil, later(100, more)); got != xdpPass || d["pass_fragment"] != 1 {
				t.Errorf("%s: later fragment (MF %v): %v %s", fam.peer, more, got, fmtDelta(d))
			}
		}
		if got, _ := run(t, objs, nil, later(101, false)); got != xdpDrop {
			t.Errorf("%s: later fragment of another datagram: %v", fam.peer, got)
		}
		// A userspace datagram's first fragment teaches nothing.
		other := udpFrame(t, fam.peer, 5000, fam.host, 54, frameOpts{moreFrags: true, fragID: 102})
		if got, _ := run(t, objs, nil, other); got != xdpDrop {
			t.Errorf("%s: first fragment to a closed port: %v", fam.peer, got)
		}
		if got, _ := run(t, objs, nil, later(102, false)); got != xdpDrop {
			t.Errorf("%s: its later fragment: %v", fam.peer, got)
		}
	}
	// An unfragmented IPv6 packet with a fragment header (offset 0, MF 0)
	// is an atomic fragment: judged by its ports.
	if got, _ := run(t, objs, nil, udpFrame(t, peer6, 5000, host6, 53, frameOpts{ipv6Frag: true, fragID: 9})); got != xdpPass {
		t.Errorf("atomic IPv6 fragment to an open port: %v", got)
	}
}

func TestNoHostRingsVerdicts(t *testing.T) {
	forHooks(t, true, func(t *testing.T, h hookProg, objs *bpfObjects) {
		allow(t, objs, l4.ListenKey(addr(host4), l4.ProtoTCP, 22))
		for _, f := range [][]byte{arpFrame(t), tcpFrame(t, peer4, 50000, host4, 22, frameOpts{}), icmpFrame(t, peer6, host6, 135, 0, make([]byte, 20))} {
			kernel, d := h.verdict(t, objs, f)
			if kernel || d["no_host_rings"] != 1 {
				t.Errorf("kernel %v, counters %s: want nothing for the kernel", kernel, fmtDelta(d))
			}
		}
	})
}

// The learner, run on frames the kernel sends.
func TestLearner(t *testing.T) {
	objs := loadObjects(t, false)
	allow(t, objs, l4.ListenKey(addr(host4), l4.ProtoTCP, 22))
	allow(t, objs, l4.Key{Local: addr(host4), Remote: addr(peer4), LocalPort: 2222, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote})
	out := func(b []byte) []byte { // swap MACs: from host to peer
		b = append([]byte(nil), b...)
		copy(b[0:6], macPeer)
		copy(b[6:12], macHost)
		return b
	}
	cases := []struct {
		name   string
		frame  []byte
		learns *l4.Key
		reason string
	}{
		{"v4 TCP SYN", out(tcpFrame(t, host4, 40000, peer4, 80, frameOpts{})),
			ptr(l4.FlowKey(addr(host4), 40000, addr(peer4), 80, l4.ProtoTCP)), "learn_new"},
		{"v4 TCP again", out(tcpFrame(t, host4, 40000, peer4, 80, frameOpts{tcpFlags: "A"})), nil, ""},
		{"v6 UDP", out(udpFrame(t, host6, 40001, peer6, 53, frameOpts{})),
			ptr(l4.FlowKey(addr(host6), 40001, addr(peer6), 53, l4.ProtoUDP)), "learn_new"},
		{"VLAN-tagged v4 UDP", out(udpFrame(t, host4, 40002, peer4, 53, frameOpts{vlan: 5})),
			ptr(l4.FlowKey(addr(host4), 40002, addr(peer4), 53, l4.ProtoUDP)), "learn_new"},
		{"v6 hop-by-hop then TCP", out(tcpFrame(t, host6, 40003, peer6, 80, frameOpts{ext6: []byte{6, 0, 1, 4, 0, 0, 0, 0}})),
			ptr(l4.FlowKey(addr(host6), 40003, addr(peer6), 80, l4.ProtoTCP)), "learn_new"},
		{"v4 first fragment", out(udpFrame(t, host4, 40004, peer4, 53, frameOpts{moreFrags: true, fragID: 5})),
			ptr(l4.FlowKey(addr(host4), 40004, addr(peer4), 53, l4.ProtoUDP)), "learn_new"},
		{"v4 later fragment", out(ipFrame(t, host4, peer4, layers.IPProtocolUDP, nil, frameOpts{fragOff: 2, fragID: 5, payload: make([]byte, 16)})), nil, "learn_skipped"},
		{"v4 echo request", out(echoFrame(t, host4, peer4, false)),
			ptr(l4.FlowKey(addr(host4), 0, addr(peer4), 0, l4.ProtoICMP)), "learn_new"},
		{"v6 echo request", out(echoFrame(t, host6, peer6, false)),
			ptr(l4.FlowKey(addr(host6), 0, addr(peer6), 0, l4.ProtoICMPv6)), "learn_new"},
		{"v4 echo reply", out(echoFrame(t, host4, other4, true)), nil, "learn_skipped"},
		{"v4 ICMP error", out(icmpErrorFrame(t, host4, other4, stripEth(tcpFrame(t, other4, 1, host4, 2, frameOpts{})))), nil, "learn_skipped"},
		{"v6 NDP", out(icmpFrame(t, host6, peer6, 136, 0, make([]byte, 20))), nil, "learn_skipped"},
		{"reply of a listening rule", out(tcpFrame(t, host4, 22, peer4, 50000, frameOpts{tcpFlags: "SA"})), nil, "learn_covered"},
		{"reply of a remote-IP rule", out(tcpFrame(t, host4, 2222, peer4, 50000, frameOpts{tcpFlags: "SA"})), nil, "learn_covered"},
		{"same port to another remote", out(tcpFrame(t, host4, 2222, other4, 50000, frameOpts{tcpFlags: "SA"})),
			ptr(l4.FlowKey(addr(host4), 2222, addr(other4), 50000, l4.ProtoTCP)), "learn_new"},
		{"RST", out(tcpFrame(t, host4, 40005, peer4, 80, frameOpts{tcpFlags: "R"})), nil, "learn_skipped"},
		{"v4 multicast", out(udpFrame(t, host4, 5353, "224.0.0.251", 5353, frameOpts{})), nil, "learn_skipped"},
		{"v4 broadcast", out(udpFrame(t, host4, 40006, "255.255.255.255", 9, frameOpts{})), nil, "learn_skipped"},
		{"v6 multicast", out(udpFrame(t, host6, 5353, "ff02::fb", 5353, frameOpts{})), nil, "learn_skipped"},
		{"IPv6 with IPv4-mapped addresses", out(tcpFrame(t, "::ffff:198.18.0.1", 40008, "::ffff:198.18.0.2", 80, frameOpts{v6Mapped: true})), nil, "learn_skipped"},
		{"DHCP request from 0.0.0.0", out(udpFrame(t, "0.0.0.0", 68, "255.255.255.255", 67, frameOpts{})), nil, "learn_skipped"},
		{"ARP", out(arpFrame(t)), nil, "learn_skipped"},
		// (A test run refuses an skb with less than an IPv4 header.)
		{"IPv4 ethertype, version 6", out(func() []byte {
			b := tcpFrame(t, host4, 40007, peer4, 80, frameOpts{})
			b[14] = 0x65
			return b
		}()), nil, "learn_skipped"},
		{"truncated ports", out(tcpFrame(t, host4, 40007, peer4, 80, frameOpts{}))[:14+20+3], nil, "learn_skipped"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := learnedKeys(t, objs)
			got, d := run(t, objs, objs.UsnetdLearn, c.frame)
			if got != tcxNext {
				t.Fatalf("returned %#x, want TCX_NEXT", got)
			}
			if c.reason != "" && d[c.reason] != 1 {
				t.Errorf("counters %s: want %s", fmtDelta(d), c.reason)
			}
			after := learnedKeys(t, objs)
			var added []l4.Key
			for k := range after {
				if !before[k] {
					added = append(added, k)
				}
			}
			switch {
			case c.learns == nil && len(added) != 0:
				t.Errorf("learned %v, want nothing", added)
			case c.learns != nil && (len(added) != 1 || added[0] != *c.learns):
				t.Errorf("learned %v, want %v", added, *c.learns)
			}
		})
	}
	// Learned entries are marked as such; registered ones stay untouched.
	var v bpfFwValue
	if err := objs.KernelLearned.Lookup(keyOf(l4.FlowKey(addr(host4), 40000, addr(peer4), 80, l4.ProtoTCP)), &v); err != nil || v.Flags != flagLearned || v.LastSeenNs == 0 {
		t.Errorf("learned value %+v, %v", v, err)
	}
}

func ptr[T any](v T) *T { return &v }

func learnedKeys(t *testing.T, objs *bpfObjects) map[l4.Key]bool {
	t.Helper()
	out := map[l4.Key]bool{}
	var k bpfFwKey
	var v bpfFwValue
	it := objs.KernelLearned.Iterate()
	for it.Next(&k, &v) {
		out[l4Key(k)] = true
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
