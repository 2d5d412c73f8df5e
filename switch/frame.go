package l4

import (
	"encoding/binary"

	"github.com/usnetd/usnetd/internal/ipproto"
)

// EtherTypes that the switch knows.
const (
	EtherTypeIPv4  = 0x0800
	EtherTypeARP   = 0x0806
	EtherTypeVLAN  = 0x8100
	EtherTypeIPv6  = 0x86dd
	EtherTypeEAPOL = 0x888e
)

// IP protocol numbers that the switch knows (internal/ipproto's).
const (
	ProtoICMP    = ipproto.ICMP
	ProtoTCP     = ipproto.TCP
	ProtoUDP     = ipproto.UDP
	ProtoDCCP    = ipproto.DCCP
	ProtoICMPv6  = ipproto.ICMPv6
	ProtoNone6   = ipproto.None6 // IPv6 "no next header"
	ProtoSCTP    = ipproto.SCTP
	ProtoUDPLite = ipproto.UDPLite
)

// HasPorts reports whether the IP protocol proto carries 16-bit source and
// destination ports in its first four bytes. Only these protocols are
// switched by port; every other protocol matches rules without ports.
func HasPorts(proto uint8) bool {
	switch proto {
	case ProtoTCP, ProtoUDP, ProtoDCCP, ProtoSCTP, ProtoUDPLite:
		return true
	}
	return false
}

// Kind says what a parsed frame carries.
type Kind uint8

const (
	KindUnknown Kind = iota
	KindARP
	KindEAPOL
	KindIPv4
	KindIPv6
)

var kindNames = [...]string{"unknown", "arp", "eapol", "ipv4", "ipv6"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind?"
}

// DHCP says whether a frame is a DHCP message by its UDP ports (RFC 2131).
type DHCP uint8

const (
	DHCPNone    DHCP = iota
	DHCPRequest      // client to server: UDP 68 -> 67
	DHCPAnswer       // server to client: UDP 67 -> 68
)

// Flow is the L3/L4 identity of a packet: the addresses, the protocol and,
// for protocols with ports, the ports.
type Flow struct {
	Src, Dst         Addr
	SrcPort, DstPort uint16
	Proto            uint8
	// Ports is true when SrcPort and DstPort were read from the packet
	// (a protocol with ports, and not a non-first fragment).
	Ports bool
}

// Frame is what Parse learns from one Ethernet frame: everything the
// forwarding decision needs, and nothing that would need an allocation.
// A Frame is a plain value; reuse one per worker.
type Frame struct {
	DstMAC, SrcMAC MAC
	EtherType      uint16 // the inner EtherType when tagged
	VLAN           uint16 // VLAN ID of the 802.1Q tag
	Tagged         bool
	Kind           Kind

	L3 int // offset of the ARP/IP header
	L4 int // offset of the transport header; 0 when there is none to read

	Flow

	// Fragment is true for every fragment of a fragmented IP datagram
	// (IPv4 MF or offset != 0, or an IPv6 fragment header).
	Fragment bool
	// FragOffset is the fragment offset in bytes; 0 for the first fragment.
	FragOffset uint16
	MoreFrags  bool
	DontFrag   bool   // IPv4 DF bit
	FragID     uint32 // IPv4 identification (16 bits) or IPv6 fragment id
	// FragProto is the protocol that the fragment header names (IPv4: the
	// protocol field): the same in every fragment of a datagram, unlike
	// Proto, which for a first IPv6 fragment is the protocol after any
	// extension header that follows the fragment header.
	FragProto uint8

	// ICMP (IPv4) or ICMPv6 type and code, when Proto is ICMP or ICMPv6
	// and the header could be read.
	ICMPType, ICMPCode uint8
	// ICMPError is true for ICMP/ICMPv6 error messages that quote the
	// header of the packet they are about; Inner then holds that packet's
	// flow, as the original sender saw it (Inner.Src is our side).
	ICMPError bool
	// InnerOK is true when the quoted header could be parsed into Inner.
	InnerOK bool
	Inner   Flow

	// TCPFlags are the flags byte of a TCP header (FIN 0x01, SYN 0x02,
	// RST 0x04, ...) when Proto is TCP and the header could be read.
	TCPFlags uint8

	// NeighborDiscovery is true for ICMPv6 router/neighbour solicitation,
	// advertisement and redirect (types 133..137): IPv6's ARP.
	NeighborDiscovery bool

	// What an ARP or neighbour discovery message claims, for the checks on
	// endpoints (isolate.go). For ARP, Src and Dst are the sender's and the
	// target's protocol (IPv4) address, NeighMAC the sender's hardware
	// address. For neighbour discovery, NeighTarget is the target address
	// of a solicitation, advertisement or redirect, and NeighMAC the
	// link-layer address of its source or target link-layer address option
	// (NeighMACSet when there is one). NeighBad: not ARP for IPv4 over
	// Ethernet, or a neighbour discovery message that is truncated, has a
	// malformed option or link-layer options with different addresses.
	NeighMAC    MAC
	NeighMACSet bool
	NeighBad    bool
	NeighTarget Addr

	DHCP DHCP

	pre preLookup // the batched lookup's result, if any (batch.go)
}

