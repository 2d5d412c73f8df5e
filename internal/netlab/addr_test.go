package netlab

import (
	"net/netip"
	"testing"
)

func TestInLab(t *testing.T) {
	for _, tc := range []struct {
		p    string
		want bool
	}{
		{"198.18.0.1/24", true},
		{"198.19.255.254/24", true},
		{"198.18.0.0/15", true},
		{"198.18.7.1/32", true},
		{"198.18.0.1/8", false},    // on-link route would cover 198.0.0.0/8
		{"198.18.0.1/14", false},   // likewise 198.16.0.0/14
		{"198.20.0.1/24", false},   // just past the range
		{"198.17.255.1/24", false}, // just before it
		{"10.0.0.1/24", false},
		{"192.168.1.1/24", false},
		{"127.0.0.1/8", false},
		{"2001:db8::1/64", true},
		{"2001:db8:ffff:ffff::1/64", true},
		{"2001:db8::/32", true},
		{"2001:db8::1/16", false},
		{"2001:db9::1/64", false},
		{"fe80::1/64", false},
		{"::ffff:198.18.0.1/128", false}, // v4-mapped: not the v6 range, not v4 either
	} {
		if got := InLab(netip.MustParsePrefix(tc.p)); got != tc.want {
			t.Errorf("InLab(%s) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if InLab(netip.Prefix{}) {
		t.Error("InLab(zero Prefix) = true")
	}
}

func TestHost(t *testing.T) {
	for _, tc := range []struct {
		p    string
		n    int
		want string
	}{
		{"198.18.7.0/24", 1, "198.18.7.1/24"},
		{"198.18.7.99/24", 2, "198.18.7.2/24"}, // host bits of p are ignored
		{"198.18.7.0/24", 255, "198.18.7.255/24"},
		{"198.18.0.0/15", 256 + 3, "198.18.1.3/15"},
		{"2001:db8:1:2::/64", 1, "2001:db8:1:2::1/64"},
		{"2001:db8:1:2::/64", 0x10002, "2001:db8:1:2::1:2/64"},
	} {
		if got := Host(netip.MustParsePrefix(tc.p), tc.n); got.String() != tc.want {
			t.Errorf("Host(%s, %d) = %s, want %s", tc.p, tc.n, got, tc.want)
		}
	}
	for _, n := range []int{-1, 256} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Host(198.18.7.0/24, %d) did not panic", n)
				}
			}()
			Host(netip.MustParsePrefix("198.18.7.0/24"), n)
		}()
	}
}

func TestSubnets(t *testing.T) {
	l := &Lab{name: "ul123456", id: 0x123456}
	seen := map[netip.Prefix]bool{}
	for range 512 {
		p := l.Subnet()
		if p.Bits() != 24 || !InLab(p) || p != p.Masked() || seen[p] {
			t.Fatalf("Subnet() = %s: not a fresh /24 inside the lab range", p)
		}
		seen[p] = true
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Subnet() did not panic after 512 subnets")
			}
		}()
		l.Subnet()
	}()
	seen6 := map[netip.Prefix]bool{}
	for range 256 {
		p := l.Subnet6()
		if p.Bits() != 64 || !InLab(p) || p != p.Masked() || seen6[p] {
			t.Fatalf("Subnet6() = %s: not a fresh /64 inside the lab range", p)
		}
		seen6[p] = true
	}
	if first := (&Lab{id: 0x123456}).Subnet6(); first.String() != "2001:db8:1234:5600::/64" {
		t.Errorf("first Subnet6 of id 0x123456 = %s", first)
	}
	// Different ids start at different subnets.
	if a, b := (&Lab{id: 1}).Subnet(), (&Lab{id: 2}).Subnet(); a == b {
		t.Errorf("labs with ids 1 and 2 both start at %s", a)
	}
}

func TestNames(t *testing.T) {
	for _, p := range []string{"", "UL", "ul-", "abcdefghi", "u l"} {
		if checkPrefix(p) == nil {
			t.Errorf("checkPrefix(%q) = nil", p)
		}
	}
	for _, n := range []string{"", "a/b", "eth 0", "1234567890123456", "..", "a:b"} {
		if checkLinkName(n) == nil {
			t.Errorf("checkLinkName(%q) = nil", n)
		}
	}
	for _, n := range []string{"eth0", "123456789012345", "veth-a.1"} {
		if err := checkLinkName(n); err != nil {
			t.Errorf("checkLinkName(%q) = %v", n, err)
		}
	}
	for _, tc := range []struct {
		ns, lab string
		ok      bool
	}{
		{"ul3fa9c1-a", "ul3fa9c1", true},
		{"ul3fa9c1-a-b", "ul3fa9c1", true},
		{"ul3fa9c1-", "", false},
		{"ul3fa9c-a", "", false},
		{"ul3fa9c12-a", "", false},
		{"ul3FA9C1-a", "", false},
		{"ulysses-a", "", false},
		{"xy3fa9c1-a", "", false},
	} {
		lab, ok := labOfNetns("ul", tc.ns)
		if lab != tc.lab || ok != tc.ok {
			t.Errorf("labOfNetns(ul, %q) = %q, %v; want %q, %v", tc.ns, lab, ok, tc.lab, tc.ok)
		}
	}
}
