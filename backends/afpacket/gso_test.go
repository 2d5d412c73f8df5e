package afpacket

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// superFrame builds what GRO makes of a TCP or UDP flow: one frame with
// all the payload, headers of the first segment, and (as GRO leaves it)
// a checksum that is not the merged frame's.
func superFrame(t testing.TB, v6, udp bool, vlan bool, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv4}
	var ls []gopacket.SerializableLayer
	ls = append(ls, eth)
	if vlan {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeIPv4})
	}
	var nl gopacket.NetworkLayer
	if v6 {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: net.ParseIP("2001:db8::2"), DstIP: net.ParseIP("2001:db8::1"), NextHeader: layers.IPProtocolTCP}
		if udp {
			ip.NextHeader = layers.IPProtocolUDP
		}
		eth.EthernetType = layers.EthernetTypeIPv6
		if vlan {
			ls[1].(*layers.Dot1Q).Type = layers.EthernetTypeIPv6
			eth.EthernetType = layers.EthernetTypeDot1Q
		}
		nl = ip
		ls = append(ls, ip)
	} else {
		ip := &layers.IPv4{Version: 4, TTL: 64, Id: 1000, Flags: layers.IPv4DontFragment, SrcIP: net.IP{198, 18, 0, 2}, DstIP: net.IP{198, 18, 0, 1}, Protocol: layers.IPProtocolTCP}
		if udp {
			ip.Protocol = layers.IPProtocolUDP
		}
		nl = ip
		ls = append(ls, ip)
	}
	if udp {
		u := &layers.UDP{SrcPort: 5000, DstPort: 7000}
		u.SetNetworkLayerForChecksum(nl)
		ls = append(ls, u)
	} else {
		tcp := &layers.TCP{SrcPort: 40000, DstPort: 8080, Seq: 0xfffff000, Ack: 77, ACK: true, PSH: true, FIN: true, CWR: true, Window: 500,
			Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
				{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}}}
		tcp.SetNetworkLayerForChecksum(nl)
		ls = append(ls, tcp)
	}
	ls = append(ls, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checksumsOK verifies the IPv4 header and L4 checksums of a frame.
func checksumsOK(t *testing.T, f []byte) {
	t.Helper()
	p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	if e := p.ErrorLayer(); e != nil {
		t.Fatalf("segment does not decode: %v", e.Error())
	}
	var l3 []byte
	var v6 bool
	if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		l3 = ip.Contents
		if fold(sum(l3, 0)) != 0xffff {
			t.Errorf("IPv4 header checksum wrong")
		}
		l3 = f[len(f)-int(ip.Length):]
	} else if ip, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		v6 = true
		l3 = f[len(f)-40-int(ip.Length):]
	}
	hl := 20
	if v6 {
		hl = 40
	} else {
		hl = int(l3[0]&0x0f) * 4
	}
	l4 := l3[hl:]
	proto := l3[9]
	if v6 {
		proto = l3[6]
	}
	if fold(sum(l4, pseudo(l3, v6, len(l4), proto))) != 0xffff {
		t.Errorf("L4 checksum wrong (proto %d, %d bytes)", proto, len(l4))
	}
}

// TestSegments: a super-frame is cut into gso_size segments whose
// payloads join to the original, with sequence numbers, lengths, IDs,
// flags and checksums of segments that a sender would have sent.
func TestSegments(t *testing.T) {
	payload := make([]byte, 10000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, c := range []struct {
		name          string
		v6, udp, vlan bool
		gsoType       int
	}{
		{"tcp4", false, false, false, gsoTCPv4},
		{"tcp4 vlan", false, false, true, gsoTCPv4},
		{"tcp6", true, false, false, gsoTCPv6},
		{"udp4", false, true, false, gsoUDPL4},
		{"udp6 vlan", true, true, true, gsoUDPL4},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := superFrame(t, c.v6, c.udp, c.vlan, payload)
			var g gsoFrame
			if !g.parse(f[:min(len(f), maxSegHeaders)], len(f), c.gsoType, 1448) {
				t.Fatal("parse refused a good super-frame")
			}
			if g.segments() != 7 {
				t.Fatalf("%d segments, want 7", g.segments())
			}
			var joined []byte
			dst := make([]byte, 2048)
			for k := range g.segments() {
				n := g.segment(dst, f[g.hlen:], k)
				if n == 0 {
					t.Fatalf("segment %d did not fit", k)
				}
				seg := append([]byte(nil), dst[:n]...)
				checksumsOK(t, seg)
				pl := seg[g.hlen:]
				if k < 6 && len(pl) != 1448 {
					t.Errorf("segment %d carries %d bytes", k, len(pl))
				}
				joined = append(joined, pl...)
				p := gopacket.NewPacket(seg, layers.LayerTypeEthernet, gopacket.Default)
				if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
					if tcp.Seq != 0xfffff000+uint32(k*1448) {
						t.Errorf("segment %d: seq %#x", k, tcp.Seq)
					}
					last := k == 6
					if tcp.FIN != last || tcp.PSH != last || tcp.CWR != (k == 0) || !tcp.ACK {
						t.Errorf("segment %d: FIN %v PSH %v CWR %v ACK %v", k, tcp.FIN, tcp.PSH, tcp.CWR, tcp.ACK)
					}
				}
				if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok && ip.Id != 1000+uint16(k) {
					t.Errorf("segment %d: IP ID %d", k, ip.Id)
				}
				if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && int(u.Length) != 8+len(pl) {
					t.Errorf("segment %d: UDP length %d", k, u.Length)
				}
			}
			if !bytes.Equal(joined, payload) {
				t.Fatalf("segments carry %d bytes that differ from the %d sent", len(joined), len(payload))
			}
			if n := g.segment(make([]byte, 100), f[g.hlen:], 0); n != 0 {
				t.Errorf("a segment into a short buffer: %d", n)
			}
		})
	}
}

