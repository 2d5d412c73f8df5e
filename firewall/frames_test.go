package firewall

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Test frames, built with gopacket (tests only; the data path parses by
// hand). Addresses are inside 198.18.0.0/15 and 2001:db8::/32.

var (
	macHost = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macPeer = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
)

// frameOpts tweak a frame.
type frameOpts struct {
	vlan      uint16 // 802.1Q tag when non-zero
	tcpFlags  string // "S", "SA", "R", "A"
	payload   []byte
	fragOff   uint16 // IPv4: in 8-byte units; IPv6 ditto (adds a fragment header)
	moreFrags bool
	fragID    uint32
	ipv6Frag  bool   // IPv6: add a fragment header even with offset 0, MF clear
	ext6      []byte // raw IPv6 extension headers between the IPv6 header and L4 (first is hop-by-hop)
	ihl       uint8  // IPv4 header length in words (adds options when > 5)
	v6Mapped  bool   // build IPv6 even though the addresses are IPv4-mapped
}

func mustAddr(s string) net.IP { return net.IP(netip.MustParseAddr(s).AsSlice()) }

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func ethLayers(et layers.EthernetType, o frameOpts, from, to net.HardwareAddr) []gopacket.SerializableLayer {
	if o.vlan != 0 {
		return []gopacket.SerializableLayer{
			&layers.Ethernet{SrcMAC: from, DstMAC: to, EthernetType: layers.EthernetTypeDot1Q},
			&layers.Dot1Q{VLANIdentifier: o.vlan, Type: et},
		}
	}
	return []gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: from, DstMAC: to, EthernetType: et}}
}

// ipFrame builds Ethernet + IP (v4 or v6 by the addresses) + an L4 layer
// from src to dst. l4 may be nil (payload only).
func ipFrame(t testing.TB, src, dst string, proto layers.IPProtocol, l4 gopacket.SerializableLayer, o frameOpts) []byte {
	t.Helper()
	s, d := mustAddr(src), mustAddr(dst)
	var ls []gopacket.SerializableLayer
	var netLayer gopacket.NetworkLayer
	if s.To4() != nil && !o.v6Mapped {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: s.To4(), DstIP: d.To4(),
			Id: uint16(o.fragID), FragOffset: o.fragOff}
		if o.moreFrags {
			ip.Flags = layers.IPv4MoreFragments
		}
		if o.ihl > 5 {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}[:(int(o.ihl)-5)*4]
		}
		ls = append(ethLayers(layers.EthernetTypeIPv4, o, macPeer, macHost), ip)
		netLayer = ip
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: s.To16(), DstIP: d.To16()}
		ls = append(ethLayers(layers.EthernetTypeIPv6, o, macPeer, macHost), ip)
		netLayer = ip
		if len(o.ext6) > 0 {
			ip.NextHeader = layers.IPProtocolIPv6HopByHop
			ls = append(ls, gopacket.Payload(o.ext6))
		}
		if o.fragOff != 0 || o.moreFrags || o.ipv6Frag {
			if len(o.ext6) > 0 {
				t.Fatal("ext6 and fragments together are not supported by this helper")
			}
			ip.NextHeader = layers.IPProtocolIPv6Fragment
			ls = append(ls, &layers.IPv6Fragment{NextHeader: proto, FragmentOffset: o.fragOff,
				MoreFragments: o.moreFrags, Identification: o.fragID})
		}
	}
	if l4 != nil {
		if c, ok := l4.(interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}); ok {
			_ = c.SetNetworkLayerForChecksum(netLayer)
		}
		ls = append(ls, l4)
	}
	if o.payload != nil {
		ls = append(ls, gopacket.Payload(o.payload))
	}
	return serialize(t, ls...)
}

func tcpLayer(sport, dport uint16, flags string) *layers.TCP {
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1, Window: 1000}
	for _, f := range flags {
		switch f {
		case 'S':
			tcp.SYN = true
		case 'A':
			tcp.ACK = true
		case 'R':
			tcp.RST = true
		case 'F':
			tcp.FIN = true
		}
	}
	return tcp
}

func tcpFrame(t testing.TB, src string, sport uint16, dst string, dport uint16, o frameOpts) []byte {
	if o.tcpFlags == "" {
		o.tcpFlags = "S"
	}
	return ipFrame(t, src, dst, layers.IPProtocolTCP, tcpLayer(sport, dport, o.tcpFlags), o)
}

func udpFrame(t testing.TB, src string, sport uint16, dst string, dport uint16, o frameOpts) []byte {
	if o.payload == nil {
		o.payload = []byte("hello")
	}
	return ipFrame(t, src, dst, layers.IPProtocolUDP, &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}, o)
}

// icmpFrame builds an ICMP (IPv4) or ICMPv6 message with the given type,
// code and body (after the 4 bytes of type, code and checksum).
func icmpFrame(t testing.TB, src, dst string, typ, code uint8, body []byte) []byte {
	if mustAddr(src).To4() != nil {
		return ipFrame(t, src, dst, layers.IPProtocolICMPv4,
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code), Id: uint16(body[0])<<8 | uint16(body[1]), Seq: uint16(body[2])<<8 | uint16(body[3])},
			frameOpts{payload: body[4:]})
	}
	return ipFrame(t, src, dst, layers.IPProtocolICMPv6,
		&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}, frameOpts{payload: body})
}

func echoFrame(t testing.TB, src, dst string, reply bool) []byte {
	body := []byte{0x12, 0x34, 0, 1, 'p', 'i', 'n', 'g'}
	if mustAddr(src).To4() != nil {
		typ := uint8(8)
		if reply {
			typ = 0
		}
		return icmpFrame(t, src, dst, typ, 0, body)
	}
	typ := uint8(128)
	if reply {
		typ = 129
	}
	return icmpFrame(t, src, dst, typ, 0, body)
}

// icmpErrorFrame builds an ICMP error from router about the packet inner
// (an IP packet without Ethernet header, as quoted).
func icmpErrorFrame(t testing.TB, router, dst string, inner []byte) []byte {
	if mustAddr(router).To4() != nil {
		// destination unreachable, port unreachable; 4 unused bytes, then the quote
		return icmpFrame(t, router, dst, 3, 3, append([]byte{0, 0, 0, 0}, inner...))
	}
	return icmpFrame(t, router, dst, 1, 4, append([]byte{0, 0, 0, 0}, inner...))
}

func arpFrame(t testing.TB) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: macPeer, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: macPeer, SourceProtAddress: mustAddr("198.18.0.2").To4(),
			DstHwAddress: make([]byte, 6), DstProtAddress: mustAddr("198.18.0.1").To4()})
}

func eapolFrame(t testing.TB) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: macPeer, DstMAC: net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 3}, EthernetType: layers.EthernetTypeEAPOL},
		&layers.EAPOL{Version: 2, Type: layers.EAPOLTypeStart})
}

// stripEth returns the IP packet inside an Ethernet frame without VLAN tag.
func stripEth(b []byte) []byte { return b[14:] }
