package daemon

import (
	"net/netip"
	"testing"

	"github.com/usnetd/usnetd/internal/config"
	l4 "github.com/usnetd/usnetd/switch"
)

func TestKernelRules(t *testing.T) {
	a := ifAddrs{v4: []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.7")},
		v6: []netip.Addr{netip.MustParseAddr("2001:db8::1")}}
	specs := []config.PortSpec{
		{Interface: "eth0", Proto: config.ProtoTCP, Port: 22},
		{Interface: "eth0", Proto: config.ProtoTCP, Port: 2222, Remote: netip.MustParseAddr("198.18.1.2")},
		{Interface: "eth0", Proto: config.ProtoICMP},
		{Interface: "eth0", Proto: config.ProtoUDP, Port: 53, Remote: netip.MustParseAddr("2001:db8:1::2")},
		{Interface: "eth1", Proto: config.ProtoTCP, Port: 80},
	}
	rules, missing, err := kernelRules(specs, "eth0", a)
	if err != nil || len(missing) != 0 {
		t.Fatal(err, missing)
	}
	var got []string
	for _, r := range rules {
		if r.Owner != l4.KernelOwner || !r.Sticky || r.Kind != l4.Registered {
			t.Errorf("rule %v: not a sticky registered kernel rule", r)
		}
		got = append(got, r.Key.String())
	}
	want := []string{
		"tcp 198.18.0.1:22", "tcp 198.18.0.7:22", "tcp [2001:db8::1]:22",
		"tcp 198.18.0.1:2222 <- 198.18.1.2", "tcp 198.18.0.7:2222 <- 198.18.1.2",
		"icmp 198.18.0.1", "icmp 198.18.0.7", "icmpv6 [2001:db8::1]",
		"udp [2001:db8::1]:53 <- [2001:db8:1::2]",
	}
	if len(got) != len(want) {
		t.Fatalf("rules %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("rule %d = %q, want %q", i, got[i], want[i])
		}
	}
	// A rule for an IPv6 remote on an interface without IPv6 has no
	// address: reported as missing (a start refuses it), and no rule.
	rules, missing, err = kernelRules(specs[3:4], "eth0", ifAddrs{v4: a.v4})
	if err != nil || len(rules) != 0 || len(missing) != 1 || missing[0] != specs[3] {
		t.Errorf("IPv6 remote without an IPv6 address: rules %v, missing %v, %v", rules, missing, err)
	}
	// No address at all (a NIC re-created, before its addresses): no
	// rules, every entry of the interface missing.
	rules, missing, err = kernelRules(specs, "eth0", ifAddrs{})
	if err != nil || len(rules) != 0 || len(missing) != 4 {
		t.Errorf("no addresses: rules %v, missing %v, %v", rules, missing, err)
	}
}
