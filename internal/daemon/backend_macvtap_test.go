package daemon

import (
	"testing"

	l4 "github.com/usnetd/usnetd/switch"
)

var (
	_ nicBackend        = (*macvtapBackend)(nil)
	_ kernelPortBackend = (*macvtapBackend)(nil)
)

// TestExpireLearned: expiry removes exactly the kernel port's learned
// rules whose socket is gone, and its learned rules without ports; it
// keeps registered (DEBUG_PORTS) and sticky rules and other owners' rules.
func TestExpireLearned(t *testing.T) {
	local, remote := l4.MustParseAddr("198.18.0.1"), l4.MustParseAddr("198.18.0.2")
	kernel := l4.Owner{Port: 2, Kind: l4.PortKernel}
	endpoint := l4.Owner{Port: 3, Kind: l4.PortEndpoint}
	open := l4.FlowKey(local, 40000, remote, 80, l4.ProtoTCP)
	gone := l4.FlowKey(local, 40001, remote, 80, l4.ProtoTCP)
	icmp := l4.FlowKey(local, 0, remote, 0, l4.ProtoICMP)
	debug := l4.ListenKey(local, l4.ProtoTCP, 22)
	other := l4.FlowKey(local, 40002, remote, 80, l4.ProtoTCP)
	tab := l4.NewTable()
	for _, r := range []l4.Rule{
		{Key: open, Owner: kernel, Kind: l4.Learned},
		{Key: gone, Owner: kernel, Kind: l4.Learned},
		{Key: icmp, Owner: kernel, Kind: l4.Learned},
		{Key: debug, Owner: kernel, Kind: l4.Registered, Sticky: true},
		{Key: other, Owner: endpoint, Kind: l4.Learned},
	} {
		if err := tab.Insert(r); err != nil {
			t.Fatal(err)
		}
	}
	isOpen := func(k l4.Key) bool { return k == open }
	if n := expireLearned(tab, kernel, isOpen); n != 2 {
		t.Errorf("removed %d rules, want 2", n)
	}
	for k, want := range map[l4.Key]bool{open: true, gone: false, icmp: false, debug: true, other: true} {
		if _, ok := tab.Get(k); ok != want {
			t.Errorf("rule %v present %v, want %v", k, ok, want)
		}
	}
	b := &macvtapBackend{}
	if n, err := b.Expire(isOpen); n != 0 || err != nil {
		t.Errorf("Expire before AttachKernel: %d, %v", n, err)
	}
}
