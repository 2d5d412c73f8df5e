package l4

import (
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestParse(t *testing.T) {
	hopByHop := func() pkt {
		p := tcp6(macRemote, macNIC, ip6Remote, 40000, ip6Local, 443)
		// hop-by-hop (0) -> destination options (60) -> TCP, each 8 bytes
		p.v6next = ptr(layers.IPProtocolIPv6HopByHop)
		p.v6ext = []gopacket.SerializableLayer{gopacket.Payload([]byte{60, 0, 1, 4, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0})}
		return p
	}
	tests := []struct {
		name   string
		frame  func(t testing.TB) []byte
		reason DropReason
		check  func(t *testing.T, f *Frame)
	}{
		{"tcp4", b(tcp4(macRemote, macNIC, ipRemote, 40000, ipLocal, 80)), DropNone, func(t *testing.T, f *Frame) {
			want := Flow{Src: MustParseAddr(ipRemote), Dst: MustParseAddr(ipLocal), SrcPort: 40000, DstPort: 80, Proto: ProtoTCP, Ports: true}
			eq(t, "flow", f.Flow, want)
			eq(t, "kind", f.Kind, KindIPv4)
			eq(t, "src mac", f.SrcMAC, macRemote)
			eq(t, "dst mac", f.DstMAC, macNIC)
			eq(t, "L4", f.L4, 34)
			eq(t, "fragment", f.Fragment, false)
		}},
		{"udp4 with 802.1Q tag", b(func() pkt { p := udp4(macRemote, macNIC, ipRemote, 5353, ipLocal, 53); p.vlan = 42; return p }()), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "tagged", f.Tagged, true)
			eq(t, "vlan", f.VLAN, uint16(42))
			eq(t, "ports", [2]uint16{f.SrcPort, f.DstPort}, [2]uint16{5353, 53})
			eq(t, "L3", f.L3, 18)
		}},
		{"ipv4 options skipped", b(func() pkt {
			p := tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 2)
			p.ipv4Options = []layers.IPv4Option{{OptionType: 7, OptionLength: 7, OptionData: []byte{4, 0, 0, 0, 0}}, {OptionType: 0}}
			return p
		}()), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "L4", f.L4, 14+28)
			eq(t, "ports", [2]uint16{f.SrcPort, f.DstPort}, [2]uint16{1, 2})
		}},
		{"dccp ports", b(func() pkt { p := tcp4(macRemote, macNIC, ipRemote, 7, ipLocal, 8); p.proto = ProtoDCCP; return p }()), DropNone, portsAre(7, 8)},
		{"sctp ports", b(func() pkt { p := tcp4(macRemote, macNIC, ipRemote, 9, ipLocal, 10); p.proto = ProtoSCTP; return p }()), DropNone, portsAre(9, 10)},
		{"udplite ports", b(func() pkt { p := tcp4(macRemote, macNIC, ipRemote, 11, ipLocal, 12); p.proto = ProtoUDPLite; return p }()), DropNone, portsAre(11, 12)},
		{"gre has no ports", b(func() pkt { p := tcp4(macRemote, macNIC, ipRemote, 11, ipLocal, 12); p.proto = 47; return p }()), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "ports", f.Ports, false)
			eq(t, "proto", f.Proto, uint8(47))
		}},
		{"arp", b(pkt{src: macRemote, dst: macBcast, ethType: layers.EthernetTypeARP}), DropNone, func(t *testing.T, f *Frame) { eq(t, "kind", f.Kind, KindARP) }},
		{"eapol", b(pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeEAPOL}), DropNone, func(t *testing.T, f *Frame) { eq(t, "kind", f.Kind, KindEAPOL) }},
		{"ipv4 first fragment", b(func() pkt {
			p := udp4(macRemote, macNIC, ipRemote, 4000, ipLocal, 4001)
			p.fragID, p.moreFrags, p.payload = 0x4242, true, make([]byte, 64)
			return p
		}()), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "fragment", [3]bool{f.Fragment, f.MoreFrags, f.FirstFragment()}, [3]bool{true, true, true})
			eq(t, "id", f.FragID, uint32(0x4242))
			eq(t, "ports", f.Ports, true)
		}},
		{"ipv4 later fragment", b(func() pkt {
			p := udp4(macRemote, macNIC, ipRemote, 4000, ipLocal, 4001)
			p.fragID, p.fragOff, p.payload = 0x4242, 9, make([]byte, 40)
			return p
		}()), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "fragment", [3]bool{f.Fragment, f.MoreFrags, f.FirstFragment()}, [3]bool{true, false, false})
			eq(t, "offset", f.FragOffset, uint16(72))
			eq(t, "ports", f.Ports, false)
			eq(t, "L4", f.L4, 0)
		}},
		{"ipv4 DF", b(func() pkt { p := tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 2); p.df = true; return p }()), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "df", f.DontFrag, true)
			eq(t, "fragment", f.Fragment, false)
		}},
		{"dhcp request", b(udp4(macEP, macBcast, "0.0.0.0", 68, "255.255.255.255", 67)), DropNone, func(t *testing.T, f *Frame) { eq(t, "dhcp", f.DHCP, DHCPRequest) }},
		{"dhcp answer", b(udp4(macRemote, macBcast, ipRemote, 67, "255.255.255.255", 68)), DropNone, func(t *testing.T, f *Frame) { eq(t, "dhcp", f.DHCP, DHCPAnswer) }},
		{"icmp echo", b(pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv4, srcIP: ipRemote, dstIP: ipLocal, proto: layers.IPProtocolICMPv4, icmpType: 8}), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "type", f.ICMPType, uint8(8))
			eq(t, "error", f.ICMPError, false)
		}},
		{"icmp frag-needed quotes a tcp flow", func(t testing.TB) []byte {
			return pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv4, srcIP: "198.18.9.9", dstIP: ipLocal,
				proto: layers.IPProtocolICMPv4, icmpType: 3, code: 4, inner: quoted4(t, layers.IPProtocolTCP, ipLocal, 41000, ipRemote, 443)}.build(t)
		}, DropNone, func(t *testing.T, f *Frame) {
			eq(t, "error", [2]bool{f.ICMPError, f.InnerOK}, [2]bool{true, true})
			eq(t, "inner", f.Inner, Flow{Src: MustParseAddr(ipLocal), Dst: MustParseAddr(ipRemote), SrcPort: 41000, DstPort: 443, Proto: ProtoTCP, Ports: true})
		}},
		{"icmp error with a cut quote has no inner", func(t testing.TB) []byte {
			return pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv4, srcIP: ipRemote, dstIP: ipLocal,
				proto: layers.IPProtocolICMPv4, icmpType: 11, inner: []gopacket.SerializableLayer{gopacket.Payload([]byte{0x45, 0, 0})}}.build(t)
		}, DropNone, func(t *testing.T, f *Frame) {
			eq(t, "error", [2]bool{f.ICMPError, f.InnerOK}, [2]bool{true, false})
		}},
		{"tcp6", b(tcp6(macRemote, macNIC, ip6Remote, 40000, ip6Local, 80)), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "flow", f.Flow, Flow{Src: MustParseAddr(ip6Remote), Dst: MustParseAddr(ip6Local), SrcPort: 40000, DstPort: 80, Proto: ProtoTCP, Ports: true})
			eq(t, "kind", f.Kind, KindIPv6)
			eq(t, "L4", f.L4, 54)
		}},
		{"ipv6 extension headers walked", b(hopByHop()), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "proto", f.Proto, uint8(ProtoTCP))
			eq(t, "L4", f.L4, 54+16)
			eq(t, "dport", f.DstPort, uint16(443))
		}},
		{"ipv6 first fragment", b(v6frag(0, true)), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "fragment", [3]bool{f.Fragment, f.MoreFrags, f.FirstFragment()}, [3]bool{true, true, true})
			eq(t, "id", f.FragID, uint32(0x1234))
			eq(t, "ports", [2]uint16{f.SrcPort, f.DstPort}, [2]uint16{40000, 80})
		}},
		{"ipv6 later fragment", b(v6frag(100, false)), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "fragment", [3]bool{f.Fragment, f.MoreFrags, f.FirstFragment()}, [3]bool{true, false, false})
			eq(t, "offset", f.FragOffset, uint16(800))
			eq(t, "proto", f.Proto, uint8(ProtoTCP))
			eq(t, "ports", f.Ports, false)
		}},
		{"icmpv6 neighbour solicitation", b(pkt{src: macRemote, dst: MAC{0x33, 0x33, 0xff, 0, 0, 1}, ethType: layers.EthernetTypeIPv6, srcIP: ip6Remote, dstIP: "ff02::1:ff00:1", proto: layers.IPProtocolICMPv6, icmpType: 135}), DropNone, func(t *testing.T, f *Frame) {
			eq(t, "nd", f.NeighborDiscovery, true)
		}},
		{"icmpv6 packet too big quotes a udp flow", func(t testing.TB) []byte {
			return pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv6, srcIP: "2001:db8:9::9", dstIP: ip6Local,
				proto: layers.IPProtocolICMPv6, icmpType: 2, inner: quoted6(t, layers.IPProtocolUDP, ip6Local, 5000, ip6Remote, 53)}.build(t)
		}, DropNone, func(t *testing.T, f *Frame) {
			eq(t, "error", [2]bool{f.ICMPError, f.InnerOK}, [2]bool{true, true})
			eq(t, "inner", f.Inner, Flow{Src: MustParseAddr(ip6Local), Dst: MustParseAddr(ip6Remote), SrcPort: 5000, DstPort: 53, Proto: ProtoUDP, Ports: true})
		}},

		// Malformed frames: a drop reason, never a panic.
		{"empty", raw(nil), DropTruncated, nil},
		{"short ethernet", raw(make([]byte, 13)), DropTruncated, nil},
		{"vlan tag cut", raw(append(ethHdr(EtherTypeVLAN), 0, 1)), DropTruncated, nil},
		{"unknown ethertype", raw(append(ethHdr(0x88cc), make([]byte, 40)...)), DropUnknownEtherType, nil},
		{"arp cut", raw(append(ethHdr(EtherTypeARP), make([]byte, 27)...)), DropTruncated, nil},
		{"ipv4 cut", raw(append(ethHdr(EtherTypeIPv4), 0x45, 0, 0)), DropTruncated, nil},
		{"ipv4 version 6 in an ipv4 ethertype", mutate(tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 2), func(b []byte) { b[14] = 0x65 }), DropBadVersion, nil},
		{"ipv4 ihl 4", mutate(tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 2), func(b []byte) { b[14] = 0x44 }), DropBadIHL, nil},
		{"ipv4 ihl past frame", raw(append(ethHdr(EtherTypeIPv4), append([]byte{0x4f}, make([]byte, 30)...)...)), DropTruncated, nil},
		{"ipv4 total length below ihl", mutate(tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 2), func(b []byte) { b[16], b[17] = 0, 19 }), DropBadLength, nil},
		{"ipv4 total length past frame", mutate(tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 2), func(b []byte) { b[16], b[17] = 0x05, 0xdc }), DropTruncated, nil},
		{"ipv4 tcp without ports", mutate(tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 2), func(b []byte) { b[16], b[17] = 0, 22 }), DropTruncatedL4, nil},
		{"ipv6 payload length past frame", mutate(tcp6(macRemote, macNIC, ip6Remote, 1, ip6Local, 2), func(b []byte) { b[18], b[19] = 0xff, 0xff }), DropTruncated, nil},
		{"ipv6 extension header cut", mutate(tcp6(macRemote, macNIC, ip6Remote, 1, ip6Local, 2), func(b []byte) { b[20] = 0; b[55] = 200 }), DropBadExtHeader, nil},
		{"ipv6 endless extension chain", raw(v6chain(maxExtHeaders + 2)), DropBadExtHeader, nil},
		{"ipv6 extension chain at the limit", raw(v6chain(maxExtHeaders)), DropNone, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var f Frame
			got := Parse(tc.frame(t), &f)
			if got != tc.reason {
				t.Fatalf("Parse = %v, want %v (frame %+v)", got, tc.reason, f)
			}
			if tc.check != nil {
				tc.check(t, &f)
			}
		})
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	frames := [][]byte{
		tcp4(macRemote, macNIC, ipRemote, 40000, ipLocal, 80).build(t),
		tcp6(macRemote, macNIC, ip6Remote, 40000, ip6Local, 80).build(t),
		pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv4, srcIP: "198.18.9.9", dstIP: ipLocal,
			proto: layers.IPProtocolICMPv4, icmpType: 3, code: 4, inner: quoted4(t, layers.IPProtocolTCP, ipLocal, 41000, ipRemote, 443)}.build(t),
	}
	var f Frame
	for _, fr := range frames {
		if n := testing.AllocsPerRun(100, func() { Parse(fr, &f) }); n != 0 {
			t.Errorf("Parse allocates %v times per frame", n)
		}
	}
}

