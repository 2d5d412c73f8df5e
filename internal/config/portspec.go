package config

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/usnetd/usnetd/internal/ipproto"
)

// IP protocol numbers of a PortSpec (internal/ipproto's).
const (
	ProtoICMP uint8 = ipproto.ICMP
	ProtoTCP  uint8 = ipproto.TCP
	ProtoUDP  uint8 = ipproto.UDP
)

// PortSpec is one item of DEBUG_PORTS or STATIC_PIPES: IF:TCP:PORT,
// IF:UDP:PORT or IF:ICMP, optionally followed by :REMOTEIP.
type PortSpec struct {
	Interface string // one of Config.Interfaces
	// Proto is ProtoTCP, ProtoUDP or ProtoICMP. ICMP stays 1 (what the
	// operator wrote) even with an IPv6 Remote: whoever turns the spec into
	// a rule matches ICMPv6 (58) for IPv6 traffic.
	Proto  uint8
	Port   uint16     // 1..65535; 0 for ICMP
	Remote netip.Addr // the only remote that matches; invalid (zero) when absent. Never zoned or IPv4-mapped.
}

// String formats s in the syntax it is parsed from, with the protocol in
// upper case and an IPv6 remote in brackets, e.g. "eth0:TCP:22:[2001:db8::1]".
// Parsing the result gives s again.
func (s PortSpec) String() string {
	b := make([]byte, 0, 64)
	b = append(b, s.Interface...)
	b = append(b, ':')
	b = append(b, protoName(s.Proto)...)
	if s.Proto != ProtoICMP {
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(s.Port), 10)
	}
	if s.Remote.IsValid() {
		b = append(b, ':')
		if s.Remote.Is4() {
			b = s.Remote.AppendTo(b)
		} else {
			b = append(b, '[')
			b = s.Remote.AppendTo(b)
			b = append(b, ']')
		}
	}
	return string(b)
}

// PipeName is the file name of the STATIC_PIPES socket of s:
// IF-PROTO-PORT, IF-icmp, each followed by -REMOTEIP when s has a remote,
// the protocol in lower case, e.g. "eth0-udp-4789", "eth0-tcp-22-2001:db8::1".
func (s PortSpec) PipeName() string {
	b := make([]byte, 0, 64)
	b = append(b, s.Interface...)
	b = append(b, '-')
	b = append(b, strings.ToLower(protoName(s.Proto))...)
	if s.Proto != ProtoICMP {
		b = append(b, '-')
		b = strconv.AppendUint(b, uint64(s.Port), 10)
	}
	if s.Remote.IsValid() {
		b = append(b, '-')
		b = s.Remote.AppendTo(b)
	}
	return string(b)
}

// PipePath is the socket path of the STATIC_PIPES item s.
func (c *Config) PipePath(s PortSpec) string { return pipePath(c.PipeDir, s) }

func pipePath(dir string, s PortSpec) string {
	if strings.HasSuffix(dir, "/") {
		return dir + s.PipeName()
	}
	return dir + "/" + s.PipeName()
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMP:
		return "ICMP"
	}
	return "PROTO" + strconv.Itoa(int(p))
}

// parsePortSpec parses one PortSpec. The interface name is checked for
// syntax only; the caller checks that it is one of INTERFACES. On error the
// reason says what is wrong.
//
// The fields are split at the first three colons; everything after the
// third (the second for ICMP) is the remote address, so that a bare IPv6
// address with its own colons needs no brackets: eth0:TCP:22:2001:db8::1
// and eth0:TCP:22:[2001:db8::1] are the same.
func parsePortSpec(s string) (PortSpec, string) {
	var p PortSpec
	ifname, rest, ok := strings.Cut(s, ":")
	if !ok {
		return p, "want IF:TCP:PORT, IF:UDP:PORT or IF:ICMP"
	}
	if reason := checkIfName(ifname); reason != "" {
		return p, reason
	}
	p.Interface = ifname
	proto, rest, hasRest := strings.Cut(rest, ":")
	switch upperASCII(proto) {
	case "TCP":
		p.Proto = ProtoTCP
	case "UDP":
		p.Proto = ProtoUDP
	case "ICMP":
		p.Proto = ProtoICMP
	default:
		return p, "protocol " + strconv.Quote(proto) + " is not TCP, UDP or ICMP"
	}
	if p.Proto != ProtoICMP {
		if !hasRest {
			return p, protoName(p.Proto) + " needs a port"
		}
		var port string
		port, rest, hasRest = strings.Cut(rest, ":")
		n, ok := parseUint(port, 65535)
		if !ok || n == 0 {
			return p, "port must be 1..65535"
		}
		p.Port = uint16(n)
	}
	if hasRest {
		ip, reason := parseRemote(rest)
		if reason != "" {
			return p, reason
		}
		p.Remote = ip
	}
	return p, ""
}

// parseRemote parses the REMOTEIP of a PortSpec: IPv4, IPv6, or IPv6 in
// brackets. An IPv4-mapped IPv6 address is unmapped.
func parseRemote(s string) (netip.Addr, string) {
	bare := s
	bracketed := len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']'
	if bracketed {
		bare = s[1 : len(s)-1]
	}
	ip, err := netip.ParseAddr(bare)
	switch {
	case s == "":
		return ip, "empty remote IP after ':'"
	case err != nil:
		return ip, "remote " + strconv.Quote(s) + " is not an IPv4 or IPv6 address"
	case bracketed && ip.Is4():
		return ip, "brackets are for IPv6 only"
	case ip.Zone() != "":
		return ip, "remote IP must not have a zone"
	case ip.IsUnspecified():
		return ip, "remote IP must not be unspecified (0.0.0.0 or ::): leave it out to allow any remote"
	}
	return ip.Unmap(), ""
}

// checkIfName checks a Linux interface name as the kernel's dev_valid_name
// does: 1..15 bytes, not "." or "..", no '/', ':' or whitespace.
func checkIfName(s string) string {
	switch {
	case s == "":
		return "empty interface name"
	case len(s) > 15:
		return "interface name " + strconv.Quote(s) + " is longer than 15 bytes"
	case s == "." || s == "..":
		return "interface name must not be " + strconv.Quote(s)
	}
	for i := 0; i < len(s); i++ {
		// The kernel's isspace: \t \n \v \f \r, space and 0xa0.
		if c := s[i]; c == '/' || c == ':' || c == ' ' || '\t' <= c && c <= '\r' || c == 0xa0 {
			return "interface name " + strconv.Quote(s) + " contains " + strconv.QuoteRune(rune(c))
		}
	}
	return ""
}

// upperASCII upper-cases ASCII letters only, so that no Unicode case
// mapping (the Kelvin sign to 'k', say) can make a keyword.
func upperASCII(s string) string { return mapASCII(s, 'a', 'A') }

// lowerASCII lower-cases ASCII letters only; see upperASCII.
func lowerASCII(s string) string { return mapASCII(s, 'A', 'a') }

func mapASCII(s string, from, to byte) string {
	b := []byte(s)
	for i, c := range b {
		if from <= c && c <= from+25 {
			b[i] = c - from + to
		}
	}
	return string(b)
}

// parseUint parses a decimal number of digits only (no sign, no spaces,
// no 0x) that is at most max.
func parseUint(s string, max uint64) (uint64, bool) {
	if s == "" || len(s) > 20 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if d > max || n > (max-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}
