package afpacket

import (
	"encoding/binary"

	"github.com/usnetd/usnetd/internal/ipproto"
)

// Coalesced frames (GRO, LRO) and offloaded checksums.
//
// The RX sockets read with PACKET_VNET_HDR: in front of every frame the
// kernel writes a struct virtio_net_hdr that says whether the frame is a
// GSO super-frame (GRO or LRO merged several TCP segments or UDP
// datagrams into one, up to 64 KiB) and whether its L4 checksum is still
// to be computed (CHECKSUM_PARTIAL: the sender, a local veth peer, left
// it to offload). Endpoints are userspace stacks that take one wire-sized
// frame at a time with a correct checksum, so Recv hands them what the
// wire carried: a super-frame is cut back into segments of gso_size bytes
// of payload, each with its own headers and checksums, and a partial
// checksum is completed. The operator keeps GRO on for the kernel.

// virtio_net_hdr (native byte order for a packet socket: the kernel uses
// the legacy little-endian layout on little-endian hosts).
const (
	vnetHdrLen     = 10
	vnetFlags      = 0
	vnetGSOType    = 1
	vnetGSOSize    = 4
	vnetCsumStart  = 6
	vnetCsumOffset = 8
	vnetNeedsCsum  = 1                // VIRTIO_NET_HDR_F_NEEDS_CSUM
	gsoNone        = 0                // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4       = 1                // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6       = 4                // VIRTIO_NET_HDR_GSO_TCPV6
	gsoUDPL4       = 5                // VIRTIO_NET_HDR_GSO_UDP_L4
	gsoECN         = 0x80             // VIRTIO_NET_HDR_GSO_ECN
	maxSegHeaders  = 14 + 4 + 60 + 60 // Ethernet, a VLAN tag, IPv4 with options, TCP with options
	protoTCP       = ipproto.TCP
	protoUDP       = ipproto.UDP
	ethTypeIPv4    = 0x0800
	ethTypeIPv6    = 0x86dd
	ethTypeVLAN    = 0x8100
	ethTypeQinQ    = 0x88a8
	tcpFlagFIN     = 0x01
	tcpFlagPSH     = 0x08
	tcpFlagCWR     = 0x80
	maxGSOSegments = 1 << 16 // bounds the work per frame whatever the header says
	minGSOSize     = 8
)

var be = binary.BigEndian

// gsoFrame is a GSO super-frame being cut into segments: the headers of
// the first segment (the VLAN tag put back), where the payload starts in
// the ring, and what each segment patches.
type gsoFrame struct {
	hdr     [maxSegHeaders]byte
	hlen    int // bytes of hdr in use: Ethernet to the end of the L4 header
	l3, l4  int // offsets in hdr
	v6      bool
	udp     bool
	size    int // payload bytes per segment (gso_size)
	payload int // payload bytes in all
}

// parseGSO reads the headers of a super-frame: head is the frame (VLAN tag
// put back), at least up to the end of its L4 header; gsoType and size
// come from the virtio-net header. It reports false for anything it does
// not cut: another GSO type, headers that do not add up, IPv6 extension
// headers, a protocol that does not match the type.
func (g *gsoFrame) parse(head []byte, total, gsoType, size int) bool {
	if size < minGSOSize || len(head) < 14 {
		return false
	}
	l3 := 14
	et := be.Uint16(head[12:])
	if et == ethTypeVLAN || et == ethTypeQinQ {
		if len(head) < 18 {
			return false
		}
		et = be.Uint16(head[16:])
		l3 = 18
	}
	var l4 int
	var proto byte
	switch et {
	case ethTypeIPv4:
		if len(head) < l3+20 || head[l3]>>4 != 4 {
			return false
		}
		ihl := int(head[l3]&0x0f) * 4
		if ihl < 20 || be.Uint16(head[l3+6:])&0x3fff != 0 { // no fragments
			return false
		}
		l4, proto, g.v6 = l3+ihl, head[l3+9], false
	case ethTypeIPv6:
		if len(head) < l3+40 || head[l3]>>4 != 6 {
			return false
		}
		l4, proto, g.v6 = l3+40, head[l3+6], true
	default:
		return false
	}
	switch gsoType &^ gsoECN {
	case gsoTCPv4, gsoTCPv6:
		if proto != protoTCP || (gsoType&^gsoECN == gsoTCPv6) != g.v6 || len(head) < l4+20 {
			return false
		}
		g.hlen = l4 + int(head[l4+12]>>4)*4
		if g.hlen < l4+20 {
			return false
		}
		g.udp = false
	case gsoUDPL4:
		if proto != protoUDP {
			return false
		}
		g.hlen, g.udp = l4+8, true
	default:
		return false
	}
	if g.hlen > len(head) || g.hlen > len(g.hdr) || total <= g.hlen || (total-g.hlen+size-1)/size > maxGSOSegments {
		return false
	}
	copy(g.hdr[:], head[:g.hlen])
	g.l3, g.l4, g.size, g.payload = l3, l4, size, total-g.hlen
	return true
}

