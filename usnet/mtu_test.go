package usnet

import (
	"testing"

	"github.com/usnetd/usnetd/control/wire"
)

// TestChannelMTU: a usnetd that answers QueryStatus gives the MTU of its
// channels on the interface; one that does not (the original) gives an
// error after statusTimeout, and the client's own connection keeps
// working either way.
func TestChannelMTU(t *testing.T) {
	s := newFakeServer(t)
	a, err := DialControl(s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	q := a.(channelMTUer)
	if m, err := q.ChannelMTU("usnet0"); err == nil {
		t.Fatalf("ChannelMTU from a server that does not answer QueryStatus = %d, nil", m)
	}
	s.mu.Lock()
	s.status = &wire.Status{Interfaces: []wire.InterfaceStatus{{Name: "other0", MTU: 1500}, {Name: "usnet0", MTU: 9000}}}
	s.mu.Unlock()
	if m, err := q.ChannelMTU("usnet0"); err != nil || m != 9000 {
		t.Fatalf("ChannelMTU = %d, %v; want 9000", m, err)
	}
	if m, err := q.ChannelMTU("absent0"); err != nil || m != 0 {
		t.Fatalf("ChannelMTU of an interface usnetd does not have = %d, %v; want 0", m, err)
	}
	if _, err := a.QueryPortsInUse(6); err != nil {
		t.Fatalf("the client's own connection after ChannelMTU: %v", err)
	}
}

// TestResolveMTUSet: USNET_MTU and Config.MTU are the user's choice, which
// the channel's MTU never replaces; without them the MTU is a default
// that it does.
func TestResolveMTUSet(t *testing.T) {
	t.Setenv("USNET_INTERFACE", "absent0")
	t.Setenv("USNET_MAC", "02:00:00:00:00:09")
	t.Setenv("USNET_IP", "198.18.0.9/24")
	t.Setenv("USNET_MTU", "")
	r, err := (&Config{}).resolve()
	if err != nil || r.mtuSet || r.mtu != 1500 {
		t.Fatalf("no MTU given: mtu %d, set %v, %v", r.mtu, r.mtuSet, err)
	}
	r, err = (&Config{MTU: 4000}).resolve()
	if err != nil || !r.mtuSet || r.mtu != 4000 {
		t.Fatalf("Config.MTU 4000: mtu %d, set %v, %v", r.mtu, r.mtuSet, err)
	}
	t.Setenv("USNET_MTU", "1400")
	r, err = (&Config{}).resolve()
	if err != nil || !r.mtuSet || r.mtu != 1400 {
		t.Fatalf("USNET_MTU=1400: mtu %d, set %v, %v", r.mtu, r.mtuSet, err)
	}
}