// FirstFragment reports whether f is not a fragment, or is the first one.
func (f *Frame) FirstFragment() bool { return !f.Fragment || f.FragOffset == 0 }

// Limits of the parser.
const (
	ethHeaderLen = 14
	// maxExtHeaders bounds the IPv6 extension-header walk; a chain longer
	// than this is dropped (DropBadExtHeader) rather than walked.
	maxExtHeaders = 8
)

// Parse reads the Ethernet frame b into f and returns DropNone, or the
// reason why the frame must be dropped. It never allocates, never panics and
// never keeps b. A frame with a non-zero result is not to be switched; the
// fields of f are then partly filled and only good for diagnostics.
func Parse(b []byte, f *Frame) DropReason {
	*f = Frame{}
	if len(b) < ethHeaderLen {
		return DropTruncated
	}
	copy(f.DstMAC[:], b[0:6])
	copy(f.SrcMAC[:], b[6:12])
	et := binary.BigEndian.Uint16(b[12:14])
	off := ethHeaderLen
	if et == EtherTypeVLAN {
		if len(b) < ethHeaderLen+4 {
			return DropTruncated
		}
		f.Tagged = true
		f.VLAN = binary.BigEndian.Uint16(b[14:16]) & 0x0fff
		et = binary.BigEndian.Uint16(b[16:18])
		off += 4
	}
	f.EtherType = et
	f.L3 = off
	switch et {
	case EtherTypeARP:
		f.Kind = KindARP
		if len(b) < off+28 {
			return DropTruncated
		}
		parseARP(b[off:off+28], f)
		return DropNone
	case EtherTypeEAPOL:
		f.Kind = KindEAPOL
		if len(b) < off+4 {
			return DropTruncated
		}
		return DropNone
	case EtherTypeIPv4:
		f.Kind = KindIPv4
		return parseIPv4(b, off, f)
	case EtherTypeIPv6:
		f.Kind = KindIPv6
		return parseIPv6(b, off, f)
	}
	return DropUnknownEtherType
}

func parseIPv4(b []byte, off int, f *Frame) DropReason {
	if len(b) < off+20 {
		return DropTruncated
	}
	h := b[off:]
	if h[0]>>4 != 4 {
		return DropBadVersion
	}
	ihl := int(h[0]&0x0f) * 4
	if ihl < 20 {
		return DropBadIHL
	}
	if len(h) < ihl {
		return DropTruncated
	}
	total := int(binary.BigEndian.Uint16(h[2:4]))
	if total < ihl {
		return DropBadLength
	}
	if total > len(h) {
		return DropTruncated
	}
	h = h[:total] // drop Ethernet padding
	setAddr4(&f.Src, h[12:16])
	setAddr4(&f.Dst, h[16:20])
	f.Proto = h[9]
	ff := binary.BigEndian.Uint16(h[6:8])
	f.DontFrag = ff&0x4000 != 0
	f.MoreFrags = ff&0x2000 != 0
	f.FragOffset = (ff & 0x1fff) << 3
	f.FragID = uint32(binary.BigEndian.Uint16(h[4:6]))
	f.FragProto = f.Proto
	f.Fragment = f.MoreFrags || f.FragOffset != 0
	if f.FragOffset != 0 {
		return DropNone // a later fragment: no transport header to read
	}
	f.L4 = off + ihl
	return parseL4(h[ihl:], f, false)
}

