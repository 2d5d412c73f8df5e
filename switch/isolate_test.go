package l4

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// The isolation checks (isolate.go): every row is an attack by endpoint
// epA and, in the same table, the legitimate frame next to it.

const (
	ipResolver = "198.18.1.53"  // a remote DNS resolver that epB asked
	ipForeign  = "203.0.113.7"  // an address that is not the host's
	ipLinkLoc  = "fe80::1"      // the interface's link-local address
	ipNFS      = "198.18.1.9"   // an NFS server that trusts ports below 1024
	ip6Other   = "2001:db8::77" // a neighbour's IPv6 address
)

var macGateway = macRemote

// isoSwitch is a domain whose local MACs are the NIC's and macEP (ADD_MACS)
// and whose endpoint addresses are ipLocal, ip6Local and fe80::1. The
// kernel holds TCP 22, epA TCP 80 and UDP 5353 (ipLocal), epB UDP 8053;
// epB has asked the resolver from :40000 and talks to ipLocal:6000 from
// :40001; epB has a connection to ipRemote:443 from :41000.
func isoSwitch(t *testing.T) *Switch {
	t.Helper()
	s := NewSwitch(NewTable())
	localTo(s, macNIC, macEP)
	l := MustParseAddr(ipLocal)
	must(t, s.Table.Insert(Rule{Key: ListenKey(l, ProtoTCP, 22), Owner: kernel, Kind: Registered, Sticky: true}))
	must(t, s.Table.Insert(reg(ListenKey(l, ProtoTCP, 80), epA)))
	must(t, s.Table.Insert(reg(ListenKey(l, ProtoUDP, 5353), epA)))
	must(t, s.Table.Insert(reg(ListenKey(l, ProtoUDP, 8053), epB)))
	for _, p := range []pkt{
		udp4(macNIC, macGateway, ipLocal, 40000, ipResolver, 53),
		udp4(macNIC, macGateway, ipLocal, 40001, ipLocal, 6000),
		tcp4(macNIC, macGateway, ipLocal, 41000, ipRemote, 443),
	} {
		if v := s.Decide(epB, parsed(t, p), 0); v.Action != ActUplink {
			t.Fatalf("epB's setup frame: %+v", v)
		}
	}
	return s
}

func arpPkt(src, sha MAC, spa, tpa string) pkt {
	return pkt{src: src, dst: macBcast, ethType: layers.EthernetTypeARP, arp: &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPReply, SourceHwAddress: hw(sha), SourceProtAddress: net.ParseIP(spa).To4(),
		DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(tpa).To4()}}
}

// ndPkt is an ICMPv6 neighbour discovery message of type typ from src
// (MAC and address) with target target (NS, NA, redirect) and, if lla is
// set, a source (NS, RS, RA) or target (NA, redirect) link-layer address
// option.
func ndPkt(src MAC, srcIP string, typ uint8, target string, lla *MAC) pkt {
	var opts layers.ICMPv6Options
	if lla != nil {
		ot := layers.ICMPv6OptSourceAddress
		if typ == 136 || typ == 137 {
			ot = layers.ICMPv6OptTargetAddress
		}
		opts = layers.ICMPv6Options{{Type: ot, Data: hw(*lla)}}
	}
	var body gopacket.SerializableLayer
	switch typ {
	case 133:
		body = &layers.ICMPv6RouterSolicitation{Options: opts}
	case 134:
		body = &layers.ICMPv6RouterAdvertisement{HopLimit: 64, RouterLifetime: 1800, Options: opts}
	case 135:
		body = &layers.ICMPv6NeighborSolicitation{TargetAddress: net.ParseIP(target), Options: opts}
	case 136:
		body = &layers.ICMPv6NeighborAdvertisement{TargetAddress: net.ParseIP(target), Flags: 0x60, Options: opts}
	case 137:
		body = &layers.ICMPv6Redirect{TargetAddress: net.ParseIP(target), DestinationAddress: net.ParseIP(ip6Remote), Options: opts}
	}
	return pkt{src: src, dst: MAC{0x33, 0x33, 0, 0, 0, 1}, ethType: layers.EthernetTypeIPv6, srcIP: srcIP, dstIP: "ff02::1",
		proto: layers.IPProtocolICMPv6, icmpType: typ, nd: body}
}