// TestParseGSORefuses: what parse does not cut.
func TestParseGSORefuses(t *testing.T) {
	tcp4 := superFrame(t, false, false, false, make([]byte, 3000))
	udp4 := superFrame(t, false, true, false, make([]byte, 3000))
	frag := append([]byte(nil), tcp4...)
	binary.BigEndian.PutUint16(frag[14+6:], 0x2000) // MF
	for _, c := range []struct {
		name    string
		f       []byte
		gsoType int
		size    int
	}{
		{"type says v6", tcp4, gsoTCPv6, 1448},
		{"type says UDP", tcp4, gsoUDPL4, 1448},
		{"UFO", udp4, 3, 1448},
		{"tiny gso_size", tcp4, gsoTCPv4, 1},
		{"fragment", frag, gsoTCPv4, 1448},
		{"headers only", tcp4[:14+20+32], gsoTCPv4, 1448},
		{"runt", tcp4[:20], gsoTCPv4, 1448},
		{"ARP", append(append([]byte(nil), tcp4[:12]...), 8, 6, 0, 1), gsoTCPv4, 1448},
	} {
		var g gsoFrame
		if g.parse(c.f[:min(len(c.f), maxSegHeaders)], len(c.f), c.gsoType, c.size) {
			t.Errorf("%s: parsed", c.name)
		}
	}
}

// TestCompleteCsum: a checksum left to offload (the pseudo-header's sum in
// the field) is finished as a NIC would.
func TestCompleteCsum(t *testing.T) {
	f := superFrame(t, false, false, false, []byte("partial checksum"))
	l4 := 14 + 20
	tcpLen := len(f) - l4
	be.PutUint16(f[l4+16:], fold(pseudo(f[14:], false, tcpLen, protoTCP)))
	if !completeCsum(f, l4, 16) {
		t.Fatal("refused")
	}
	checksumsOK(t, f)
	if completeCsum(f, len(f)-1, 16) {
		t.Error("offsets past the frame accepted")
	}
}

// FuzzSegments: whatever the ring holds and the virtio-net header says,
// parse and segment neither panic nor write past a buffer, and every
// segment fits it.
func FuzzSegments(f *testing.F) {
	f.Add(superFrame(f, false, false, false, make([]byte, 3000)), uint8(gsoTCPv4), uint16(1448))   // a TCPv4 super-frame
	f.Add(superFrame(f, true, true, true, make([]byte, 3000)), uint8(gsoUDPL4), uint16(1000))      // UDPv6, VLAN-tagged
	f.Add(superFrame(f, false, false, false, make([]byte, 3000))[:60], uint8(gsoTCPv4), uint16(8)) // cut short
	f.Fuzz(func(t *testing.T, frame []byte, gsoType uint8, size uint16) {
		var g gsoFrame
		if !g.parse(frame[:min(len(frame), maxSegHeaders)], len(frame), int(gsoType), int(size)) {
			return
		}
		dst := make([]byte, 2048)
		for k := range min(g.segments(), 64) {
			if n := g.segment(dst, frame[g.hlen:], k); n > len(dst) {
				t.Fatalf("segment %d: %d bytes into %d", k, n, len(dst))
			}
		}
	})
}