func parseIPv6(b []byte, off int, f *Frame) DropReason {
	if len(b) < off+40 {
		return DropTruncated
	}
	h := b[off:]
	if h[0]>>4 != 6 {
		return DropBadVersion
	}
	plen := int(binary.BigEndian.Uint16(h[4:6]))
	if 40+plen > len(h) {
		// A zero payload length with a hop-by-hop jumbo option is not
		// something an Ethernet frame can carry: also too short.
		return DropTruncated
	}
	h = h[:40+plen]
	f.Src = addrFrom16Slice(h[8:24])
	f.Dst = addrFrom16Slice(h[24:40])
	if f.Src.Is4() || f.Dst.Is4() {
		// IPv4-mapped addresses never appear on the wire (RFC 4291
		// 2.5.5.2); here they would alias the IPv4 rules.
		return DropMappedAddr
	}
	next, l4, reason := walkIPv6(h, f, true)
	if reason != DropNone {
		return reason
	}
	f.Proto = next
	if l4 < 0 { // a later fragment
		return DropNone
	}
	f.L4 = off + l4
	return parseL4(h[l4:], f, true)
}

// walkIPv6 walks the extension headers of the IPv6 packet h (which starts
// with the fixed header) and returns the upper-layer protocol and its offset
// in h; the offset is -1 for a non-first fragment. With outer set, fragment
// information goes into f.
func walkIPv6(h []byte, f *Frame, outer bool) (proto uint8, l4 int, reason DropReason) {
	next := h[6]
	off := 40
	for range maxExtHeaders + 1 {
		switch next {
		case 0, 43, 60, 135, 139, 140: // hop-by-hop, routing, dest opts, mobility, HIP, shim6
			if len(h) < off+8 {
				return next, 0, DropBadExtHeader
			}
			n := (int(h[off+1]) + 1) * 8
			if len(h) < off+n {
				return next, 0, DropBadExtHeader
			}
			next = h[off]
			off += n
		case 51: // authentication header: length in 4-byte units, minus 2
			if len(h) < off+8 {
				return next, 0, DropBadExtHeader
			}
			n := (int(h[off+1]) + 2) * 4
			if len(h) < off+n {
				return next, 0, DropBadExtHeader
			}
			next = h[off]
			off += n
		case 44: // fragment
			if len(h) < off+8 {
				return next, 0, DropBadExtHeader
			}
			fo := binary.BigEndian.Uint16(h[off+2 : off+4])
			offset := fo &^ 7 // already in bytes: 13 bits << 3
			more := fo&1 != 0
			id := binary.BigEndian.Uint32(h[off+4 : off+8])
			next = h[off]
			off += 8
			if outer {
				f.Fragment = true
				f.FragOffset = offset
				f.MoreFrags = more
				f.FragID = id
				f.FragProto = next
			}
			if offset != 0 {
				return next, -1, DropNone
			}
		default:
			return next, off, DropNone
		}
	}
	return next, 0, DropBadExtHeader
}

// parseL4 reads the transport header t of f's packet (first fragment or
// whole packet).
func parseL4(t []byte, f *Frame, v6 bool) DropReason {
	p := f.Proto
	if HasPorts(p) {
		if len(t) < 4 {
			return DropTruncatedL4
		}
		f.SrcPort = binary.BigEndian.Uint16(t[0:2])
		f.DstPort = binary.BigEndian.Uint16(t[2:4])
		f.Ports = true
		if p == ProtoTCP && len(t) > 13 {
			f.TCPFlags = t[13]
		}
		if p == ProtoUDP && !v6 {
			switch {
			case f.SrcPort == 68 && f.DstPort == 67:
				f.DHCP = DHCPRequest
			case f.SrcPort == 67 && f.DstPort == 68:
				f.DHCP = DHCPAnswer
			}
		}
		return DropNone
	}
	if (p == ProtoICMP && !v6) || (p == ProtoICMPv6 && v6) {
		if len(t) < 4 {
			return DropTruncatedL4
		}
		f.ICMPType, f.ICMPCode = t[0], t[1]
		if v6 {
			f.NeighborDiscovery = f.ICMPType >= 133 && f.ICMPType <= 137
			f.ICMPError = f.ICMPType >= 1 && f.ICMPType <= 4
			if f.NeighborDiscovery {
				parseND(t, f)
			}
		} else {
			switch f.ICMPType {
			case 3, 4, 5, 11, 12: // unreachable, source quench, redirect, time exceeded, parameter problem
				f.ICMPError = true
			}
		}
		if f.ICMPError && len(t) >= 8 {
			if v6 {
				f.InnerOK = parseInner6(t[8:], &f.Inner)
			} else {
				f.InnerOK = parseInner4(t[8:], &f.Inner)
			}
		}
	}
	return DropNone
}

