package l4

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// TestLookupBatch checks that the batched lookup of a NIC batch finds what
// a lookup per frame finds, and that Decide gives the same verdict with
// and without it, over a table with rules of every shape, frames that hit
// each lookup step or none, and frames the batch leaves out (IPv6, ICMP).
func TestLookupBatch(t *testing.T) {
	s := NewSwitch(newTable(4), macNIC)
	l := MustParseAddr(ipLocal)
	owners := []Owner{epA, epB, kernel}
	remote := func(i int) string { return fmt.Sprintf("198.19.%d.%d", i/200, i%200) }
	for p := uint16(1); p <= 20; p++ {
		must(t, s.Table.Insert(reg(ListenKey(l, ProtoTCP, p), owners[p%3])))
	}
	for i := range 300 { // exact flows on ports 1..30: every listening port has some
		must(t, s.Table.Insert(Rule{Key: FlowKey(l, uint16(1+i%30), MustParseAddr(remote(i)), 1000, ProtoTCP), Owner: owners[i%3], Kind: Learned}))
	}
	// A remote-address rule on port 7, and an ICMP listening rule.
	must(t, s.Table.Insert(reg(Key{Local: l, Proto: ProtoTCP, LocalPort: 7, Remote: MustParseAddr(remote(500)), Flags: KeyLocalPort | KeyRemote}, epB)))
	must(t, s.Table.Insert(reg(ListenKey(l, ProtoICMP, 0), kernel)))
	must(t, s.Table.Insert(reg(ListenKey(MustParseAddr(ip6Local), ProtoTCP, 3), epA)))

	rng := rand.New(rand.NewPCG(3, 4))
	var frames [][]byte
	for range 1000 {
		i := rng.IntN(600)
		var p pkt
		switch rng.IntN(8) {
		case 0:
			p = tcp6(macRemote, macNIC, ip6Remote, 1000, ip6Local, uint16(1+rng.IntN(5)))
		case 1:
			p = pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv4, srcIP: remote(i), dstIP: ipLocal, proto: layers.IPProtocolICMPv4, icmpType: 8}
		default:
			p = tcp4(macRemote, macNIC, remote(i), uint16(1000+rng.IntN(2)), ipLocal, uint16(1+rng.IntN(40)))
		}
		frames = append(frames, p.build(t))
	}
	batch := make([]Frame, 64)
	reasons := make([]DropReason, 64)
	var sc batchScratch
	check := func() {
		hits := 0
		for start := 0; start < len(frames); start += 64 {
			n := min(64, len(frames)-start)
			for i := range n {
				reasons[i] = Parse(frames[start+i], &batch[i])
			}
			s.lookupBatch(nic, batch[:n], reasons[:n], &sc)
			for i := range n {
				f := &batch[i]
				if reasons[i] != DropNone {
					t.Fatalf("frame %d: %v", start+i, reasons[i])
				}
				if f.pre.done {
					o, ok := s.Table.LookupOwner(f.Dst, f.DstPort, f.Src, f.SrcPort, f.Proto)
					if o != f.pre.owner || ok != f.pre.ok {
						t.Fatalf("frame %d (%v): batch %v %v, lookup %v %v", start+i, f.Flow, f.pre.owner, f.pre.ok, o, ok)
					}
					hits++
				} else if f.Kind == KindIPv4 && f.Proto == ProtoTCP {
					t.Fatalf("frame %d: an IPv4 TCP frame left out of the batch", start+i)
				}
				var plain Frame
				Parse(frames[start+i], &plain)
				if plain.pre.done {
					t.Fatal("Parse kept a batch result")
				}
				if a, b := s.Decide(nic, f, 0), s.Decide(nic, &plain, 0); a != b {
					t.Fatalf("frame %d: Decide %v with the batch, %v without", start+i, a, b)
				}
			}
		}
		if hits < 500 {
			t.Fatalf("only %d frames looked up in batches", hits)
		}
	}
	check()
	// Again with a table big enough for the touching passes.
	other := MustParseAddr("198.18.0.9")
	for i := range touchRules {
		must(t, s.Table.Insert(Rule{Key: FlowKey(other, uint16(i), MustParseAddr(remote(i%600)), 1000, ProtoTCP), Owner: epA, Kind: Learned}))
	}
	check() // prefetching (loads where there is no prefetch instruction)
	for _, mode := range []int{touchLoad, touchNone} {
		batchTouch = mode
		check()
	}
	batchTouch = touchPrefetch
	// Frames from an endpoint are not batched: they may teach the table.
	reasons[0] = Parse(frames[0], &batch[0])
	s.lookupBatch(epA, batch[:1], reasons[:1], &sc)
	if batch[0].pre.done {
		t.Fatal("an endpoint's frame was looked up in a batch")
	}
}
