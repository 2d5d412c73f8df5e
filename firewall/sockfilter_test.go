package firewall

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	l4 "github.com/usnetd/usnetd/switch"
)

// TestSocketFilter runs the AF_PACKET backend's socket filter on crafted
// frames over the classifier's own maps (BPF_PROG_TEST_RUN: no interface):
// the kernel's frames (a kernel rule's or a learned kernel flow's) are
// kept from the socket; everything the switch must see passes whole,
// endpoints' traffic next to the kernel's first of all.
func TestSocketFilter(t *testing.T) {
	objs := loadObjects(t, false)
	fw := &Firewall{objs: *objs}
	sf, err := fw.SocketFilter()
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()

	allow(t, objs, l4.ListenKey(addr(host4), l4.ProtoTCP, 22))
	allow(t, objs, l4.ListenKey(addr(host6), l4.ProtoTCP, 22))
	allow(t, objs, l4.Key{Local: addr(host4), Remote: addr(peer4), LocalPort: 2222, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote})
	learn(t, objs, l4.FlowKey(addr(host4), 40000, addr(peer4), 80, l4.ProtoTCP))
	learn(t, objs, l4.FlowKey(addr(host4), 5353, addr(peer4), 53, l4.ProtoUDP))
	learn(t, objs, l4.FlowKey(addr(host4), 0, addr(peer4), 0, l4.ProtoICMP))
	learn(t, objs, l4.FlowKey(addr(host6), 0, addr(peer6), 0, l4.ProtoICMPv6))
	kernelTCP4 := stripEth(tcpFrame(t, host4, 40000, peer4, 80, frameOpts{}))
	hopByHop := []byte{6, 0, 1, 4, 0, 0, 0, 0}

	cases := []struct {
		name   string
		frame  []byte
		kernel bool // kept from the socket
	}{
		{"v4 listening rule", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{}), true},
		{"v6 listening rule", tcpFrame(t, peer6, 50000, host6, 22, frameOpts{}), true},
		{"v4 remote-IP rule, that remote", tcpFrame(t, peer4, 50001, host4, 2222, frameOpts{}), true},
		{"v4 learned flow", tcpFrame(t, peer4, 80, host4, 40000, frameOpts{tcpFlags: "SA"}), true},
		{"v4 learned UDP flow", udpFrame(t, peer4, 53, host4, 5353, frameOpts{}), true},
		{"VLAN-tagged, allowed", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{vlan: 7}), true},
		{"v4 echo reply, learned", echoFrame(t, peer4, host4, true), true},
		{"v6 echo reply, learned", echoFrame(t, peer6, host6, true), true},

		{"v4 endpoint's port", tcpFrame(t, peer4, 50000, host4, 8080, frameOpts{}), false},
		{"v4 remote-IP rule, another remote", tcpFrame(t, other4, 50001, host4, 2222, frameOpts{}), false},
		{"v4 learned flow, other remote port", tcpFrame(t, peer4, 81, host4, 40000, frameOpts{tcpFlags: "SA"}), false},
		{"v4 UDP, protocol differs from rule", udpFrame(t, peer4, 50000, host4, 22, frameOpts{}), false},
		{"v6 hop-by-hop then TCP (left to the switch)", tcpFrame(t, peer6, 50000, host6, 22, frameOpts{ext6: hopByHop}), false},
		{"ARP", arpFrame(t), false},
		{"EAPOL", eapolFrame(t), false},
		{"DHCP answer", udpFrame(t, peer4, 67, "255.255.255.255", 68, frameOpts{}), false},
		{"NDP neighbour advertisement", icmpFrame(t, peer6, host6, 136, 0, make([]byte, 20)), false},
		{"MLD query", icmpFrame(t, "fe80::2", "ff02::1", 130, 0, make([]byte, 20)), false},
		{"v4 ICMP error about a kernel flow", icmpErrorFrame(t, other4, host4, kernelTCP4), false},
		{"v4 echo request from elsewhere", echoFrame(t, other4, host4, false), false},
		{"v4 first fragment of a kernel flow", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{moreFrags: true, fragID: 5}), false},
		{"v4 later fragment", ipFrame(t, peer4, host4, layers.IPProtocolUDP, nil, frameOpts{fragOff: 3, fragID: 6, payload: kernelTCP4}), false},
		{"truncated TCP ports", tcpFrame(t, peer4, 50000, host4, 22, frameOpts{})[:14+20+3], false},
	}
	var kept uint64
	for _, c := range cases {
		ret, err := sf.Program().Run(&ebpf.RunOptions{Data: c.frame})
		if err != nil {
			t.Fatalf("%s: test run: %v", c.name, err)
		}
		switch {
		case c.kernel && ret != 0:
			t.Errorf("%s: the socket gets %d bytes of the kernel's frame", c.name, ret)
		case !c.kernel && ret < uint32(len(c.frame)-14):
			// (A test run starts the skb at the IP header: skb->len,
			// what the filter keeps, is the frame without Ethernet.)
			t.Errorf("%s: the socket gets %d of %d bytes, want all", c.name, ret, len(c.frame))
		}
		if c.kernel {
			kept++
		}
	}
	k, p, err := sf.Counters()
	if err != nil || k != kept || k+p != uint64(len(cases)) {
		t.Errorf("counters: kernel %d passed %d (%v); want %d and %d", k, p, err, kept, uint64(len(cases))-kept)
	}
	// A rule the firewall adds later is followed at once (the maps are
	// shared).
	late := tcpFrame(t, peer4, 50000, host4, 8443, frameOpts{})
	allow(t, objs, l4.ListenKey(addr(host4), l4.ProtoTCP, 8443))
	if ret, err := sf.Program().Run(&ebpf.RunOptions{Data: late}); err != nil || ret != 0 {
		t.Errorf("after AllowKernel: %d, %v; want 0", ret, err)
	}
}
