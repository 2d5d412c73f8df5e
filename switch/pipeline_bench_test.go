package l4_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/usnetd/usnetd/backends/memory"
	l4 "github.com/usnetd/usnetd/switch"
)

// BenchmarkPipeline pushes 64-byte frames from a memory NIC port (a
// generator that copies each frame into its buffer, as a NIC's DMA would)
// through RX workers, rings and TX goroutines to 4 memory endpoint ports,
// over 10,000 flows. "switch" parses, looks up and decides every frame;
// "fixed" (the baseline) replaces that with a fixed destination per buffer,
// so the ratio of the two is the cost of switching.
//
// Two loads: "lossless" closes the loop (memory.Window: the generator
// keeps at most 1024 frames, one ring's worth, in flight, so no ring can overflow) and
// measures what the pipeline sustains; "overload" generates as fast as the
// RX worker takes frames, as a NIC at line rate would, and shows what
// reaches the endpoints while the rings drop the rest.
//
// Mpps counts frames delivered to endpoints; drop% is what the rings
// dropped because a TX goroutine fell behind.
func BenchmarkPipeline(b *testing.B) {
	for _, load := range []string{"lossless", "overload"} {
		for _, mode := range []string{"fixed", "switch"} {
			for _, workers := range []int{1, 2} {
				b.Run(fmt.Sprintf("%s/%s/workers=%d", load, mode, workers), func(b *testing.B) {
					benchPipeline(b, mode == "fixed", workers, load == "lossless")
				})
			}
		}
	}
}

// BenchmarkPipelineFromEndpoint is the other direction: an endpoint port
// (a generator, one queue per worker) sends 64-byte frames of 10,000 of
// its own connections out of a memory NIC port, lossless as above, with
// the isolation checks (checks=on) and without them (checks=off, the
// baseline that shows what they cost on the whole path).
func BenchmarkPipelineFromEndpoint(b *testing.B) {
	for _, workers := range []int{1, 2} {
		for _, checks := range []string{"off", "on"} {
			b.Run(fmt.Sprintf("workers=%d/checks=%s", workers, checks), func(b *testing.B) {
				benchPipelineFromEndpoint(b, checks == "on", workers)
			})
		}
	}
}

func benchPipelineFromEndpoint(b *testing.B, checks bool, workers int) {
	win := memory.NewWindow(1024)
	sw := l4.NewSwitch(l4.NewTable(), macNIC)
	sw.SetLocal([]l4.MAC{macNIC}, []l4.Addr{local})
	l4.SetIsolation(sw, checks)
	p, err := l4.NewPipeline(sw, l4.PipelineConfig{Buffers: 32768})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	nic := memory.New("nic", l4.PortNIC, memory.Options{Window: win})
	if _, err := p.AddPort(nic); err != nil {
		b.Fatal(err)
	}
	ep := memory.New("ep", l4.PortEndpoint, memory.Options{Queues: workers, Window: win})
	owner, err := p.AddPort(ep)
	if err != nil {
		b.Fatal(err)
	}
	frames := make([][]byte, 10000)
	for i := range frames {
		dst := l4.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		lport := uint16(20000 + i)
		frames[i] = frame4(macNIC, macRemote, local, lport, dst, 443, l4.ProtoTCP)
		if err := sw.Table.Insert(l4.Rule{Key: l4.FlowKey(local, lport, dst, 443, l4.ProtoTCP), Owner: owner, Kind: l4.Learned}); err != nil {
			b.Fatal(err)
		}
	}
	per := int64(b.N / workers)
	total := per * int64(workers)
	b.ReportAllocs()
	b.ResetTimer()
	for q := range workers {
		ep.Generate(q, frames, per)
	}
	for nic.SentCount() < uint64(total) {
		time.Sleep(20 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(nic.SentCount())/b.Elapsed().Seconds()/1e6, "Mpps")
	if d := p.Stats().Drops; d != ([l4.NumDropReasons]uint64{}) {
		b.Fatalf("unexpected drops: %v", d)
	}
}

func benchPipeline(b *testing.B, fixed bool, workers int, lossless bool) {
	var win *memory.Window
	if lossless {
		win = memory.NewWindow(1024) // at most a ring's worth in flight: no ring can overflow
	}
	sw := l4.NewSwitch(l4.NewTable(), macNIC)
	var eps [4]l4.Owner
	cfg := l4.PipelineConfig{Buffers: 32768}
	if fixed {
		cfg.Classify = func(in l4.Owner, buf *l4.Buf) l4.Verdict {
			return l4.Verdict{Action: l4.ActForward, To: eps[buf.Index()&3]}
		}
	}
	p, err := l4.NewPipeline(sw, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	nic := memory.New("nic", l4.PortNIC, memory.Options{Queues: workers, Window: win})
	if _, err := p.AddPort(nic); err != nil {
		b.Fatal(err)
	}
	var ports [4]*memory.Port
	for i := range ports {
		ports[i] = memory.New(fmt.Sprintf("ep%d", i), l4.PortEndpoint, memory.Options{Window: win})
		if eps[i], err = p.AddPort(ports[i]); err != nil {
			b.Fatal(err)
		}
		if err := sw.Table.Insert(l4.Rule{Key: l4.ListenKey(local, l4.ProtoUDP, uint16(1+i)), Owner: eps[i], Kind: l4.Registered}); err != nil {
			b.Fatal(err)
		}
	}
	frames := make([][]byte, 10000)
	for i := range frames {
		src := l4.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		frames[i] = frame4(macRemote, macNIC, src, uint16(1024+i), local, uint16(1+i%4), l4.ProtoUDP)
	}
	per := int64(b.N / workers)
	total := per * int64(workers)
	b.ReportAllocs()
	b.ResetTimer()
	for q := range workers {
		nic.Generate(q, frames, per)
	}
	delivered := func() (n uint64) {
		for _, ep := range ports {
			n += ep.SentCount()
		}
		return n
	}
	dropped := func() uint64 { return p.Stats().Drops[l4.DropRingFull] }
	for i := 0; ; i++ {
		// Stats allocates its snapshot: read it rarely, so that -benchmem
		// shows the pipeline's own allocations (none).
		if d := delivered(); d >= uint64(total) || i%64 == 63 && d+dropped() >= uint64(total) {
			break
		}
		time.Sleep(20 * time.Microsecond)
	}
	b.StopTimer()
	el := b.Elapsed()
	d := delivered()
	b.ReportMetric(float64(d)/el.Seconds()/1e6, "Mpps")
	b.ReportMetric(100*float64(dropped())/float64(total), "drop%")
	if other := p.Stats().Drops; other[l4.DropNoMatch]+other[l4.DropNoBuffer] != 0 {
		b.Fatalf("unexpected drops: %v", other)
	}
}
