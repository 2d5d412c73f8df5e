package l4

import (
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// FuzzParse feeds arbitrary bytes to Parse, and what parses to Decide from a
// NIC and from an endpoint. Neither may panic, and a parsed frame's fields
// must be consistent with its bytes. Run it with
//
//	go test -run='^$' -fuzz=FuzzParse -fuzztime=60s ./switch
func FuzzParse(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed.frame)
	}
	s := NewSwitch(NewTable(), macNIC)
	localTo(s, macNIC, macEP)
	l := MustParseAddr(ipLocal)
	_ = s.Table.Insert(reg(ListenKey(l, ProtoTCP, 80), epA))
	_ = s.Table.Insert(reg(ListenKey(l, ProtoICMP, 0), kernel))
	_ = s.Table.Insert(reg(ListenKey(MustParseAddr(ip6Local), ProtoUDP, 53), epB))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fr Frame
		r := Parse(b, &fr)
		if r >= numDropReasons {
			t.Fatalf("unknown drop reason %d", r)
		}
		if r != DropNone {
			return
		}
		if fr.L3 > len(b) || fr.L4 > len(b) || (fr.L4 != 0 && fr.L4 < fr.L3) {
			t.Fatalf("offsets L3=%d L4=%d outside a %d-byte frame", fr.L3, fr.L4, len(b))
		}
		if fr.Ports && (!HasPorts(fr.Proto) || fr.L4 == 0 || fr.L4+4 > len(b)) {
			t.Fatalf("ports for proto %d at L4=%d in %d bytes", fr.Proto, fr.L4, len(b))
		}
		if fr.FragOffset != 0 && (fr.Ports || !fr.Fragment) {
			t.Fatalf("later fragment with ports or without the fragment flag: %+v", fr)
		}
		if fr.Kind == KindIPv4 && (!fr.Src.Is4() || !fr.Dst.Is4()) {
			t.Fatalf("IPv4 frame with non-IPv4 addresses: %v %v", fr.Src, fr.Dst)
		}
		for _, in := range []Owner{nic, epA} {
			v := s.Decide(in, &fr, 1)
			if v.Action == ActForward && v.To.Port == in.Port {
				t.Fatalf("frame forwarded back to its sender %v", in)
			}
			if v.Release {
				s.TakeHeld(&fr, nil)
			}
		}
	})
}

type namedFrame struct {
	name  string
	frame []byte
}

