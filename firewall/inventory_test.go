package firewall

import (
	"testing"

	l4 "github.com/usnetd/usnetd/switch"
)

// IsOpen's matching rules, on a hand-made snapshot (no kernel needed).
func TestInventoryMatching(t *testing.T) {
	h4, p4, o4 := addr(host4), addr(peer4), addr(other4)
	h6, p6 := addr(host6), addr(peer6)
	s := &sockSnapshot{
		tcp: map[uint16][]sockEntry{
			40000: {{local: h4, remote: p4, rport: 80, state: 1 /* ESTABLISHED */}},
			40001: {{local: h6, remote: p6, rport: 80, state: 6 /* TIME_WAIT */}},
			22:    {{local: l4.Addr{}, remote: l4.Addr{}, state: tcpListen}},
		},
		udp: map[uint16][]sockEntry{
			5353: {{local: v4any}},                     // unconnected, 0.0.0.0
			5354: {{local: l4.Addr{}}},                 // unconnected, ::
			5355: {{local: h4, remote: p4, rport: 53}}, // connected
			5356: {{local: h6}},                        // bound to one v6 address
		},
	}
	cases := []struct {
		k    l4.Key
		want bool
	}{
		{l4.FlowKey(h4, 40000, p4, 80, l4.ProtoTCP), true},
		{l4.FlowKey(h4, 40000, p4, 81, l4.ProtoTCP), false},
		{l4.FlowKey(h4, 40000, o4, 80, l4.ProtoTCP), false},
		{l4.FlowKey(h4, 40000, p4, 80, l4.ProtoUDP), false},
		{l4.FlowKey(h6, 40001, p6, 80, l4.ProtoTCP), true},  // TIME_WAIT still counts
		{l4.FlowKey(h4, 22, p4, 50000, l4.ProtoTCP), false}, // a listener is no flow
		{l4.FlowKey(h4, 5353, p4, 53, l4.ProtoUDP), true},
		{l4.FlowKey(h6, 5353, p6, 53, l4.ProtoUDP), false}, // 0.0.0.0 is not IPv6
		{l4.FlowKey(h4, 5354, p4, 53, l4.ProtoUDP), true},  // :: may be dual-stack
		{l4.FlowKey(h6, 5354, p6, 53, l4.ProtoUDP), true},
		{l4.FlowKey(h4, 5355, p4, 53, l4.ProtoUDP), true},
		{l4.FlowKey(h4, 5355, o4, 53, l4.ProtoUDP), false},
		{l4.FlowKey(h6, 5356, p6, 1, l4.ProtoUDP), true},
		{l4.FlowKey(addr("2001:db8::9"), 5356, p6, 1, l4.ProtoUDP), false},
		{l4.FlowKey(h4, 0, p4, 0, l4.ProtoICMP), false}, // portless: never
		{l4.ListenKey(h4, l4.ProtoUDP, 5353), false},    // not a learned shape
		{l4.FlowKey(h4, 9, p4, 9, l4.ProtoSCTP), false},
	}
	for _, c := range cases {
		if got := s.isOpen(c.k); got != c.want {
			t.Errorf("isOpen(%v) = %v, want %v", c.k, got, c.want)
		}
	}
	var empty sockSnapshot
	if empty.isOpen(l4.FlowKey(h4, 40000, p4, 80, l4.ProtoTCP)) {
		t.Error("empty snapshot says open")
	}
}
