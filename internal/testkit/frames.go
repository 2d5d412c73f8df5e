package testkit

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// IPv4Frame builds an Ethernet/IPv4 frame of size bytes (at least 42) by
// hand: from src to dst with protocol proto, the ports in the first four
// bytes after the IP header, the IP total length size-14, TTL 64 and no
// checksums. Fast, for tests that push many frames through the switch,
// which reads headers only.
func IPv4Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, proto uint8, size int) []byte {
	b := make([]byte, max(size, 42))
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(b)-14))
	ip[8] = 64
	ip[9] = proto
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[20:], src.Port())
	binary.BigEndian.PutUint16(ip[22:], dst.Port())
	return b
}

// AddrPort is netip.AddrPortFrom(netip.MustParseAddr(addr), port).
func AddrPort(addr string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), port)
}

// UDP builds an Ethernet/IPv4 or Ethernet/IPv6 (by src's address) UDP
// frame with correct lengths and checksums.
func UDP(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	return serialize(t, srcMAC, dstMAC, src.Addr(), dst.Addr(), layers.IPProtocolUDP, udp, payload)
}

// TCPFlags are the flags of a TCP segment built by TCP.
type TCPFlags uint8

// TCP flags.
const (
	SYN TCPFlags = 1 << iota
	ACK
	FIN
	RST
	PSH
)

// TCP builds an Ethernet/IPv4 or Ethernet/IPv6 (by src's address) TCP
// segment with flags, a window of 1024, and correct lengths and
// checksums.
func TCP(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, flags TCPFlags, payload []byte) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Window: 1024,
		SYN: flags&SYN != 0, ACK: flags&ACK != 0, FIN: flags&FIN != 0, RST: flags&RST != 0, PSH: flags&PSH != 0}
	return serialize(t, srcMAC, dstMAC, src.Addr(), dst.Addr(), layers.IPProtocolTCP, tcp, payload)
}

type checksummed interface {
	gopacket.SerializableLayer
	SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
}

func serialize(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, proto layers.IPProtocol, l4 checksummed, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC}
	var ip gopacket.NetworkLayer
	if src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip = &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	}
	if err := l4.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip.(gopacket.SerializableLayer), l4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// UDPInfo is what a test wants to know about a received UDP frame.
type UDPInfo struct {
	Src, Dst       netip.AddrPort
	SrcMAC, DstMAC net.HardwareAddr
	VLAN           uint16 // 0: untagged
	Payload        []byte
	Raw            []byte // the whole frame, copied
}

// ParseUDP decodes an Ethernet[/802.1Q]/IPv4 or IPv6/UDP frame, or
// reports false.
func ParseUDP(frame []byte) (UDPInfo, bool) {
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if eth == nil || udp == nil {
		return UDPInfo{}, false
	}
	var sip, dip net.IP
	switch ip := pkt.NetworkLayer().(type) {
	case *layers.IPv4:
		sip, dip = ip.SrcIP, ip.DstIP
	case *layers.IPv6:
		sip, dip = ip.SrcIP, ip.DstIP
	default:
		return UDPInfo{}, false
	}
	u := UDPInfo{
		Src:     netip.AddrPortFrom(addrOf(sip), uint16(udp.SrcPort)),
		Dst:     netip.AddrPortFrom(addrOf(dip), uint16(udp.DstPort)),
		SrcMAC:  eth.SrcMAC,
		DstMAC:  eth.DstMAC,
		Payload: append([]byte(nil), udp.Payload...),
		Raw:     append([]byte(nil), frame...),
	}
	if tag, ok := pkt.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q); ok {
		u.VLAN = tag.VLANIdentifier
	}
	return u, true
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
