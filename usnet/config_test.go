package usnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestResolveEnv(t *testing.T) {
	t.Setenv("USNET_INTERFACE", "usnet0")
	t.Setenv("USNET_SOCKET", "")
	t.Setenv("SOCKET_PATH", "/tmp/usnetd-test.socket")
	t.Setenv("USNET_MAC", "02:00:00:00:00:09")
	t.Setenv("USNET_IP", "198.18.0.9/24, 2001:db8::9/64")
	t.Setenv("USNET_GATEWAY", "198.18.0.254,2001:db8::fe")
	t.Setenv("USNET_MTU", "9000")
	t.Setenv("USNET_LOOPBACK", "true")
	r, err := (&Config{}).resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.iface != "usnet0" || r.socketPath != "/tmp/usnetd-test.socket" || r.mac.String() != "02:00:00:00:00:09" || r.mtu != 9000 || !r.loopback {
		t.Errorf("resolved %+v", r)
	}
	if len(r.addrs) != 2 || r.addrs[1] != netip.MustParsePrefix("2001:db8::9/64") {
		t.Errorf("addresses %v", r.addrs)
	}
	want := []route{
		{dst: netip.MustParsePrefix("198.18.0.0/24")},
		{dst: netip.MustParsePrefix("2001:db8::/64")},
		{dst: netip.MustParsePrefix("0.0.0.0/0"), gw: netip.MustParseAddr("198.18.0.254")},
		{dst: netip.MustParsePrefix("::/0"), gw: netip.MustParseAddr("2001:db8::fe")},
	}
	if len(r.routes) != len(want) {
		t.Fatalf("routes %v, want %v", r.routes, want)
	}
	for i := range want {
		if r.routes[i] != want[i] {
			t.Errorf("route %d: %v, want %v", i, r.routes[i], want[i])
		}
	}
	// Config fields win over the environment; USNET_SOCKET over SOCKET_PATH.
	t.Setenv("USNET_SOCKET", "/tmp/first.socket")
	r, err = (&Config{Interface: "other0", MTU: 1400}).resolve()
	if err != nil || r.iface != "other0" || r.mtu != 1400 || r.socketPath != "/tmp/first.socket" {
		t.Errorf("resolved %+v, %v", r, err)
	}

	for _, bad := range []struct{ key, val, msg string }{
		{"USNET_MAC", "nope", "USNET_MAC"},
		{"USNET_IP", "198.18.0.9", "USNET_IP"},
		{"USNET_GATEWAY", "gw", "USNET_GATEWAY"},
		{"USNET_MTU", "100", "USNET_MTU"},
		{"USNET_LOOPBACK", "maybe", "USNET_LOOPBACK"},
	} {
		t.Run(bad.key, func(t *testing.T) {
			t.Setenv(bad.key, bad.val)
			if _, err := (&Config{}).resolve(); err == nil || !strings.Contains(err.Error(), bad.msg) {
				t.Errorf("%s=%q: %v", bad.key, bad.val, err)
			}
		})
	}
}

func TestResolveNoInterface(t *testing.T) {
	t.Setenv("USNET_INTERFACE", "")
	if _, err := (&Config{}).resolve(); err != ErrNoInterface {
		t.Errorf("%v", err)
	}
	if _, err := Listen("tcp", ":80"); err == nil || !strings.Contains(err.Error(), "no interface") {
		t.Errorf("Listen without an interface: %v", err)
	}
}