func b(p pkt) func(testing.TB) []byte { return func(t testing.TB) []byte { return p.build(t) } }
func raw(x []byte) func(testing.TB) []byte {
	return func(testing.TB) []byte { return x }
}
func mutate(p pkt, m func([]byte)) func(testing.TB) []byte {
	return func(t testing.TB) []byte { x := p.build(t); m(x); return x }
}
func b2u(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func ethHdr(et uint16) []byte {
	h := make([]byte, 14)
	copy(h[0:6], macNIC[:])
	copy(h[6:12], macRemote[:])
	h[12], h[13] = byte(et>>8), byte(et)
	return h
}

// v6chain is an IPv6 packet with n destination-options headers before UDP.
func v6chain(n int) []byte {
	ext := make([]byte, 0, 8*n+8)
	for i := range n {
		next := byte(60)
		if i == n-1 {
			next = ProtoUDP
		}
		ext = append(ext, next, 0, 1, 4, 0, 0, 0, 0)
	}
	ext = append(ext, 0, 1, 0, 2, 0, 8, 0, 0) // UDP header
	h := make([]byte, 40)
	h[0] = 0x60
	h[4], h[5] = byte(len(ext)>>8), byte(len(ext))
	h[6] = 60
	if n == 0 {
		h[6] = ProtoUDP
	}
	h[8], h[23] = 0x20, 1
	h[24], h[39] = 0x20, 2
	return append(append(ethHdr(EtherTypeIPv6), h...), ext...)
}

func portsAre(s, d uint16) func(t *testing.T, f *Frame) {
	return func(t *testing.T, f *Frame) {
		eq(t, "ports", [3]any{f.SrcPort, f.DstPort, f.Ports}, [3]any{s, d, true})
	}
}

func eq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func ptr[T any](v T) *T { return &v }

// v6frag is a fragment of an IPv6 TCP packet 2001:db8:1::2:40000 -> 2001:db8::1:80, id 0x1234.
func v6frag(off uint16, more bool) pkt {
	p := tcp6(macRemote, macNIC, ip6Remote, 40000, ip6Local, 80)
	p.v6next = ptr(layers.IPProtocolIPv6Fragment)
	p.v6ext = []gopacket.SerializableLayer{gopacket.Payload([]byte{6, 0, byte(off >> 5), byte(off<<3) | b2u(more), 0, 0, 0x12, 0x34})}
	if off != 0 {
		p.fragOff = off
		p.payload = make([]byte, 16)
	}
	return p
}

// TestParseNeighbourClaims: what ARP and neighbour discovery messages
// claim, read for the isolation checks; malformed claims are flagged, not
// dropped at parse time (a NIC's frames are flooded as before).
func TestParseNeighbourClaims(t *testing.T) {
	var f Frame
	if r := Parse(arpPkt(macNIC, macEP, ipLocal, ipRemote).build(t), &f); r != DropNone || f.NeighBad ||
		f.NeighMAC != macEP || !f.NeighMACSet || f.Src != MustParseAddr(ipLocal) || f.Dst != MustParseAddr(ipRemote) {
		t.Errorf("arp: %v %+v", r, f)
	}
	if r := Parse(arpOther(arpPkt(macNIC, macEP, ipLocal, ipRemote).build(t)), &f); r != DropNone || !f.NeighBad {
		t.Errorf("arp for IPv6: %v bad=%v", r, f.NeighBad)
	}
	if r := Parse(ndPkt(macNIC, ip6Local, 136, ip6Other, &macEP).build(t), &f); r != DropNone || f.NeighBad ||
		!f.NeighborDiscovery || f.NeighTarget != MustParseAddr(ip6Other) || f.NeighMAC != macEP || !f.NeighMACSet {
		t.Errorf("NA: %v %+v", r, f)
	}
	if r := Parse(ndPkt(macNIC, "::", 135, ip6Local, nil).build(t), &f); r != DropNone || f.NeighBad || f.NeighMACSet ||
		f.NeighTarget != MustParseAddr(ip6Local) {
		t.Errorf("NS for DAD: %v %+v", r, f)
	}
	if r := Parse(ndPkt(macNIC, ipLinkLoc, 133, "", &macNIC).build(t), &f); r != DropNone || f.NeighBad || f.NeighMAC != macNIC || !f.NeighTarget.IsZero() {
		t.Errorf("RS: %v %+v", r, f)
	}
	for _, s := range fuzzSeeds(t) {
		switch s.name {
		case "nd option of length 0", "nd two different link-layer options", "nd link-layer option of 16 bytes",
			"nd option cut short", "nd neighbour advertisement without target":
			if r := Parse(s.frame, &f); r != DropNone || !f.NeighBad {
				t.Errorf("%s: %v, bad=%v", s.name, r, f.NeighBad)
			}
		}
	}
}
