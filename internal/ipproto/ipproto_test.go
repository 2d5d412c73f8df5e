package ipproto

import (
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
