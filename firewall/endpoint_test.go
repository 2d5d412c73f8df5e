package firewall

import (
	"errors"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// The endpoint-rule map operations of a real Firewall: add, list, the
// per-(local, proto) count, remove, a full map, a closed firewall.
func TestEndpointPorts(t *testing.T) {
	l := newLab(t)
	fw := l.attach(t, Options{MaxEndpointRules: 3})
	udp := l4.ListenKey(la(l.h4), l4.ProtoUDP, 5000)
	conn := l4.FlowKey(la(l.h4), 5001, la(l.p4), 53, l4.ProtoUDP)
	tcp := l4.ListenKey(la(l.h4), l4.ProtoTCP, 5000)
	// Learned flows of kernel sockets gone: those on the endpoint's port
	// go with its rule, the others stay.
	stale := l4.FlowKey(la(l.h4), 5000, la(l.p4), 53, l4.ProtoUDP)
	other := l4.FlowKey(la(l.h4), 5002, la(l.p4), 53, l4.ProtoUDP)
	for _, k := range []l4.Key{stale, other} {
		if err := fw.objs.KernelLearned.Put(keyOf(k), valueOf(false, true, monotonicNow())); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []l4.Key{udp, conn, tcp, udp} { // the second udp: a no-op
		if err := fw.AddEndpointPort(k); err != nil {
			t.Fatalf("add %v: %v", k, err)
		}
	}
	got, err := fw.EndpointPorts()
	if err != nil {
		t.Fatal(err)
	}
	es := entries(t, fw)
	if _, ok := findEntry(es, stale); ok {
		t.Errorf("the learned flow %v on the endpoint's port stayed", stale)
	}
	if _, ok := findEntry(es, other); !ok {
		t.Errorf("the learned flow %v on another port went", other)
	}
	want := []l4.Key{udp, conn, tcp}
	sortKeys(want)
	if !slices.Equal(got, want) {
		t.Errorf("endpoint ports %v, want %v", got, want)
	}
	// The count of UDP rules on the address, whatever the port.
	protoCount := func(k l4.Key) uint32 {
		var n uint32
		if err := fw.objs.EndpointPorts.Lookup(portKeysOf(k)[1], &n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatal(err)
		}
		return n
	}
	portCount := func(k l4.Key) uint32 {
		var n uint32
		if err := fw.objs.EndpointPorts.Lookup(portKeysOf(k)[0], &n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatal(err)
		}
		return n
	}
	if n := protoCount(udp); n != 2 {
		t.Errorf("UDP rules on %v: %d, want 2", l.h4, n)
	}
	if n, m := portCount(udp), portCount(conn); n != 1 || m != 1 {
		t.Errorf("UDP rules on ports 5000 and 5001: %d, %d, want 1, 1", n, m)
	}
	if err := fw.AddEndpointPort(l4.ListenKey(la(l.h4), l4.ProtoUDP, 5002)); !errors.Is(err, unix.E2BIG) {
		t.Errorf("a fourth rule in a map of three: %v, want E2BIG", err)
	}
	if err := fw.AddEndpointPort(l4.Key{Proto: l4.ProtoUDP}); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("an invalid key: %v", err)
	}
	if err := fw.RemoveEndpointPort(udp); err != nil {
		t.Fatal(err)
	}
	if n := protoCount(udp); n != 1 {
		t.Errorf("UDP rules after one removal: %d, want 1", n)
	}
	if err := fw.RemoveEndpointPort(conn); err != nil {
		t.Fatal(err)
	}
	if n := protoCount(udp); n != 0 || portCount(udp) != 0 || portCount(conn) != 0 {
		t.Errorf("UDP rules after both removals: %d, want 0 (no entry)", n)
	}
	if err := fw.RemoveEndpointPort(conn); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("removing twice: %v, want ErrKeyNotExist", err)
	}
	if got, _ := fw.EndpointPorts(); !slices.Equal(got, []l4.Key{tcp}) {
		t.Errorf("left %v, want %v", got, tcp)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fw.AddEndpointPort(udp); !errors.Is(err, ErrClosed) {
		t.Errorf("add after Close: %v", err)
	}
	if err := fw.RemoveEndpointPort(tcp); !errors.Is(err, ErrClosed) {
		t.Errorf("remove after Close: %v", err)
	}
}

// The egress program on frames the kernel sends from an endpoint's flow:
// dropped, counted, not learned; the kernel's own frames next to them
// still go out and are learned.
func TestEgressEndpoint(t *testing.T) {
	objs := loadObjects(t, false)
	endpointRule(t, objs, l4.ListenKey(addr(host4), l4.ProtoUDP, 9999))
	endpointRule(t, objs, l4.ListenKey(addr(host6), l4.ProtoTCP, 8080))
	endpointRule(t, objs, l4.Key{Local: addr(host4), Remote: addr(peer4), LocalPort: 7000, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote})
	endpointRule(t, objs, l4.Key{Local: addr(host4), Proto: l4.ProtoICMP, Remote: addr(other4), Flags: l4.KeyRemote})
	out := func(b []byte) []byte {
		b = append([]byte(nil), b...)
		copy(b[0:6], macPeer)
		copy(b[6:12], macHost)
		return b
	}
	cases := []struct {
		name  string
		frame []byte
		drop  bool
	}{
		{"UDP from the endpoint's port", out(udpFrame(t, host4, 9999, peer4, 53, frameOpts{})), true},
		{"UDP from the endpoint's port to a multicast group", out(udpFrame(t, host4, 9999, "224.0.0.251", 5353, frameOpts{})), true},
		{"UDP first fragment from the endpoint's port", out(udpFrame(t, host4, 9999, peer4, 53, frameOpts{moreFrags: true, fragID: 3})), true},
		{"TCP RST from the endpoint's port", out(tcpFrame(t, host6, 8080, peer6, 50000, frameOpts{tcpFlags: "R"})), true},
		{"TCP SYN from the endpoint's port", out(tcpFrame(t, host6, 8080, peer6, 50000, frameOpts{tcpFlags: "S"})), true},
		{"TCP to the remote of the endpoint's remote-IP rule", out(tcpFrame(t, host4, 7000, peer4, 80, frameOpts{})), true},
		{"ICMP echo to the remote of the endpoint's ICMP rule", out(echoFrame(t, host4, other4, false)), true},
		{"UDP from another port", out(udpFrame(t, host4, 9998, peer4, 53, frameOpts{})), false},
		{"TCP from port 7000 to another remote", out(tcpFrame(t, host4, 7000, other4, 80, frameOpts{})), false},
		{"UDP from the port on another address", out(udpFrame(t, other4, 9999, peer4, 53, frameOpts{})), false},
		{"ICMP echo to another remote", out(echoFrame(t, host4, peer4, false)), false},
		{"ICMP error quoting the endpoint's flow", out(icmpErrorFrame(t, host4, peer4, stripEth(udpFrame(t, peer4, 53, host4, 9999, frameOpts{})))), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := learnedKeys(t, objs)
			got, d := run(t, objs, objs.UsnetdLearn, c.frame)
			if c.drop {
				if got != tcActShot || d["egress_endpoint_dropped"] != 1 {
					t.Errorf("returned %#x, counters %s: want TC_ACT_SHOT, egress_endpoint_dropped", got, fmtDelta(d))
				}
				if after := learnedKeys(t, objs); len(after) != len(before) {
					t.Errorf("learned %d entries, want none", len(after)-len(before))
				}
				return
			}
			if got != tcxNext || d["egress_endpoint_dropped"] != 0 {
				t.Errorf("returned %#x, counters %s: want TCX_NEXT", got, fmtDelta(d))
			}
		})
	}
}
