package l4

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func serializeFrame(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ip16(s string) net.IP { a := netip.MustParseAddr(s).As16(); return a[:] }

// An IPv6 datagram whose fragment header is followed by a
// destination-options header: its first fragment's Proto is UDP (after
// that header), its later fragment's the destination options (60); both
// name 60 in FragProto, so the later fragment follows the first.
func TestFragProtoAfterFragmentHeader(t *testing.T) {
	eth := &layers.Ethernet{SrcMAC: hw(macRemote), DstMAC: hw(macNIC), EthernetType: layers.EthernetTypeIPv6}
	ip := func() *layers.IPv6 {
		return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment, SrcIP: ip16(ip6Remote), DstIP: ip16(ip6Local)}
	}
	destOpts := gopacket.Payload([]byte{17, 0, 1, 4, 0, 0, 0, 0})
	udp := gopacket.Payload([]byte{0, 53, 0x13, 0x88, 0, 40, 0, 0}) // 53 -> 5000
	first := serializeFrame(t, eth, ip(), &layers.IPv6Fragment{NextHeader: layers.IPProtocolIPv6Destination, MoreFragments: true, Identification: 7}, destOpts, udp, gopacket.Payload(make([]byte, 16)))
	later := serializeFrame(t, eth, ip(), &layers.IPv6Fragment{NextHeader: layers.IPProtocolIPv6Destination, FragmentOffset: 4, Identification: 7}, gopacket.Payload(make([]byte, 16)))

	var ff, lf Frame
	if r := Parse(first, &ff); r != DropNone {
		t.Fatal(r)
	}
	if r := Parse(later, &lf); r != DropNone {
		t.Fatal(r)
	}
	if ff.Proto != ProtoUDP || ff.FragProto != 60 || lf.Proto != 60 || lf.FragProto != 60 {
		t.Fatalf("first: proto %d, frag proto %d; later: proto %d, frag proto %d", ff.Proto, ff.FragProto, lf.Proto, lf.FragProto)
	}
	s := NewSwitch(NewTable())
	must(t, s.Table.Insert(reg(ListenKey(MustParseAddr(ip6Local), ProtoUDP, 5000), epA)))
	wantVerdict(t, s.Decide(nic, &ff, 1), fwd(epA))
	wantVerdict(t, s.Decide(nic, &lf, 2), fwd(epA))
}

// IPv6 with an IPv4-mapped address is dropped (it would alias the IPv4
// rules), and an ICMPv6 error quoting one quotes nothing.
func TestParseIPv4MappedIPv6(t *testing.T) {
	eth := &layers.Ethernet{SrcMAC: hw(macRemote), DstMAC: hw(macNIC), EthernetType: layers.EthernetTypeIPv6}
	mapped := func(src, dst string) *layers.IPv6 {
		return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: ip16(src), DstIP: ip16(dst)}
	}
	udp := gopacket.Payload([]byte{0, 53, 0, 80, 0, 8, 0, 0})
	var f Frame
	for _, ip := range []*layers.IPv6{mapped("::ffff:198.18.1.2", ip6Local), mapped(ip6Remote, "::ffff:198.18.0.1")} {
		if r := Parse(serializeFrame(t, eth, ip, udp), &f); r != DropMappedAddr {
			t.Errorf("%v -> %v: %v, want %v", ip.SrcIP, ip.DstIP, r, DropMappedAddr)
		}
	}
	quote := serializeFrame(t, mapped("::ffff:198.18.0.1", "::ffff:198.18.1.2"), udp)
	icmp := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: ip16(ip6Remote), DstIP: ip16(ip6Local)}
	frame := serializeFrame(t, eth, icmp, gopacket.Payload(append([]byte{1, 4, 0, 0, 0, 0, 0, 0}, quote...)))
	if r := Parse(frame, &f); r != DropNone || !f.ICMPError || f.InnerOK {
		t.Errorf("ICMPv6 error quoting a mapped packet: %v, error %v, quote parsed %v (want none)", r, f.ICMPError, f.InnerOK)
	}
}
