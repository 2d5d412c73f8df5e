// Package ipproto holds the IP protocol numbers (IANA's "Assigned Internet
// Protocol Numbers", the kernel's IPPROTO_*) that usnetd deals with, and
// their names: the one definition that the switch, the firewall, the
// configuration, the backends and usnet share. It imports only the
// standard library.
package ipproto

import "strconv"

// IP protocol numbers. They are untyped, so that each package may use them
// as the integer type it needs.
const (
	ICMP    = 1
	TCP     = 6
	UDP     = 17
	DCCP    = 33
	ICMPv6  = 58
	None6   = 59 // IPv6 "no next header"
	SCTP    = 132
	UDPLite = 136
)

// Name names an IP protocol: "tcp", "udp", "icmp", "icmpv6", "dccp", "sctp",
// "udplite", or "proto-N" for any other number N.
func Name(p uint8) string {
	switch p {
	case ICMP:
		return "icmp"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case DCCP:
		return "dccp"
	case ICMPv6:
		return "icmpv6"
	case SCTP:
		return "sctp"
	case UDPLite:
		return "udplite"
	}
	return "proto-" + strconv.Itoa(int(p))
}
