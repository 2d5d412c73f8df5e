package l4

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// populate fills a table with n rules in the mix a busy host has: a few
// listening rules, and learned connections to many remotes.
func populate(tb testing.TB, t *Table, n int) [][5]uint32 {
	l := MustParseAddr(ipLocal)
	flows := make([][5]uint32, 0, n)
	for i := range 16 {
		must(tb, t.Insert(reg(ListenKey(l, ProtoTCP, uint16(8000+i)), Owner{Port: PortID(10 + i), Kind: PortEndpoint})))
	}
	for i := 0; len(flows) < n; i++ {
		r := AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		lp, rp := uint16(20000+i%40000), uint16(443)
		if err := t.Insert(Rule{Key: FlowKey(l, lp, r, rp, ProtoTCP), Owner: Owner{Port: PortID(10 + i%16), Kind: PortEndpoint}, Kind: Learned}); err != nil {
			continue
		}
		flows = append(flows, [5]uint32{uint32(i), uint32(lp), uint32(rp)})
	}
	return flows
}

// BenchmarkLookup measures Table.LookupOwner (the data path's lookup) of flows that hit learned exact
// rules, with 1 and 2 reading goroutines: the ns per lookup of each
// goroutine stays flat when readers do not slow each other down.
// "ns/lookup" is per goroutine (wall time × goroutines / lookups).
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		t := NewTable()
		flows := populate(b, t, n)
		l := MustParseAddr(ipLocal)
		for _, procs := range []int{1, 2} {
			b.Run(fmt.Sprintf("rules=%d/readers=%d", n, procs), func(b *testing.B) {
				var miss atomic.Int64
				var next atomic.Uint32
				b.SetParallelism(1)
				run := func(pb interface{ Next() bool }) {
					i := int(next.Add(7919))
					for pb.Next() {
						fl := flows[i%len(flows)]
						r := AddrFrom4([4]byte{198, 19, byte(fl[0] >> 8), byte(fl[0])})
						if _, ok := t.LookupOwner(l, uint16(fl[1]), r, uint16(fl[2]), ProtoTCP); !ok {
							miss.Add(1)
						}
						i++
					}
				}
				b.ResetTimer()
				if procs == 1 {
					run(&loop{n: b.N})
				} else {
					b.SetParallelism(1)
					b.RunParallel(func(pb *testing.PB) { run(pb) })
				}
				el := b.Elapsed()
				b.ReportMetric(float64(el.Nanoseconds())*float64(procs)/float64(b.N), "ns/lookup")
				b.ReportMetric(float64(b.N)/el.Seconds()/1e6, "Mlookups/s")
				if miss.Load() != 0 {
					b.Fatalf("%d lookups missed", miss.Load())
				}
			})
		}
	}
}

type loop struct{ n, i int }

func (l *loop) Next() bool { l.i++; return l.i <= l.n }

// BenchmarkClassify is the per-frame work of an RX worker: parse a 64-byte
// frame, look it up and decide, over 10,000 flows to listening and learned
// rules, on one goroutine. "from=nic" are frames from the wire to their
// owners; "from=endpoint" are the owners' frames out (from their listening
// ports and their learned connections), with the isolation checks
// (checks=on) and without them (checks=off, the baseline that shows what
// the checks cost).
func BenchmarkClassify(b *testing.B) {
	b.Run("from=nic", func(b *testing.B) { benchClassify(b, false, true) })
	b.Run("from=endpoint/checks=off", func(b *testing.B) { benchClassify(b, true, false) })
	b.Run("from=endpoint/checks=on", func(b *testing.B) { benchClassify(b, true, true) })
	b.Run("from=endpoint/interleaved", benchClassifyInterleaved)
}