// segments returns how many segments the frame makes.
func (g *gsoFrame) segments() int { return (g.payload + g.size - 1) / g.size }

// segment writes segment k (0-based) into dst, its payload taken from
// payload (the whole super-frame's payload), and returns its length, or 0
// when dst is too short.
func (g *gsoFrame) segment(dst, payload []byte, k int) int {
	off := k * g.size
	p := payload[off:min(off+g.size, len(payload))]
	n := g.hlen + len(p)
	if n > len(dst) {
		return 0
	}
	copy(dst, g.hdr[:g.hlen])
	copy(dst[g.hlen:], p)
	f := dst[:n]
	l4len := n - g.l4
	last := k == g.segments()-1
	if g.v6 {
		be.PutUint16(f[g.l3+4:], uint16(l4len))
	} else {
		ip := f[g.l3:g.l4]
		be.PutUint16(ip[2:], uint16(n-g.l3))
		be.PutUint16(ip[4:], be.Uint16(ip[4:])+uint16(k)) // the IDs the sender gave its segments
		ip[10], ip[11] = 0, 0
		be.PutUint16(ip[10:], ^fold(sum(ip, 0)))
	}
	l4 := f[g.l4:]
	var csumAt int
	if g.udp {
		be.PutUint16(l4[4:], uint16(l4len))
		csumAt = 6
	} else {
		be.PutUint32(l4[4:], be.Uint32(l4[4:])+uint32(off))
		fl := l4[13]
		if !last {
			fl &^= tcpFlagFIN | tcpFlagPSH
		}
		if k > 0 {
			fl &^= tcpFlagCWR
		}
		l4[13] = fl
		csumAt = 16
	}
	l4[csumAt], l4[csumAt+1] = 0, 0
	c := ^fold(sum(l4, pseudo(f[g.l3:], g.v6, l4len, l4proto(g.udp))))
	if g.udp && c == 0 {
		c = 0xffff // 0 means "no checksum" in UDP
	}
	be.PutUint16(l4[csumAt:], c)
	return n
}

func l4proto(udp bool) byte {
	if udp {
		return protoUDP
	}
	return protoTCP
}

// pseudo is the sum of the pseudo-header of an L4 packet of l4len bytes
// under the IP header ip.
func pseudo(ip []byte, v6 bool, l4len int, proto byte) uint64 {
	var s uint64
	if v6 {
		s = sum(ip[8:40], 0)
	} else {
		s = sum(ip[12:20], 0)
	}
	return s + uint64(l4len) + uint64(proto)
}

// completeCsum finishes a checksum that the sender left to offload
// (CHECKSUM_PARTIAL): the field at start+off holds the pseudo-header's
// sum, and the checksum covers frame[start:]. It reports false when the
// offsets lie outside the frame.
func completeCsum(frame []byte, start, off int) bool {
	if start < 0 || off < 0 || start+off+2 > len(frame) {
		return false
	}
	c := ^fold(sum(frame[start:], 0))
	if c == 0 && off == 6 { // UDP: 0 would mean "no checksum"
		c = 0xffff
	}
	be.PutUint16(frame[start+off:], c)
	return true
}

// sum adds b as big-endian 16-bit words to s (one's complement, not yet
// folded); an odd last byte is padded with zero.
func sum(b []byte, s uint64) uint64 {
	for len(b) >= 8 {
		v := be.Uint64(b)
		s += v>>48 + v>>32&0xffff + v>>16&0xffff + v&0xffff
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(be.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// fold folds a sum into 16 bits.
func fold(s uint64) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
