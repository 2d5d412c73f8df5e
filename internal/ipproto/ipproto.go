// Package ipproto holds the IP protocol numbers (IANA's "Assigned Internet
// Protocol Numbers", the kernel's IPPROTO_*) that usnetd deals with, their
// names, and how a rule on them is written for people (Rule): the one
// definition that the switch, the firewall, the configuration, the
// backends, the control protocol and usnet share. It imports only the
// standard library.
package ipproto

import (
	"net/netip"
	"strconv"
)

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

// Rule writes a rule (or a flow) for people, the one way usnetd does in
// logs, errors and tools: the protocol's name, the local address and port,
// and "<-" the remote side if the rule has one, "*" standing for any
// address; IPv6 addresses in brackets:
//
//	tcp 198.18.0.1:80
//	tcp 198.18.0.1:80 <- 198.18.1.2:41000
//	icmp 198.18.0.1
//	udp [2001:db8::1]:53 <- [2001:db8:1::2]
//	udp 198.18.0.1:53 <- *:5353
//
// A port < 0 is none; an invalid remote with no remote port is no remote.
func Rule(proto uint8, local netip.Addr, localPort int, remote netip.Addr, remotePort int) string {
	s := Name(proto) + " " + hostPort(local, localPort)
	if remote.IsValid() || remotePort >= 0 {
		s += " <- " + hostPort(remote, remotePort)
	}
	return s
}

func hostPort(a netip.Addr, port int) string {
	h := "*"
	if a.IsValid() {
		h = a.String()
		if !a.Is4() {
			h = "[" + h + "]"
		}
	}
	if port < 0 {
		return h
	}
	return h + ":" + strconv.Itoa(port)
}