// benchClassifyInterleaved measures the checks' cost robustly on a busy
// machine: two identical domains, one with the checks and one without,
// classify the same endpoint frames in alternating chunks of 1024 frames,
// so that both see the same load. Besides ns per frame of each, it
// reports the cost of the checks in percent two ways that a preempted
// chunk does not skew: the median over chunk pairs of on/off, and the
// ratio of the fastest chunk of each.
func benchClassifyInterleaved(b *testing.B) {
	on, off := classifySetup(b, true, true), classifySetup(b, true, false)
	var f Frame
	run := func(c *classifyCase, from, n int) time.Duration {
		start := time.Now()
		for i := from; i < from+n; i++ {
			j := i % len(c.frames)
			if Parse(c.frames[j], &f) != DropNone || c.s.Decide(c.from[j], &f, 0).Action != ActUplink {
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
		a, z := run(on, i, chunk), run(off, i, chunk)
		tOn, tOff = tOn+a, tOff+z
		bestOn, bestOff = min(bestOn, a), min(bestOff, z)
		ratios = append(ratios, float64(a)/float64(z))
	}
	b.StopTimer()
	if len(ratios) == 0 {
		return // b.N below one chunk: the calibration run
	}
	slices.Sort(ratios)
	n := float64(len(ratios) * chunk)
	b.ReportMetric(float64(tOn.Nanoseconds())/n, "ns/frame-checks")
	b.ReportMetric(float64(tOff.Nanoseconds())/n, "ns/frame-baseline")
	b.ReportMetric(100*(ratios[len(ratios)/2]-1), "cost%-median")
	b.ReportMetric(100*(float64(bestOn)/float64(bestOff)-1), "cost%-best")
}

type classifyCase struct {
	s      *Switch
	frames [][]byte
	from   []Owner
	want   Action
}

// classifySetup makes a domain with 10,000 flows and 64-byte frames of
// them: from the NIC to their owners, or from their owners out.
func classifySetup(b *testing.B, fromEndpoint, checks bool) *classifyCase {
	s := NewSwitch(NewTable())
	s.SetLocal([]MAC{macNIC}, []Addr{MustParseAddr(ipLocal)})
	SetIsolation(s, checks)
	flows := populate(b, s.Table, 10000)
	c := &classifyCase{s: s, want: ActForward}
	if fromEndpoint {
		c.want = ActUplink
	}
	for i, fl := range flows {
		r := fmt.Sprintf("198.19.%d.%d", byte(fl[0]>>8), byte(fl[0]))
		owner := Owner{Port: PortID(10 + fl[0]%16), Kind: PortEndpoint}
		var p pkt
		if fromEndpoint {
			p = tcp4(macNIC, macRemote, ipLocal, uint16(fl[1]), r, uint16(fl[2]))
			if i%2 == 1 { // every other frame from a listening port
				p.sport = uint16(8000 + i%16)
				owner.Port = PortID(10 + i%16)
			}
		} else {
			p = tcp4(macRemote, macNIC, r, uint16(fl[2]), ipLocal, uint16(fl[1]))
			if i%2 == 1 { // every other frame goes to a listening rule
				p.dport = uint16(8000 + i%16)
			}
			owner = nic
		}
		fr := p.build(b)
		c.frames = append(c.frames, fr[:64:64])
		c.from = append(c.from, owner)
	}
	return c
}

func benchClassify(b *testing.B, fromEndpoint, checks bool) {
	c := classifySetup(b, fromEndpoint, checks)
	var f Frame
	b.ReportAllocs()
	b.ResetTimer()
	dropped := 0
	for i := range b.N {
		j := i % len(c.frames)
		if Parse(c.frames[j], &f) != DropNone {
			dropped++
			continue
		}
		if c.s.Decide(c.from[j], &f, 0).Action != c.want {
			dropped++
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
	if dropped != 0 {
		b.Fatalf("%d frames not switched", dropped)
	}
}

// BenchmarkTableInsert measures Table.Insert of learned flows into a table
// that holds n of them already: all of one local port (a DNS resolver or a
// QUIC server talking to many remotes from one UDP port), or spread over
// 40,000 local ports. Inserts come in chunks of 256 fresh flows, timed;
// each chunk is removed again untimed, so the table stays at n to n+256.
// "ns/insert" is the time per Insert. Afterwards every rule is looked up.
func BenchmarkTableInsert(b *testing.B) {
	l := MustParseAddr(ipLocal)
	key := func(i int, spread bool) Key {
		r := AddrFrom4([4]byte{198, byte(19 + i>>24), byte(i >> 16), byte(i >> 8)})
		lp := uint16(53)
		if spread {
			lp = uint16(20000 + i%40000)
		}
		return FlowKey(l, lp, r, uint16(1024+i&0xff), ProtoUDP)
	}
	o := Owner{Port: 10, Kind: PortEndpoint}
	for _, spread := range []bool{false, true} {
		for _, n := range []int{1000, 50000, 100000} {
			name := "port=one"
			if spread {
				name = "port=spread"
			}
			b.Run(fmt.Sprintf("%s/rules=%d", name, n), func(b *testing.B) {
				t := NewTable()
				for i := range n {
					must(b, t.Insert(Rule{Key: key(i, spread), Owner: o, Kind: Learned}))
				}
				const chunk = 256
				next := n
				b.ResetTimer()
				for done := 0; done < b.N; {
					c := min(chunk, b.N-done)
					for i := range c {
						if err := t.Insert(Rule{Key: key(next+i, spread), Owner: o, Kind: Learned}); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					for i := range c {
						if !t.Remove(key(next+i, spread), o.Port) {
							b.Fatal("inserted flow not found")
						}
					}
					next += c
					done += c
					b.StartTimer()
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/insert")
				for i := range n {
					k := key(i, spread)
					if ow, ok := t.LookupOwner(k.Local, k.LocalPort, k.Remote, k.RemotePort, ProtoUDP); !ok || ow != o {
						b.Fatalf("rule %v lost: %v %v", k, ow, ok)
					}
				}
				if t.Len() != n {
					b.Fatalf("Len = %d, want %d", t.Len(), n)
				}
			})
		}
	}
}

// BenchmarkClassifyBatch is the per-frame work of an RX worker on a NIC
// batch of 64 frames, as rxWorker.process does it: parse the batch, look
// it up in one go (lookupBatch), decide each frame. "rules=10000" is
// BenchmarkClassify's table and frames; "rules=101000" the pipeline's
// switch100k table (1,000 listening rules, 100,000 flows), a frame per rule.
// "touch" is how lookupBatch brings the buckets in before it compares:
// prefetch instructions (the RX worker's way), loads, or not at all.
func BenchmarkClassifyBatch(b *testing.B) {
	for _, big := range []bool{false, true} {
		s := NewSwitch(NewTable())
		var frames [][]byte
		if big {
			l := MustParseAddr(ipLocal)
			for i := range 100000 {
				r := AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
				lp, rp := uint16(20000+i%40000), uint16(443+i/40000)
				must(b, s.Table.Insert(Rule{Key: FlowKey(l, lp, r, rp, ProtoUDP), Owner: Owner{Port: PortID(10 + i%4), Kind: PortEndpoint}, Kind: Learned}))
				frames = append(frames, udp4(macRemote, macNIC, r.String(), rp, ipLocal, lp).build(b))
				if i%100 == 99 {
					p := uint16(5 + i/100)
					must(b, s.Table.Insert(reg(ListenKey(l, ProtoUDP, p), Owner{Port: PortID(10 + i%4), Kind: PortEndpoint})))
					frames = append(frames, udp4(macRemote, macNIC, "198.20.0.1", 40000, ipLocal, p).build(b))
				}
			}
		} else {
			flows := populate(b, s.Table, 10000)
			for i, fl := range flows {
				r := fmt.Sprintf("198.19.%d.%d", byte(fl[0]>>8), byte(fl[0]))
				p := tcp4(macRemote, macNIC, r, uint16(fl[2]), ipLocal, uint16(fl[1]))
				if i%2 == 1 {
					p.dport = uint16(8000 + i%16)
				}
				frames = append(frames, p.build(b))
			}
		}
		all := make([]byte, 64*len(frames)) // one after the other, as in a NIC's ring
		for i, f := range frames {
			frames[i] = all[64*i : 64*i+64 : 64*i+64]
			copy(frames[i], f)
		}
		for _, mode := range []int{touchPrefetch, touchLoad, touchNone} {
			b.Run(fmt.Sprintf("rules=%d/touch=%s", s.Table.Len(), [...]string{"prefetch", "load", "none"}[mode]), func(b *testing.B) {
				batchTouch = mode
				defer func() { batchTouch = touchPrefetch }()
				const bs = 64
				fs := make([]Frame, bs)
				reasons := make([]DropReason, bs)
				var sc batchScratch
				dropped := 0
				b.ReportAllocs()
				b.ResetTimer()
				for done := 0; done < b.N; done += bs {
					n := min(bs, b.N-done)
					base := done % len(frames)
					for i := range n {
						reasons[i] = Parse(frames[(base+i)%len(frames)], &fs[i])
					}
					s.lookupBatch(nic, fs[:n], reasons[:n], &sc)
					for i := range n {
						if reasons[i] != DropNone || s.Decide(nic, &fs[i], 0).Action != ActForward {
							dropped++
						}
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
				if dropped != 0 {
					b.Fatalf("%d frames not forwarded", dropped)
				}
			})
		}

	}
}