func icmpErr4(src MAC, srcIP, dstIP string, inner []gopacket.SerializableLayer) pkt {
	return pkt{src: src, dst: macGateway, ethType: layers.EthernetTypeIPv4, srcIP: srcIP, dstIP: dstIP,
		proto: layers.IPProtocolICMPv4, icmpType: 3, code: 4, inner: inner}
}

func fragsFrom(src MAC, id uint16) (first, later pkt) {
	first = udp4(src, macGateway, ipLocal, 42000, ipRemote, 5000)
	first.fragID, first.moreFrags, first.payload = id, true, make([]byte, 64)
	later = first
	later.moreFrags, later.fragOff, later.payload = false, 9, make([]byte, 32)
	return
}

func TestIsolation(t *testing.T) {
	uplink := Verdict{Action: ActUplink}
	flood := Verdict{Action: ActFlood}
	dnsForged := udp4(macNIC, macNIC, ipResolver, 53, ipLocal, 40000)
	macGW, macOwn := macGateway, macNIC
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, s *Switch)
		from  Owner
		p     pkt
		want  Verdict
	}{
		// 1. Source MAC: the NIC's or ADD_MACS.
		{name: "src_mac: the gateway's MAC", from: epA, p: tcp4(macGateway, macGateway, ipLocal, 50000, ipRemote, 443), want: drop(DropSrcMAC)},
		{name: "src_mac ok: the NIC's MAC", from: epA, p: tcp4(macNIC, macGateway, ipLocal, 50000, ipRemote, 443), want: uplink},
		{name: "src_mac ok: an ADD_MACS MAC", from: epA, p: tcp4(macEP, macGateway, ipLocal, 50000, ipRemote, 443), want: uplink},
		{name: "src_mac: an ARP from a foreign MAC", from: epA, p: arpPkt(macGateway, macGateway, ipLocal, ipRemote), want: drop(DropSrcMAC)},

		// 2. Source IP: the interface's and granted addresses.
		{name: "src_ip: a foreign address", from: epA, p: tcp4(macNIC, macGateway, ipForeign, 8443, ipRemote, 50000), want: drop(DropSrcIP)},
		{name: "src_ip: forged DNS answer into epB's flow", from: epA, p: dnsForged, want: drop(DropSrcIP)},
		{name: "src_ip ok: the real DNS answer from the NIC", from: nic, p: udp4(macGateway, macNIC, ipResolver, 53, ipLocal, 40000), want: fwd(epB)},
		{name: "src_ip ok: link-local", from: epA, p: tcp6(macNIC, macGateway, ipLinkLoc, 50000, "fe80::99", 443), want: uplink},
		{name: "src_ip: another link-local", from: epA, p: tcp6(macNIC, macGateway, "fe80::2", 50000, "fe80::99", 443), want: drop(DropSrcIP)},
		{name: "src_ip: tcp from 0.0.0.0", from: epA, p: tcp4(macNIC, macGateway, "0.0.0.0", 50000, ipRemote, 443), want: drop(DropSrcIP)},
		{name: "src_ip ok: dhcp request from 0.0.0.0", from: epA, p: udp4(macNIC, macBcast, "0.0.0.0", 68, "255.255.255.255", 67), want: uplink},
		{name: "src_ip: tcp from ::", from: epA, p: tcp6(macNIC, macGateway, "::", 50000, ip6Remote, 443), want: drop(DropSrcIP)},
		{name: "src_ip: ICMPv6 echo from ::", from: epA, p: pkt{src: macNIC, dst: macGateway, ethType: layers.EthernetTypeIPv6, srcIP: "::", dstIP: ip6Remote,
			proto: layers.IPProtocolICMPv6, icmpType: 128}, want: drop(DropSrcIP)},
		{name: "src_ip ok: MLDv2 report from ::", from: epA, p: pkt{src: macNIC, dst: MAC{0x33, 0x33, 0, 0, 0, 0x16}, ethType: layers.EthernetTypeIPv6, srcIP: "::", dstIP: "ff02::16",
			proto: layers.IPProtocolICMPv6, icmpType: 143}, want: uplink},
		{name: "src_ip: granted address after SetLocal", from: epA, setup: func(t *testing.T, s *Switch) {
			s.SetLocal([]MAC{macNIC}, []Addr{MustParseAddr(ipLocal), MustParseAddr(ipForeign)})
		}, p: tcp4(macNIC, macGateway, ipForeign, 8443, ipRemote, 50000), want: uplink},

		// 3. Source port: free or own (DropSpoof), not into another's flow.
		{name: "spoof: the kernel's port 22", from: epA, p: tcp4(macNIC, macGateway, ipLocal, 22, ipRemote, 50000), want: drop(DropSpoof)},
		{name: "spoof: epB's connection", from: epA, p: tcp4(macNIC, macGateway, ipLocal, 41000, ipRemote, 443), want: drop(DropSpoof)},
		{name: "spoof ok: epA's own listening port", from: epA, p: tcp4(macNIC, macGateway, ipLocal, 80, ipRemote, 50000), want: uplink},
		{name: "flow_foreign: local frame into epB's connection from a free source", from: epA,
			p: udp4(macNIC, macNIC, ipLocal, 6000, ipLocal, 40001), want: drop(DropFlowForeign)},
		{name: "flow_foreign: forged DNS answer even from a granted address, with CAP_NET_BIND_SERVICE", from: epA, setup: func(t *testing.T, s *Switch) {
			s.SetLocal([]MAC{macNIC, macEP}, []Addr{MustParseAddr(ipLocal), MustParseAddr(ipResolver)})
			s.SetPortPolicy(epA.Port, PortPolicy{BindPrivileged: true})
		}, p: dnsForged, want: drop(DropFlowForeign)},
		{name: "flow_foreign ok: from a source epA holds", from: epA, setup: func(t *testing.T, s *Switch) {
			must(t, s.Table.Insert(reg(ListenKey(MustParseAddr(ipLocal), ProtoUDP, 6000), epA)))
		}, p: udp4(macNIC, macNIC, ipLocal, 6000, ipLocal, 40001), want: fwd(epB)},
		{name: "flow_foreign ok: epA connects to epB's listener", from: epA, p: udp4(macNIC, macNIC, ipLocal, 50000, ipLocal, 8053), want: fwd(epB)},

		// 4. Privileged source ports.
		{name: "src_port_privileged: TCP :700 to NFS", from: epA, p: tcp4(macNIC, macGateway, ipLocal, 700, ipNFS, 2049), want: drop(DropSrcPortPrivileged)},
		{name: "src_port_privileged ok: with CAP_NET_BIND_SERVICE", from: epA, setup: func(t *testing.T, s *Switch) {
			s.SetPortPolicy(epA.Port, PortPolicy{BindPrivileged: true})
		}, p: tcp4(macNIC, macGateway, ipLocal, 700, ipNFS, 2049), want: uplink},
		{name: "src_port_privileged ok: an unprivileged port", from: epA, p: tcp4(macNIC, macGateway, ipLocal, 40700, ipNFS, 2049), want: uplink},
		{name: "src_port_privileged ok: its registered port 80", from: epA, p: tcp4(macNIC, macGateway, ipLocal, 80, ipNFS, 2049), want: uplink},
		{name: "src_port_privileged: policy of another port", from: epA, setup: func(t *testing.T, s *Switch) {
			s.SetPortPolicy(epB.Port, PortPolicy{BindPrivileged: true})
		}, p: udp4(macNIC, macGateway, ipLocal, 123, ipRemote, 123), want: drop(DropSrcPortPrivileged)},

		// 5. ICMP errors about own flows only.
		{name: "icmp_error_foreign: frag needed into epB's flow", from: epA,
			p: icmpErr4(macNIC, ipLocal, ipLocal, quoted4(t, layers.IPProtocolTCP, ipLocal, 41000, ipRemote, 443)), want: drop(DropICMPErrorForeign)},
		{name: "icmp_error_foreign: about the kernel's SSH flow, out of the NIC", from: epA,
			p: icmpErr4(macNIC, ipLocal, ipRemote, quoted4(t, layers.IPProtocolTCP, ipRemote, 50022, ipLocal, 22)), want: drop(DropICMPErrorForeign)},
		{name: "icmp_error_foreign: nothing quoted", from: epA, p: icmpErr4(macNIC, ipLocal, ipRemote, nil), want: drop(DropICMPErrorForeign)},
		{name: "icmp_error ok: about epA's own flow", from: epA,
			p: icmpErr4(macNIC, ipLocal, ipRemote, quoted4(t, layers.IPProtocolTCP, ipRemote, 50080, ipLocal, 80)), want: uplink},
		{name: "icmp_error ok: from the NIC into epB's flow", from: nic,
			p: icmpErr4(macGateway, "198.18.9.9", ipLocal, quoted4(t, layers.IPProtocolTCP, ipLocal, 41000, ipRemote, 443)), want: fwd(epB)},

		// 7. ARP and neighbour discovery claim only what is the endpoint's.
		{name: "neigh_spoof: ARP with the gateway's sender MAC", from: epA, p: arpPkt(macNIC, macGateway, ipLocal, ipRemote), want: drop(DropNeighSpoof)},
		{name: "neigh_spoof: ARP claiming the gateway's IP", from: epA, p: arpPkt(macNIC, macNIC, ipRemote, ipLocal), want: drop(DropNeighSpoof)},
		{name: "neigh ok: ARP for its own IP and MAC", from: epA, p: arpPkt(macNIC, macNIC, ipLocal, ipRemote), want: flood},
		{name: "neigh ok: ARP probe from 0.0.0.0", from: epA, p: arpPkt(macEP, macEP, "0.0.0.0", ipLocal), want: flood},
		{name: "neigh_spoof: NA for a neighbour's address", from: epA, p: ndPkt(macNIC, ip6Local, 136, ip6Other, &macOwn), want: drop(DropNeighSpoof)},
		{name: "neigh_spoof: NA with the gateway's MAC", from: epA, p: ndPkt(macNIC, ip6Local, 136, ip6Local, &macGW), want: drop(DropNeighSpoof)},
		{name: "neigh ok: NA for its own address", from: epA, p: ndPkt(macNIC, ip6Local, 136, ip6Local, &macOwn), want: flood},
		{name: "neigh_spoof: NS with the gateway's MAC", from: epA, p: ndPkt(macNIC, ipLinkLoc, 135, ip6Remote, &macGW), want: drop(DropNeighSpoof)},
		{name: "neigh_spoof: NS from a foreign address", from: epA, p: ndPkt(macNIC, ip6Other, 135, ip6Remote, &macOwn), want: drop(DropNeighSpoof)},
		{name: "neigh ok: NS for duplicate address detection", from: epA, p: ndPkt(macNIC, "::", 135, ip6Local, nil), want: flood},
		{name: "neigh ok: NS from its link-local", from: epA, p: ndPkt(macNIC, ipLinkLoc, 135, ip6Remote, &macOwn), want: flood},
		{name: "neigh ok: router solicitation", from: epA, p: ndPkt(macNIC, ipLinkLoc, 133, "", &macOwn), want: flood},

		// 8. Nothing that configures hosts.
		{name: "host_config: router advertisement", from: epA, p: ndPkt(macNIC, ipLinkLoc, 134, "", &macOwn), want: drop(DropHostConfig)},
		{name: "host_config: redirect", from: epA, p: ndPkt(macNIC, ipLinkLoc, 137, ip6Remote, nil), want: drop(DropHostConfig)},
		{name: "host_config: ICMP redirect", from: epA, p: pkt{src: macNIC, dst: macGateway, ethType: layers.EthernetTypeIPv4, srcIP: ipLocal, dstIP: ipRemote,
			proto: layers.IPProtocolICMPv4, icmpType: 5, inner: quoted4(t, layers.IPProtocolTCP, ipRemote, 50080, ipLocal, 80)}, want: drop(DropHostConfig)},
		{name: "host_config: DHCP server answer", from: epA, p: udp4(macNIC, macBcast, ipLocal, 67, "255.255.255.255", 68), want: drop(DropHostConfig)},
		{name: "host_config: DHCPv6 server answer", from: epA, p: pkt{src: macNIC, dst: macGateway, ethType: layers.EthernetTypeIPv6, srcIP: ipLinkLoc, dstIP: "fe80::99",
			proto: layers.IPProtocolUDP, sport: 547, dport: 546}, want: drop(DropHostConfig)},
		{name: "host_config: EAPOL", from: epA, p: pkt{src: macNIC, dst: MAC{0x01, 0x80, 0xc2, 0, 0, 3}, ethType: layers.EthernetTypeEAPOL}, want: drop(DropHostConfig)},
		{name: "host_config ok: a DHCPv6 client request", from: epA, p: pkt{src: macNIC, dst: MAC{0x33, 0x33, 0, 1, 0, 2}, ethType: layers.EthernetTypeIPv6, srcIP: ipLinkLoc, dstIP: "ff02::1:2",
			proto: layers.IPProtocolUDP, sport: 41546, dport: 547}, want: uplink},

		// The kernel's port and the NIC are not checked.
		{name: "kernel unchecked: foreign source", from: kernel, p: tcp4(macGateway, macGateway, ipForeign, 700, ipRemote, 443), want: uplink},
		{name: "nic unchecked: router advertisement", from: nic, p: ndPkt(macGateway, "fe80::99", 134, "", &macGW), want: flood},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := isoSwitch(t)
			if c.setup != nil {
				c.setup(t, s)
			}
			before := s.Table.Len()
			got := s.Decide(c.from, parsed(t, c.p), 0)
			wantVerdict(t, got, c.want)
			if got.Action == ActDrop && c.from.Kind == PortEndpoint && s.Table.Len() != before {
				t.Errorf("a dropped frame changed the table: %v", s.Table.Rules())
			}
		})
	}
}

