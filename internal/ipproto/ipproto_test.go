package ipproto

import (
	"net/netip"
	"syscall"
	"testing"
)

// TestNumbers: the numbers are the kernel's.
func TestNumbers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"icmp", ICMP, syscall.IPPROTO_ICMP},
		{"tcp", TCP, syscall.IPPROTO_TCP},
		{"udp", UDP, syscall.IPPROTO_UDP},
		{"dccp", DCCP, syscall.IPPROTO_DCCP},
		{"icmpv6", ICMPv6, syscall.IPPROTO_ICMPV6},
		{"none6", None6, syscall.IPPROTO_NONE},
		{"sctp", SCTP, syscall.IPPROTO_SCTP},
		{"udplite", UDPLite, syscall.IPPROTO_UDPLITE},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, the kernel's is %d", c.name, c.got, c.want)
		}
		if c.name != "none6" && Name(uint8(c.got)) != c.name {
			t.Errorf("Name(%d) = %q, want %q", c.got, Name(uint8(c.got)), c.name)
		}
	}
	if got := Name(200); got != "proto-200" {
		t.Errorf("Name(200) = %q", got)
	}
}

func TestRule(t *testing.T) {
	a := netip.MustParseAddr
	for _, c := range []struct {
		got, want string
	}{
		{Rule(TCP, a("198.18.0.1"), 80, netip.Addr{}, -1), "tcp 198.18.0.1:80"},
		{Rule(TCP, a("198.18.0.1"), 80, a("198.18.1.2"), 41000), "tcp 198.18.0.1:80 <- 198.18.1.2:41000"},
		{Rule(ICMP, a("198.18.0.1"), -1, netip.Addr{}, -1), "icmp 198.18.0.1"},
		{Rule(ICMPv6, a("2001:db8::1"), -1, netip.Addr{}, -1), "icmpv6 [2001:db8::1]"},
		{Rule(UDP, a("2001:db8::1"), 53, a("2001:db8:1::2"), -1), "udp [2001:db8::1]:53 <- [2001:db8:1::2]"},
		{Rule(UDP, a("198.18.0.1"), 53, netip.Addr{}, 5353), "udp 198.18.0.1:53 <- *:5353"},
		{Rule(200, a("198.18.0.1"), -1, netip.Addr{}, -1), "proto-200 198.18.0.1"},
	} {
		if c.got != c.want {
			t.Errorf("%q, want %q", c.got, c.want)
		}
	}
}
