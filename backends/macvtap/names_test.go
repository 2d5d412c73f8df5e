package macvtap

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestNames(t *testing.T) {
	for _, c := range []struct{ nic, mv, tap string }{
		{"eth0", "eth0pass", "eth0usnetd"},
		{"ul3fa9c1", "ul3fa9c1pass", "ul3fa9c1usnetd"},
	} {
		mv, tap := Names(c.nic)
		if mv != c.mv || tap != c.tap {
			t.Errorf("Names(%q) = %q, %q; want %q, %q", c.nic, mv, tap, c.mv, c.tap)
		}
	}
	// Long names: at most 15 bytes, deterministic, the suffix kept, and
	// distinct for names that share a long prefix.
	seen := map[string]string{}
	for _, nic := range []string{"enp1s0f0np0", "enp0s20f0u1u4", "enp0s20f0u1u3", "wlx001122334455", "abcdefghijk"} {
		mv, tap := Names(nic)
		mv2, tap2 := Names(nic)
		if mv != mv2 || tap != tap2 {
			t.Errorf("Names(%q) not deterministic", nic)
		}
		for _, n := range []string{mv, tap} {
			if len(n) > unix.IFNAMSIZ-1 {
				t.Errorf("Names(%q): %q longer than 15 bytes", nic, n)
			}
			if other, ok := seen[n]; ok {
				t.Errorf("Names(%q) and Names(%q) both give %q", nic, other, n)
			}
			seen[n] = nic
		}
		if !strings.HasSuffix(mv, "pass") || !strings.HasSuffix(tap, "usnetd") {
			t.Errorf("Names(%q) = %q, %q: suffixes lost", nic, mv, tap)
		}
		t.Logf("%-15s %-15s %s", nic, mv, tap)
	}
}

func TestParseDevNumber(t *testing.T) {
	d, err := parseDevNumber("246:1\n")
	if err != nil || unix.Major(d) != 246 || unix.Minor(d) != 1 {
		t.Errorf("246:1 -> %d:%d, %v", unix.Major(d), unix.Minor(d), err)
	}
	for _, bad := range []string{"", "246", "246:", ":1", "a:b", "246:1:2"} {
		if _, err := parseDevNumber(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