// TestIsolationForgedDNSNotLearned: after epA's forged answer, epB's flow
// still belongs to epB, no rule for the resolver's address was learned,
// and the real answer arrives.
func TestIsolationForgedDNSNotLearned(t *testing.T) {
	s := isoSwitch(t)
	wantVerdict(t, s.Decide(epA, parsed(t, udp4(macNIC, macNIC, ipResolver, 53, ipLocal, 40000)), 0), drop(DropSrcIP))
	for _, r := range s.Table.Rules() {
		if r.Owner == epA && r.Kind == Learned {
			t.Errorf("learned for epA: %v", r)
		}
	}
	wantVerdict(t, s.Decide(nic, parsed(t, udp4(macGateway, macNIC, ipResolver, 53, ipLocal, 40000)), 0), fwd(epB))
}

// TestIsolationNoPrivilegedReplyLearned: epA's frame from :700 is dropped
// before learning, so the NFS server's reply to :700 reaches no one.
func TestIsolationNoPrivilegedReplyLearned(t *testing.T) {
	s := isoSwitch(t)
	wantVerdict(t, s.Decide(epA, parsed(t, tcp4(macNIC, macGateway, ipLocal, 700, ipNFS, 2049)), 0), drop(DropSrcPortPrivileged))
	wantVerdict(t, s.Decide(nic, parsed(t, tcp4(macGateway, macNIC, ipNFS, 2049, ipLocal, 700)), 0), drop(DropNoMatch))
}

