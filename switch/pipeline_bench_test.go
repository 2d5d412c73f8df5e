package l4_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usnetd/usnetd/backends/memory"
	l4 "github.com/usnetd/usnetd/switch"
	"golang.org/x/sys/unix"
)

// BenchmarkPipeline pushes 64-byte frames from a memory NIC port (a
// generator that copies each frame into its buffer, as a NIC's DMA would)
// through RX workers, rings and TX goroutines to 4 memory endpoint ports,
// over 10,000 flows. "switch" parses, looks up and decides every frame, the
// frames going to 4 listening rules; "fixed" (the baseline) replaces that
// with a fixed destination per buffer, so the ratio of the two is the cost
// of switching. "switch100k" switches with a table of 1,000 listening
// rules and 100,000 learned flows, each of which gets one frame of every
// 101,000 (bigTable).
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
		for _, mode := range []string{"fixed", "switch", "switch100k"} {
			for _, workers := range []int{1, 2} {
				b.Run(fmt.Sprintf("%s/%s/workers=%d", load, mode, workers), func(b *testing.B) {
					benchPipeline(b, mode, workers, load == "lossless", 0)
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

// BenchmarkPipelineWakerSpin is lossless/switch with TX goroutines that
// poll their rings spin times before they park (-1: park at once), to
// choose DefaultWakerSpin: on a machine with few cores a polling TX
// goroutine takes the core that an RX worker needs.
func BenchmarkPipelineWakerSpin(b *testing.B) {
	for _, spin := range []int{-1, 4, 16, 64, 256} {
		for _, workers := range []int{1, 2} {
			b.Run(fmt.Sprintf("spin=%d/workers=%d", spin, workers), func(b *testing.B) {
				benchPipeline(b, "switch", workers, true, spin)
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

func benchPipeline(b *testing.B, mode string, workers int, lossless bool, spin int) {
	fixed := mode == "fixed"
	var win *memory.Window
	if lossless {
		win = memory.NewWindow(1024) // at most a ring's worth in flight: no ring can overflow
	}
	sw := l4.NewSwitch(l4.NewTable(), macNIC)
	var eps [4]l4.Owner
	cfg := l4.PipelineConfig{Buffers: 32768, WakerSpin: spin}
	// The NIC's RX workers' threads, for their CPU time (rxCPU).
	var tidMu sync.Mutex
	var tids []int
	cfg.OnThreadStart = func(role string, port l4.Owner, queue int) {
		if port.Kind == l4.PortNIC {
			tidMu.Lock()
			tids = append(tids, unix.Gettid())
			tidMu.Unlock()
		}
	}
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
	if mode == "switch100k" {
		frames = bigTable(b, sw.Table, eps[:])
	}
	per := int64(b.N / workers)
	total := per * int64(workers)
	for i := 0; ; i++ {
		tidMu.Lock()
		n := len(tids)
		tidMu.Unlock()
		if n == workers {
			break
		}
		if i == 10000 {
			b.Fatalf("%d of %d RX workers started", n, workers)
		}
		time.Sleep(100 * time.Microsecond)
	}
	cpu0 := rxCPU(b, tids)
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
	cpu := rxCPU(b, tids) - cpu0
	el := b.Elapsed()
	d := delivered()
	// The RX workers' CPU time per frame: the work of the RX side, which
	// the other load of a shared machine does not inflate as it does the
	// wall-clock rate (a starved worker uses no CPU while it waits).
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(total), "rx-ns/frame")
	b.ReportMetric(float64(d)/el.Seconds()/1e6, "Mpps")
	b.ReportMetric(100*float64(dropped())/float64(total), "drop%")
	if other := p.Stats().Drops; other[l4.DropNoMatch]+other[l4.DropNoBuffer] != 0 {
		b.Fatalf("unexpected drops: %v", other)
	}
}

// bigTable fills t with 1,000 listening rules (UDP ports 5..1004) and
// 100,000 learned flows (local ports 20000..59999, to remotes in
// 198.19.0.0/16), owned round-robin by eps, and returns a frame for each
// rule: the flows in order with a listening rule's frame after every
// 100th. The rules' buckets are spread over the table by their hash, so
// the lookups miss the caches as on a busy host; the frames themselves lie
// one after the other in memory, as a NIC's receive ring would have them.
func bigTable(b *testing.B, t *l4.Table, eps []l4.Owner) [][]byte {
	var frames [][]byte
	for i := range 100000 {
		r := l4.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		lp, rp := uint16(20000+i%40000), uint16(443+i/40000)
		k := l4.FlowKey(local, lp, r, rp, l4.ProtoUDP)
		if err := t.Insert(l4.Rule{Key: k, Owner: eps[i%len(eps)], Kind: l4.Learned}); err != nil {
			b.Fatal(err)
		}
		frames = append(frames, frame4(macRemote, macNIC, r, rp, local, lp, l4.ProtoUDP))
		if i%100 == 99 {
			j := i / 100
			p := uint16(5 + j)
			if err := t.Insert(l4.Rule{Key: l4.ListenKey(local, l4.ProtoUDP, p), Owner: eps[j%len(eps)], Kind: l4.Registered}); err != nil {
				b.Fatal(err)
			}
			src := l4.AddrFrom4([4]byte{198, 20, byte(j >> 8), byte(j)})
			frames = append(frames, frame4(macRemote, macNIC, src, 40000, local, p, l4.ProtoUDP))
		}
	}
	all := make([]byte, 0, len(frames)*len(frames[0]))
	for i, f := range frames {
		all = append(all, f...)
		frames[i] = all[len(all)-len(f) : len(all) : len(all)]
	}
	return frames
}

// rxCPU returns the CPU time the threads tids have run, from the kernel's
// per-thread scheduler statistics.
func rxCPU(b *testing.B, tids []int) time.Duration {
	var sum time.Duration
	for _, tid := range tids {
		buf, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
		if err != nil {
			b.Fatal(err)
		}
		f := strings.Fields(string(buf))
		if len(f) == 0 {
			b.Fatalf("schedstat of thread %d: %q", tid, buf)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		sum += time.Duration(ns)
	}
	return sum
}
