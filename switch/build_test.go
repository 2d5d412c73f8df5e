package l4

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Test frames are built with gopacket, so that the hand-written parser is
// checked against an independent encoder.

var (
	macNIC    = MAC{0x02, 0, 0, 0, 0, 0x01} // the NIC's (and kernel's) MAC
	macEP     = MAC{0x02, 0, 0, 0, 0, 0x02} // an endpoint with a MAC of its own
	macRemote = MAC{0x02, 0, 0, 0, 0, 0x99} // the remote host / gateway
	macBcast  = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

	ipLocal   = "198.18.0.1"
	ipRemote  = "198.18.1.2"
	ip6Local  = "2001:db8::1"
	ip6Remote = "2001:db8:1::2"
)

func hw(m MAC) net.HardwareAddr { return net.HardwareAddr(m[:]) }

// pkt describes a test frame.
type pkt struct {
	src, dst       MAC
	vlan           int // >0: an 802.1Q tag
	ethType        layers.EthernetType
	srcIP, dstIP   string
	proto          layers.IPProtocol
	sport, dport   uint16
	payload        []byte
	fragID         uint16
	fragOff        uint16 // in 8-byte units
	moreFrags, df  bool
	icmpType, code uint8
	inner          []gopacket.SerializableLayer // for ICMP errors: the quoted packet
	ipv4Options    []layers.IPv4Option
	v6ext          []gopacket.SerializableLayer // extension headers between IPv6 and L4
	v6next         *layers.IPProtocol           // IPv6 next header when v6ext is set
	arp            *layers.ARP                  // an ARP message of its own (else a request from ipRemote)
	nd             gopacket.SerializableLayer   // ICMPv6: the neighbour discovery body after the ICMPv6 header
}

func (p pkt) build(t testing.TB) []byte {
	t.Helper()
	var ls []gopacket.SerializableLayer
	eth := &layers.Ethernet{SrcMAC: hw(p.src), DstMAC: hw(p.dst), EthernetType: p.ethType}
	if p.vlan > 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, eth, &layers.Dot1Q{VLANIdentifier: uint16(p.vlan), Type: p.ethType})
	} else {
		ls = append(ls, eth)
	}
	var netl gopacket.NetworkLayer
	switch p.ethType {
	case layers.EthernetTypeARP:
		if p.arp != nil {
			return serialize(t, append(ls, p.arp)...)
		}
		ls = append(ls, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
			SourceHwAddress: hw(p.src), SourceProtAddress: net.ParseIP(ipRemote).To4(),
			DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(ipLocal).To4()})
		return serialize(t, ls...)
	case layers.EthernetTypeEAPOL:
		ls = append(ls, &layers.EAPOL{Version: 2, Type: layers.EAPOLTypeStart}, gopacket.Payload(make([]byte, 32)))
		return serialize(t, ls...)
	case layers.EthernetTypeIPv4:
		flags := layers.IPv4Flag(0)
		if p.moreFrags {
			flags |= layers.IPv4MoreFragments
		}
		if p.df {
			flags |= layers.IPv4DontFragment
		}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: p.proto, SrcIP: net.ParseIP(p.srcIP).To4(),
			DstIP: net.ParseIP(p.dstIP).To4(), Id: p.fragID, Flags: flags, FragOffset: p.fragOff, Options: p.ipv4Options}
		ls = append(ls, ip)
		netl = ip
	case layers.EthernetTypeIPv6:
		next := p.proto
		if p.v6next != nil {
			next = *p.v6next
		}
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: net.ParseIP(p.srcIP), DstIP: net.ParseIP(p.dstIP)}
		ls = append(ls, ip)
		ls = append(ls, p.v6ext...)
		netl = ip
	default:
		ls = append(ls, gopacket.Payload(p.payload))
		return serialize(t, ls...)
	}
	if p.fragOff != 0 {
		ls = append(ls, gopacket.Payload(p.payload))
		return serialize(t, ls...)
	}
	switch p.proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), SYN: true, Window: 1000}
		_ = tcp.SetNetworkLayerForChecksum(netl)
		ls = append(ls, tcp)
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		_ = udp.SetNetworkLayerForChecksum(netl)
		ls = append(ls, udp)
	case layers.IPProtocolICMPv4:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(p.icmpType, p.code), Id: 1, Seq: 1})
		ls = append(ls, p.inner...)
	case layers.IPProtocolICMPv6:
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(p.icmpType, p.code)}
		_ = icmp.SetNetworkLayerForChecksum(netl)
		if p.nd != nil {
			return serialize(t, append(ls, icmp, p.nd)...)
		}
		ls = append(ls, icmp, gopacket.Payload(make([]byte, 4)))
		ls = append(ls, p.inner...)
	default: // DCCP, SCTP, UDP-Lite and others: ports by hand
		ls = append(ls, gopacket.Payload([]byte{byte(p.sport >> 8), byte(p.sport), byte(p.dport >> 8), byte(p.dport), 0, 0, 0, 0}))
	}
	if p.payload != nil {
		ls = append(ls, gopacket.Payload(p.payload))
	}
	return serialize(t, ls...)
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// Common frames.

func tcp4(src, dst MAC, sip string, sport uint16, dip string, dport uint16) pkt {
	return pkt{src: src, dst: dst, ethType: layers.EthernetTypeIPv4, srcIP: sip, dstIP: dip,
		proto: layers.IPProtocolTCP, sport: sport, dport: dport}
}

func udp4(src, dst MAC, sip string, sport uint16, dip string, dport uint16) pkt {
	p := tcp4(src, dst, sip, sport, dip, dport)
	p.proto = layers.IPProtocolUDP
	return p
}

func tcp6(src, dst MAC, sip string, sport uint16, dip string, dport uint16) pkt {
	p := tcp4(src, dst, sip, sport, dip, dport)
	p.ethType = layers.EthernetTypeIPv6
	return p
}

// quoted4 is an IPv4 packet as an ICMP error quotes it: the header and the
// first 8 bytes of its payload.
func quoted4(t testing.TB, proto layers.IPProtocol, sip string, sport uint16, dip string, dport uint16) []gopacket.SerializableLayer {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: net.ParseIP(sip).To4(), DstIP: net.ParseIP(dip).To4(), Length: 1500}
	b := serialize(t, ip)
	b[2], b[3] = 0x05, 0xdc // total length of the original packet, not of the quote
	return []gopacket.SerializableLayer{gopacket.Payload(append(b, byte(sport>>8), byte(sport), byte(dport>>8), byte(dport), 0, 0, 0, 1))}
}

func quoted6(t testing.TB, proto layers.IPProtocol, sip string, sport uint16, dip string, dport uint16) []gopacket.SerializableLayer {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: net.ParseIP(sip), DstIP: net.ParseIP(dip), Length: 1400}
	b := serialize(t, ip)
	b[4], b[5] = 0x05, 0x78
	return []gopacket.SerializableLayer{gopacket.Payload(append(b, byte(sport>>8), byte(sport), byte(dport>>8), byte(dport), 0, 0, 0, 1))}
}