// parseARP reads what the ARP message a (28 bytes) claims.
func parseARP(a []byte, f *Frame) {
	if binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != EtherTypeIPv4 || a[4] != 6 || a[5] != 4 {
		f.NeighBad = true // not IPv4 over Ethernet
		return
	}
	copy(f.NeighMAC[:], a[8:14])
	f.NeighMACSet = true
	f.Src = addrFrom4Slice(a[14:18])
	f.Dst = addrFrom4Slice(a[24:28])
}

// parseND reads what the ICMPv6 neighbour discovery message t (from its
// type on) claims: the target address and the link-layer address options
// (RFC 4861 section 4). The option walk is bounded by t: each option is at
// least 8 bytes.
func parseND(t []byte, f *Frame) {
	opts := 8 // router solicitation
	switch f.ICMPType {
	case 134: // router advertisement
		opts = 16
	case 135, 136: // neighbour solicitation, advertisement
		opts = 24
	case 137: // redirect
		opts = 40
	}
	if len(t) < opts {
		f.NeighBad = true
		return
	}
	if opts >= 24 {
		f.NeighTarget = addrFrom16Slice(t[8:24])
	}
	for o := t[opts:]; len(o) > 0; {
		if len(o) < 8 || o[1] == 0 || len(o) < int(o[1])*8 {
			f.NeighBad = true
			return
		}
		n := int(o[1]) * 8
		if o[0] == 1 || o[0] == 2 { // source, target link-layer address
			if n != 8 {
				f.NeighBad = true // an Ethernet address is one 8-byte unit
				return
			}
			m := MAC(o[2:8])
			if f.NeighMACSet && m != f.NeighMAC {
				f.NeighBad = true
				return
			}
			f.NeighMAC, f.NeighMACSet = m, true
		}
		o = o[n:]
	}
}

// parseInner4 reads the IPv4 header (and ports) that an ICMP error quotes.
// The quoted packet may be cut short: RFC 792 only promises the header and
// 8 bytes, which is enough for the ports.
func parseInner4(h []byte, in *Flow) bool {
	if len(h) < 20 || h[0]>>4 != 4 {
		return false
	}
	ihl := int(h[0]&0x0f) * 4
	if ihl < 20 || len(h) < ihl {
		return false
	}
	in.Src = addrFrom4Slice(h[12:16])
	in.Dst = addrFrom4Slice(h[16:20])
	in.Proto = h[9]
	fragOff := binary.BigEndian.Uint16(h[6:8]) & 0x1fff
	if HasPorts(in.Proto) && fragOff == 0 && len(h) >= ihl+4 {
		in.SrcPort = binary.BigEndian.Uint16(h[ihl : ihl+2])
		in.DstPort = binary.BigEndian.Uint16(h[ihl+2 : ihl+4])
		in.Ports = true
	}
	return true
}

// parseInner6 reads the IPv6 header (and ports) that an ICMPv6 error quotes.
// The quote is cut at the minimum MTU, so the extension walk stops quietly
// where the bytes end.
func parseInner6(h []byte, in *Flow) bool {
	if len(h) < 40 || h[0]>>4 != 6 {
		return false
	}
	in.Src = addrFrom16Slice(h[8:24])
	in.Dst = addrFrom16Slice(h[24:40])
	if in.Src.Is4() || in.Dst.Is4() {
		return false // IPv4-mapped: as for the packet itself
	}
	next, l4, reason := walkIPv6(h, nil, false)
	if reason != DropNone {
		return false
	}
	in.Proto = next
	if l4 >= 0 && HasPorts(next) && len(h) >= l4+4 {
		in.SrcPort = binary.BigEndian.Uint16(h[l4 : l4+2])
		in.DstPort = binary.BigEndian.Uint16(h[l4+2 : l4+4])
		in.Ports = true
	}
	return true
}
