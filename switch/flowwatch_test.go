package l4

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

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
	r := reg(k, epB)
	r.Watched = true
	must(t, s.Table.Insert(r))
	// An unwatched rule's flow is not noted.
	k2 := FlowKey(local, 50001, remote, 443, ProtoTCP)
	must(t, s.Table.Insert(reg(k2, epB)))
	s.Decide(nic, withTCPFlags(t, tcp4(macRemote, macEP, ipRemote, 443, ipLocal, 50001), 0x01), 0)
	s.Decide(epB, withTCPFlags(t, tcp4(macEP, macRemote, ipLocal, 50001, ipRemote, 443), 0x04), 0)
	if len(w.Ends()) != 0 || w.LastSeen(k2) != 0 {
		t.Fatal("an unwatched rule's frames were noted")
	}
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

// BenchmarkFlowWatch measures what a FlowWatch costs Decide, robustly on a
// busy machine: two identical domains (10,000 flows, 64-byte frames), one
// with a watch and one without, classify the same frames in alternating
// chunks of 1024 (as BenchmarkClassify/from=endpoint/interleaved does);
// watched=true makes every exact rule of the first a Watched one (every
// other frame is a flow's, the rest a listening rule's).
// It reports ns per frame of each, Mpps of each, and the cost in percent
// as the median over chunk pairs and as the ratio of the fastest chunks.
func BenchmarkFlowWatch(b *testing.B) {
	for _, dir := range []struct {
		name string
		ep   bool
	}{{"from=nic", false}, {"from=endpoint", true}} {
		for _, watched := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/watched=%v", dir.name, watched), func(b *testing.B) {
				on, off := classifySetup(b, dir.ep, true), classifySetup(b, dir.ep, true)
				on.s.SetFlowWatch(NewFlowWatch(1024))
				if watched {
					for _, r := range on.s.Table.Rules() {
						if r.Remote.IsZero() {
							continue // listening rules are never watched
						}
						on.s.Table.Remove(r.Key, r.Owner.Port)
						r.Watched = true
						if err := on.s.Table.Insert(r); err != nil {
							b.Fatal(err)
						}
					}
				}
				var f Frame
				run := func(c *classifyCase, from, n int) time.Duration {
					start := time.Now()
					for i := from; i < from+n; i++ {
						j := i % len(c.frames)
						if Parse(c.frames[j], &f) != DropNone || c.s.Decide(c.from[j], &f, 0).Action != c.want {
							b.Fatal("frame not switched")
						}
					}
					return time.Since(start)
				}
				const chunk = 1024
				var tOn, tOff time.Duration
				bestOn, bestOff := time.Duration(1<<62), time.Duration(1<<62)
				ratios := make([]float64, 0, b.N/chunk+1)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i+chunk <= b.N; i += chunk {
					x, z := run(on, i, chunk), run(off, i, chunk)
					tOn, tOff = tOn+x, tOff+z
					bestOn, bestOff = min(bestOn, x), min(bestOff, z)
					ratios = append(ratios, float64(x)/float64(z))
				}
				b.StopTimer()
				if len(ratios) == 0 {
					return
				}
				slices.Sort(ratios)
				n := float64(len(ratios) * chunk)
				b.ReportMetric(float64(tOn.Nanoseconds())/n, "ns/frame-watch")
				b.ReportMetric(float64(tOff.Nanoseconds())/n, "ns/frame-baseline")
				b.ReportMetric(n/tOn.Seconds()/1e6, "Mpps-watch")
				b.ReportMetric(n/tOff.Seconds()/1e6, "Mpps-baseline")
				b.ReportMetric(100*(ratios[len(ratios)/2]-1), "cost%-median")
				b.ReportMetric(100*(float64(bestOn)/float64(bestOff)-1), "cost%-best")
			})
		}
	}
}
