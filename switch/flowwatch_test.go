package l4

import "testing"

// withTCPFlags builds an IPv4 TCP frame (no options) with the given flags.
func withTCPFlags(t *testing.T, p pkt, flags uint8) *Frame {
	t.Helper()
	b := p.build(t)
	b[14+20+13] = flags
	f := new(Frame)
	if r := Parse(b, f); r != DropNone {
		t.Fatalf("Parse: %v", r)
	}
	if f.TCPFlags != flags {
		t.Fatalf("TCPFlags = %#x, want %#x", f.TCPFlags, flags)
	}
	return f
}

// The watch sees both directions of an endpoint's flow: activity by the
// clock, FIN and RST as events; other owners' frames are not noted.
func TestFlowWatch(t *testing.T) {
	s := newTestSwitch(t)
	w := NewFlowWatch(4)
	s.SetFlowWatch(w)
	local, remote := MustParseAddr(ipLocal), MustParseAddr(ipRemote)
	k := FlowKey(local, 50000, remote, 443, ProtoTCP)
	must(t, s.Table.Insert(reg(k, epB)))
	if w.LastSeen(k) != 0 {
		t.Fatal("seen before any frame")
	}
	w.Tick()
	out := withTCPFlags(t, tcp4(macEP, macRemote, ipLocal, 50000, ipRemote, 443), 0x10)
	wantVerdict(t, s.Decide(epB, out, 0), Verdict{Action: ActUplink})
	if got := w.LastSeen(k); got != 2 {
		t.Fatalf("LastSeen after the endpoint's frame = %d, want 2", got)
	}
	w.Tick()
	in := withTCPFlags(t, tcp4(macRemote, macEP, ipRemote, 443, ipLocal, 50000), 0x11) // FIN ACK
	wantVerdict(t, s.Decide(nic, in, 0), fwd(epB))
	if got := w.LastSeen(k); got != 3 {
		t.Fatalf("LastSeen after the reply = %d, want 3", got)
	}
	select {
	case e := <-w.Ends():
		if e.Key != k || !e.FIN || e.RST || e.FromEndpoint {
			t.Fatalf("event %+v", e)
		}
	default:
		t.Fatal("no FIN event")
	}
	rst := withTCPFlags(t, tcp4(macEP, macRemote, ipLocal, 50000, ipRemote, 443), 0x04)
	s.Decide(epB, rst, 0)
	if e := <-w.Ends(); e.Key != k || !e.RST || !e.FromEndpoint {
		t.Fatalf("event %+v", e)
	}
	// The kernel's traffic (DEBUG_PORTS 22) is not noted.
	s.Decide(nic, withTCPFlags(t, tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 22), 0x01), 0)
	if len(w.Ends()) != 0 {
		t.Fatal("a FIN to the kernel was noted")
	}
	// A full channel drops and counts, never blocks.
	for range 6 {
		s.Decide(epB, rst, 0)
	}
	if len(w.Ends()) != 4 || w.Lost() != 2 {
		t.Fatalf("%d events queued, %d lost; want 4 and 2", len(w.Ends()), w.Lost())
	}
	// Noting does not allocate.
	if n := testing.AllocsPerRun(100, func() { s.Decide(nic, in, 0) }); n != 0 {
		t.Errorf("Decide with a FlowWatch allocates %v times", n)
	}
	s.SetFlowWatch(nil)
	before := w.Lost()
	s.Decide(epB, rst, 0)
	if w.Lost() != before {
		t.Error("a detached watch still sees frames")
	}
}