// TestIsolationFragments: an endpoint's later fragments follow its own
// first fragment only.
func TestIsolationFragments(t *testing.T) {
	s := isoSwitch(t)
	first, later := fragsFrom(macNIC, 300)
	// A later fragment with no first: not held, dropped.
	wantVerdict(t, s.Decide(epA, parsed(t, later), 1), drop(DropFragForeign))
	// epA's datagram: first, then later fragments, out of the NIC.
	wantVerdict(t, s.Decide(epA, parsed(t, first), 2), Verdict{Action: ActUplink})
	wantVerdict(t, s.Decide(epA, parsed(t, later), 3), Verdict{Action: ActUplink})
	// epB injects a later fragment into epA's datagram.
	wantVerdict(t, s.Decide(epB, parsed(t, later), 4), drop(DropFragForeign))
	// A first fragment that failed a check lets no later fragment through.
	f2, l2 := fragsFrom(macNIC, 301)
	f2.sport = 700
	wantVerdict(t, s.Decide(epA, parsed(t, f2), 5), drop(DropSrcPortPrivileged))
	wantVerdict(t, s.Decide(epA, parsed(t, l2), 6), drop(DropFragForeign))
	// Locally switched: epA's fragmented datagram to epB's listener.
	f3, l3 := fragsFrom(macNIC, 302)
	f3.dst, l3.dst, f3.dstIP, l3.dstIP, f3.dport = macNIC, macNIC, ipLocal, ipLocal, 8053
	wantVerdict(t, s.Decide(epA, parsed(t, f3), 7), fwd(epB))
	wantVerdict(t, s.Decide(epA, parsed(t, l3), 8), fwd(epB))
}