// fuzzSeeds are the corpus of FuzzParse, each named after the edge case it covers.
func fuzzSeeds(tb testing.TB) []namedFrame {
	v4opts := tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 80)
	v4opts.ipv4Options = []layers.IPv4Option{{OptionType: 7, OptionLength: 7, OptionData: []byte{4, 0, 0, 0, 0}}, {OptionType: 0}}
	vlan := udp4(macRemote, macNIC, ipRemote, 1, ipLocal, 53)
	vlan.vlan = 7
	first, later := fragments4(5)
	hbh := tcp6(macRemote, macNIC, ip6Remote, 1, ip6Local, 80)
	hbh.v6next = ptr(layers.IPProtocolIPv6HopByHop)
	hbh.v6ext = []gopacket.SerializableLayer{gopacket.Payload([]byte{6, 0, 1, 4, 0, 0, 0, 0})}
	build := func(p pkt) []byte { return p.build(tb) }
	cut := func(b []byte, n int) []byte { return b[:len(b)-n] }
	return []namedFrame{
		{"empty frame", nil},
		{"ethernet header only", ethHdr(EtherTypeIPv4)},
		{"plain tcp4", build(tcp4(macRemote, macNIC, ipRemote, 40000, ipLocal, 80))},
		{"ipv4 with options", build(v4opts)},
		{"802.1Q tagged udp", build(vlan)},
		{"ipv4 first fragment", build(first)},
		{"ipv4 later fragment", build(later)},
		{"tcp4 cut inside the ports", cut(build(tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 80)), 18)},
		{"arp", build(pkt{src: macRemote, dst: macBcast, ethType: layers.EthernetTypeARP})},
		{"eapol", build(pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeEAPOL})},
		{"dhcp request", build(udp4(macEP, macBcast, "0.0.0.0", 68, "255.255.255.255", 67))},
		{"icmp error quoting tcp", build(pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv4, srcIP: "198.18.9.9", dstIP: ipLocal,
			proto: layers.IPProtocolICMPv4, icmpType: 3, code: 4, inner: quoted4(tb, layers.IPProtocolTCP, ipLocal, 41000, ipRemote, 443)})},
		{"plain tcp6", build(tcp6(macRemote, macNIC, ip6Remote, 1, ip6Local, 80))},
		{"ipv6 hop-by-hop then tcp", build(hbh)},
		{"ipv6 first fragment", build(v6frag(0, true))},
		{"ipv6 later fragment", build(v6frag(100, false))},
		{"ipv6 extension chain past the limit", v6chain(maxExtHeaders + 1)},
		{"icmpv6 packet too big quoting udp", build(pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv6, srcIP: "2001:db8:9::9", dstIP: ip6Local,
			proto: layers.IPProtocolICMPv6, icmpType: 2, inner: quoted6(tb, layers.IPProtocolUDP, ip6Local, 5000, ip6Remote, 53)})},
		{"icmpv6 neighbour solicitation", build(pkt{src: macRemote, dst: MAC{0x33, 0x33, 0xff, 0, 0, 1}, ethType: layers.EthernetTypeIPv6, srcIP: ip6Remote,
			dstIP: "ff02::1:ff00:1", proto: layers.IPProtocolICMPv6, icmpType: 135})},
		{"loopback destination", build(tcp4(macRemote, macNIC, ipRemote, 1, "127.0.0.1", 22))},
		{"arp reply claiming an address", build(arpPkt(macNIC, macRemote, ipRemote, ipLocal))},
		{"arp not ipv4 over ethernet", arpOther(build(arpPkt(macNIC, macNIC, ipLocal, ipRemote)))},
		{"nd neighbour advertisement with target lla", build(ndPkt(macNIC, ip6Local, 136, ip6Local, &macNIC))},
		{"nd neighbour solicitation with source lla", build(ndPkt(macNIC, "fe80::1", 135, ip6Remote, &macNIC))},
		{"nd router advertisement", build(ndPkt(macRemote, "fe80::99", 134, "", &macRemote))},
		{"nd redirect", build(ndPkt(macRemote, "fe80::99", 137, ip6Remote, nil))},
		{"nd option of length 0", ndOptions(tb, 136, []byte{2, 0, 0, 0, 0, 0, 0, 0})},
		{"nd two different link-layer options", ndOptions(tb, 136, []byte{2, 1, 2, 0, 0, 0, 0, 1, 2, 1, 2, 0, 0, 0, 0, 0x99})},
		{"nd link-layer option of 16 bytes", ndOptions(tb, 135, []byte{1, 2, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0})},
		{"nd option cut short", ndOptions(tb, 135, []byte{1, 1, 2, 0})},
		{"nd neighbour advertisement without target", ndCut(ndOptions(tb, 136, nil), 8)},
	}
}

// ndCut cuts an ICMPv6 frame to n bytes of ICMPv6, lengths fixed.
func ndCut(b []byte, n int) []byte {
	b = b[:14+40+n]
	b[14+4], b[14+5] = byte(n>>8), byte(n)
	return b
}

// arpOther turns an ARP frame into one for another protocol type.
func arpOther(b []byte) []byte {
	b[14+2], b[14+3] = 0x86, 0xdd
	return b
}

// ndOptions is a neighbour solicitation (135) or advertisement (136) for
// ip6Local from ip6Local with the raw options opts.
func ndOptions(tb testing.TB, typ uint8, opts []byte) []byte {
	p := ndPkt(macNIC, ip6Local, typ, ip6Local, nil)
	b := p.build(tb)
	b = append(b, opts...)
	plen := len(b) - 14 - 40
	b[14+4], b[14+5] = byte(plen>>8), byte(plen)
	return b
}

// TestFuzzSeedsParse keeps the corpus honest: every seed but the ones named
// as broken parses, so the fuzzer starts from frames that reach Decide.
func TestFuzzSeedsParse(t *testing.T) {
	broken := map[string]DropReason{
		"empty frame":                         DropTruncated,
		"ethernet header only":                DropTruncated,
		"tcp4 cut inside the ports":           DropTruncated,
		"ipv6 extension chain past the limit": DropBadExtHeader,
	}
	for _, s := range fuzzSeeds(t) {
		var f Frame
		if got := Parse(s.frame, &f); got != broken[s.name] {
			t.Errorf("seed %q: Parse = %v, want %v", s.name, got, broken[s.name])
		}
	}
}