// TestIsolationIPv6Fragments: the same for IPv6.
func TestIsolationIPv6Fragments(t *testing.T) {
	s := isoSwitch(t)
	later := v6frag(100, false)
	later.src, later.dst, later.srcIP, later.dstIP = macNIC, macGateway, ip6Local, ip6Remote
	wantVerdict(t, s.Decide(epA, parsed(t, later), 1), drop(DropFragForeign))
	first := v6frag(0, true)
	first.src, first.dst, first.srcIP, first.dstIP, first.sport, first.dport = macNIC, macGateway, ip6Local, ip6Remote, 42000, 443
	wantVerdict(t, s.Decide(epA, parsed(t, first), 2), Verdict{Action: ActUplink})
	wantVerdict(t, s.Decide(epA, parsed(t, later), 3), Verdict{Action: ActUplink})
	wantVerdict(t, s.Decide(epB, parsed(t, later), 4), drop(DropFragForeign))
}

// TestSetLocalConcurrent: SetLocal from another goroutine while frames are
// decided (run with -race); the bound holds.
func TestSetLocalConcurrent(t *testing.T) {
	s := isoSwitch(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			s.SetLocal([]MAC{macNIC}, []Addr{MustParseAddr(ipLocal), AddrFrom4([4]byte{198, 18, 0, byte(i)})})
		}
	}()
	f := parsed(t, tcp4(macNIC, macGateway, ipLocal, 80, ipRemote, 1))
	for range 2000 {
		if v := s.Decide(epA, f, 0); v.Action != ActUplink {
			t.Fatalf("verdict %+v", v)
		}
	}
	<-done
	macs := make([]MAC, MaxLocalMACs+10)
	for i := range macs {
		macs[i] = MAC{2, 0, 0, 0, byte(i >> 8), byte(i)}
	}
	s.SetLocal(macs, nil)
	if got, _ := s.Local(); len(got) != MaxLocalMACs {
		t.Fatalf("%d local MACs, want the bound %d", len(got), MaxLocalMACs)
	}
	if !s.IsLocalMAC(macs[MaxLocalMACs-1]) || s.IsLocalMAC(macs[MaxLocalMACs]) {
		t.Fatal("the bound is not the first MaxLocalMACs")
	}
}

// TestIsolationDoesNotAllocate: the checks allocate nothing.
func TestIsolationDoesNotAllocate(t *testing.T) {
	s := isoSwitch(t)
	for name, p := range map[string]pkt{
		"own flow out":  tcp4(macNIC, macGateway, ipLocal, 80, ipRemote, 1),
		"src_ip":        tcp4(macNIC, macGateway, ipForeign, 80, ipRemote, 1),
		"privileged":    tcp4(macNIC, macGateway, ipLocal, 700, ipNFS, 2049),
		"flow_foreign":  udp4(macNIC, macNIC, ipLocal, 6000, ipLocal, 40001),
		"neighbour adv": ndPkt(macNIC, ip6Local, 136, ip6Local, &macNIC),
	} {
		f := parsed(t, p)
		if n := testing.AllocsPerRun(100, func() { s.Decide(epA, f, 0) }); n != 0 {
			t.Errorf("%s: Decide allocates %v times", name, n)
		}
	}
}
