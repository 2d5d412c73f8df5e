package l4_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// Whole-pipeline tests: memory ports stand in for the NIC, the kernel and
// endpoints. Timeouts in these tests only detect hangs; nothing asserts a
// speed.

const hang = 10 * time.Second

var (
	macNIC    = l4.MAC{2, 0, 0, 0, 0, 1}
	macRemote = l4.MAC{2, 0, 0, 0, 0, 0x99}
	local     = l4.MustParseAddr("198.18.0.1")
	remote    = l4.MustParseAddr("198.18.1.2")
)

// frame4 builds a minimal Ethernet+IPv4+UDP/TCP frame by hand
// (testkit.IPv4Frame: the pipeline tests want many frames fast; gopacket
// checks the parser in the package's own tests).
func frame4(src, dst l4.MAC, sip l4.Addr, sport uint16, dip l4.Addr, dport uint16, proto uint8) []byte {
	return testkit.IPv4Frame(src[:], dst[:], netip.AddrPortFrom(sip.Netip(), sport), netip.AddrPortFrom(dip.Netip(), dport), proto, 64)
}

func arp() []byte {
	b := make([]byte, 60)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], macRemote[:])
	binary.BigEndian.PutUint16(b[12:], l4.EtherTypeARP)
	return b
}

type lab struct {
	t      *testing.T
	sw     *l4.Switch
	p      *l4.Pipeline
	nic    *memory.Port
	nicID  l4.Owner
	before int
}

func newLab(t *testing.T, cfg l4.PipelineConfig, nicQueues int) *lab {
	t.Helper()
	before := runtime.NumGoroutine()
	sw := l4.NewSwitch(l4.NewTable(), macNIC)
	sw.SetLocal([]l4.MAC{macNIC}, []l4.Addr{local})
	p, err := l4.NewPipeline(sw, cfg)
	if err != nil {
		t.Fatal(err)
	}
	nic := memory.New("nic", l4.PortNIC, memory.Options{Queues: nicQueues, Keep: true, Poll: 5 * time.Millisecond})
	id, err := p.AddPort(nic)
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, sw: sw, p: p, nic: nic, nicID: id, before: before}
	t.Cleanup(func() { l.close() })
	return l
}

// close shuts the pipeline and checks that nothing is left: every buffer is
// back in the pool and every goroutine is gone.
func (l *lab) close() {
	t := l.t
	if err := l.p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	st := l.p.Pool().Stats()
	if st.SharedFree != st.Bufs {
		t.Errorf("after Close %d of %d buffers are back in the pool", st.SharedFree, st.Bufs)
	}
	if st.DoubleFree != 0 {
		t.Errorf("%d double frees", st.DoubleFree)
	}
	deadline := time.Now().Add(hang)
	for runtime.NumGoroutine() > l.before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Errorf("%d goroutines left after Close (before: %d):\n%s", runtime.NumGoroutine(), l.before, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func (l *lab) endpoint(name string, kind l4.PortKind) (*memory.Port, l4.Owner) {
	l.t.Helper()
	ep := memory.New(name, kind, memory.Options{Keep: true, Poll: 5 * time.Millisecond})
	id, err := l.p.AddPort(ep)
	if err != nil {
		l.t.Fatal(err)
	}
	return ep, id
}

func (l *lab) listen(o l4.Owner, proto uint8, port uint16) {
	l.t.Helper()
	if err := l.sw.Table.Insert(l4.Rule{Key: l4.ListenKey(local, proto, port), Owner: o, Kind: l4.Registered}); err != nil {
		l.t.Fatal(err)
	}
}

func waitSent(t *testing.T, p *memory.Port, n uint64) {
	t.Helper()
	if !p.WaitSent(n, hang) {
		t.Fatalf("%s sent %d frames, want %d", p.Name(), p.SentCount(), n)
	}
}

func TestPipelineSwitchesByL4(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{}, 1)
	kern, kid := l.endpoint("kernel", l4.PortKernel)
	a, aid := l.endpoint("a", l4.PortEndpoint)
	b, bid := l.endpoint("b", l4.PortEndpoint)
	l.listen(kid, l4.ProtoTCP, 22)
	l.listen(aid, l4.ProtoTCP, 80)
	l.listen(bid, l4.ProtoUDP, 53)

	l.nic.Inject(0,
		frame4(macRemote, macNIC, remote, 1000, local, 22, l4.ProtoTCP),
		frame4(macRemote, macNIC, remote, 1001, local, 80, l4.ProtoTCP),
		frame4(macRemote, macNIC, remote, 1002, local, 53, l4.ProtoUDP),
		frame4(macRemote, macNIC, remote, 1003, local, 23, l4.ProtoTCP), // no rule: dropped
		arp(), // mirrored to all three
	)
	waitSent(t, kern, 2)
	waitSent(t, a, 2)
	waitSent(t, b, 2)

	// b opens a connection out: it leaves through the NIC, and the reply
	// finds b through the learned rule.
	b.Inject(0, frame4(macNIC, macRemote, local, 40000, remote, 443, l4.ProtoTCP))
	waitSent(t, l.nic, 1)
	l.nic.Inject(0, frame4(macRemote, macNIC, remote, 443, local, 40000, l4.ProtoTCP))
	waitSent(t, b, 3)

	// a tries to send from the kernel's port: dropped as a spoof.
	a.Inject(0, frame4(macNIC, macRemote, local, 22, remote, 1000, l4.ProtoTCP))
	deadline := time.Now().Add(hang)
	for l.portStats(aid).Drops[l4.DropSpoof] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("spoof not counted: %+v", l.portStats(aid))
		}
		time.Sleep(time.Millisecond)
	}
	st := l.portStats(l.nicID)
	if st.RxPackets != 6 || st.Drops[l4.DropNoMatch] != 1 {
		t.Errorf("NIC port counters: %+v", st)
	}
	if got := a.SentCount() + b.SentCount() + kern.SentCount(); got != 7 {
		t.Errorf("delivered %d frames, want 7", got)
	}
	if l.nic.SentCount() != 1 {
		t.Errorf("the spoofed frame left the NIC")
	}
}

func (l *lab) portStats(id l4.Owner) l4.PortStats {
	for _, s := range l.p.Stats().Ports {
		if s.Owner == id {
			return s
		}
	}
	l.t.Fatalf("no port %v", id)
	return l4.PortStats{}
}

// TestStalledEndpointDoesNotSlowOthers: one endpoint stops reading; the NIC
// keeps going at full speed, the other endpoint gets every frame, and the
// stalled one's ring drops and counts.
func TestStalledEndpointDoesNotSlowOthers(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{RingSize: 64, BatchSize: 16, Buffers: 1024}, 1)
	slow, sid := l.endpoint("slow", l4.PortEndpoint)
	fast, fid := l.endpoint("fast", l4.PortEndpoint)
	l.listen(sid, l4.ProtoUDP, 1)
	l.listen(fid, l4.ProtoUDP, 2)
	slow.Stall()
	// The NIC receives frames for both, a chunk at a time; fast must get
	// each chunk whole while slow sits stalled the whole time.
	const n, chunk = 20000, 32
	for i := 0; i < n; i += chunk {
		var fs [][]byte
		for j := range chunk {
			fs = append(fs, frame4(macRemote, macNIC, remote, 9, local, uint16(1+j%2), l4.ProtoUDP))
		}
		l.nic.Inject(0, fs...)
		waitSent(t, fast, uint64(i+chunk)/2)
	}
	// The worker publishes a batch's drop counts after it pushed the
	// batch's frames: fast may have the last frames before the last drops
	// are counted. Wait for the counts to settle.
	st := l.portStats(l.nicID)
	for deadline := time.Now().Add(5 * time.Second); st.Drops[l4.DropRingFull] < n/2-64-16 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		st = l.portStats(l.nicID)
	}
	if st.RxPackets != n {
		t.Fatalf("NIC received %d of %d frames", st.RxPackets, n)
	}
	if got := fast.SentCount(); got != n/2 {
		t.Fatalf("fast endpoint got %d, want %d", got, n/2)
	}
	// slow holds at most a ring (or its quota) and one batch in Send; the
	// rest was dropped and counted: where the ring is full, or where the
	// port's quota of queued frames is.
	// The RX worker adds a batch's drops after it pushed the batch: the
	// counts of the last one may trail the fast endpoint's frames.
	dropped := st.Drops[l4.DropRingFull] + st.Drops[l4.DropQuota]
	for deadline := time.Now().Add(hang); dropped < n/2-64-16 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		st = l.portStats(l.nicID)
		dropped = st.Drops[l4.DropRingFull] + st.Drops[l4.DropQuota]
	}
	if dropped < n/2-64-16 || dropped > n/2 {
		t.Fatalf("ring_full+quota drops %d for the stalled endpoint: %+v", dropped, st)
	}
	var ring l4.RingInfo
	for _, r := range l.p.Stats().Rings {
		if r.To == sid.Port {
			ring = r
		}
	}
	if ring.DroppedFull != st.Drops[l4.DropRingFull] || ring.HighWater > uint64(ring.Cap) || ring.HighWater < 32 {
		t.Fatalf("ring to the stalled endpoint: %+v, port drops %d", ring, st.Drops[l4.DropRingFull])
	}
	// Every frame for the slow endpoint is either queued, being sent, or counted.
	slow.Unstall()
	want := uint64(n/2) - dropped
	waitSent(t, slow, want)
	if slow.SentCount() != want {
		t.Fatalf("slow endpoint got %d, want %d", slow.SentCount(), want)
	}
}

// TestPortsAndRulesChangeUnderTraffic attaches and detaches endpoints and
// changes rules while the NIC floods frames at them. Under -race this is
// the check that the copy-on-write topology and the quiescence on removal
// are sound; Close then proves nothing leaked.
func TestPortsAndRulesChangeUnderTraffic(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{RingSize: 128, BatchSize: 32, Buffers: 4096}, 2)
	var frames [][]byte
	for p := range 8 {
		frames = append(frames, frame4(macRemote, macNIC, remote, 9, local, uint16(100+p), l4.ProtoUDP))
	}
	frames = append(frames, arp())
	l.nic.Generate(0, frames, 1<<40)
	l.nic.Generate(1, frames, 1<<40)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := range 30 {
				ep := memory.New("churn", l4.PortEndpoint, memory.Options{Poll: time.Millisecond})
				id, err := l.p.AddPort(ep)
				if err != nil {
					t.Error(err)
					return
				}
				port := uint16(100 + (w*4+i)%8)
				_ = l.sw.Table.Insert(l4.Rule{Key: l4.ListenKey(local, l4.ProtoUDP, port), Owner: id, Kind: l4.Registered})
				ep.Inject(0, frame4(macNIC, macRemote, local, uint16(2000+i), remote, 53, l4.ProtoUDP))
				time.Sleep(2 * time.Millisecond)
				if err := l.p.RemovePort(id.Port); err != nil {
					t.Error(err)
				}
				if _, ok := l.sw.Table.Lookup(local, port, remote, 9, l4.ProtoUDP); ok {
					if r, _ := l.sw.Table.Lookup(local, port, remote, 9, l4.ProtoUDP); r.Owner == id {
						t.Errorf("rule of removed port %v left", id)
					}
				}
			}
		})
	}
	wg.Wait()
	st := l.p.Stats()
	if st.Ports[0].RxPackets == 0 {
		t.Fatal("no traffic flowed")
	}
	if len(st.Ports) != 1 {
		t.Fatalf("ports left: %+v", st.Ports)
	}
}

// TestFragmentsHeldThroughThePipeline: a later fragment that arrives before
// its first is held, then delivered after it.
func TestFragmentsHeldThroughThePipeline(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{}, 1)
	a, aid := l.endpoint("a", l4.PortEndpoint)
	l.listen(aid, l4.ProtoUDP, 5000)
	first := frame4(macRemote, macNIC, remote, 9, local, 5000, l4.ProtoUDP)
	binary.BigEndian.PutUint16(first[18:], 77)     // id
	binary.BigEndian.PutUint16(first[20:], 0x2000) // MF
	later := frame4(macRemote, macNIC, remote, 0, local, 0, l4.ProtoUDP)
	binary.BigEndian.PutUint16(later[18:], 77)
	binary.BigEndian.PutUint16(later[20:], 3) // offset 24 bytes
	l.nic.Inject(0, later)
	l.nic.Inject(0, first)
	waitSent(t, a, 2)
	sent := a.Sent()
	if binary.BigEndian.Uint16(sent[0][20:]) != 0x2000 || binary.BigEndian.Uint16(sent[1][20:]) != 3 {
		t.Fatalf("fragments delivered in the wrong order")
	}
}

// TestHeldFragmentsFreedOnClose: a fragment whose first never comes is
// held, and Close still returns its buffer (checked by the lab's cleanup).
func TestHeldFragmentsFreedOnClose(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{}, 1)
	later := frame4(macRemote, macNIC, remote, 0, local, 0, l4.ProtoUDP)
	binary.BigEndian.PutUint16(later[18:], 78)
	binary.BigEndian.PutUint16(later[20:], 3)
	l.nic.Inject(0, later)
	deadline := time.Now().Add(hang)
	for l.sw.FragLen() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("fragment not held")
		}
		time.Sleep(time.Millisecond)
	}
	for range l4.FragTimeoutTicks + 1 {
		l.p.FragSweep()
	}
	if st := l.p.Stats(); st.FragExpired != 1 || st.Drops[l4.DropFragNoFirst] != 1 {
		t.Fatalf("expired fragment not counted: %d", st.FragExpired)
	}
}

func TestAddPortRules(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{}, 1)
	if _, err := l.p.AddPort(memory.New("nic2", l4.PortNIC, memory.Options{})); err != l4.ErrSecondNIC {
		t.Fatalf("second NIC: %v", err)
	}
	if err := l.p.RemovePort(999); err != l4.ErrNoSuchPort {
		t.Fatalf("RemovePort(999): %v", err)
	}
	if _, err := l4.NewPipeline(l.sw, l4.PipelineConfig{RingSize: 1000}); err == nil {
		t.Fatal("ring size 1000 accepted")
	}
}

// TestTapSeesSwitchedFrames: the tap gets every received frame, stamped,
// with the port it came from and its verdict: forwarded, dropped (and
// why), flooded and uplinked; a stalled tap consumer costs the switch
// nothing but counted tap drops.
func TestTapSeesSwitchedFrames(t *testing.T) {
	tap, err := l4.NewTap(64)
	if err != nil {
		t.Fatal(err)
	}
	l := newLab(t, l4.PipelineConfig{Tap: tap}, 1)
	a, aid := l.endpoint("a", l4.PortEndpoint)
	l.listen(aid, l4.ProtoUDP, 7)
	var mu sync.Mutex
	var seen []int64
	var recs []l4.TapRecord
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		cache := l.p.Pool().NewCache()
		defer cache.Flush()
		for tap.Drain(func(b *l4.Buf) {
			mu.Lock()
			seen = append(seen, b.Time())
			recs = append(recs, b.Tapped())
			mu.Unlock()
		}, cache, stop) {
		}
	}()
	// Cleanups run last-in first-out: the consumer stops before the lab
	// closes the pipeline and checks the pool; nothing is in flight then.
	t.Cleanup(func() { close(stop); <-done })
	l.nic.Inject(0,
		frame4(macRemote, macNIC, remote, 9, local, 7, l4.ProtoUDP), // forwarded
		frame4(macRemote, macNIC, remote, 9, local, 8, l4.ProtoUDP), // dropped: no rule
		arp(), // flooded
	)
	waitSent(t, a, 2)
	a.Inject(0, frame4(macNIC, macRemote, local, 7, remote, 9, l4.ProtoUDP)) // uplinked
	waitSent(t, l.nic, 1)
	deadline := time.Now().Add(hang)
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap saw %d frames, want 4", n)
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	for _, ts := range seen {
		if ts == 0 {
			t.Error("frame without a receive time")
		}
	}
	want := []l4.TapRecord{
		{In: l.nicID, Verdict: l4.Verdict{Action: l4.ActForward, To: aid}},
		{In: l.nicID, Verdict: l4.Verdict{Action: l4.ActDrop, Reason: l4.DropNoMatch}},
		{In: l.nicID, Verdict: l4.Verdict{Action: l4.ActFlood}},
		{In: aid, Verdict: l4.Verdict{Action: l4.ActUplink}},
	}
	for i, r := range recs {
		if r != want[i] {
			t.Errorf("frame %d: tap record %+v, want %+v", i, r, want[i])
		}
	}
	mu.Unlock()
	if st := tap.Stats(); st.Pushed != 4 || st.Dropped != 0 {
		t.Fatalf("tap stats %+v", st)
	}
}

// hostPort is a kernel port beside the NIC (l4.HostPath).
type hostPort struct{ *memory.Port }

func (hostPort) HostPath() bool { return true }

// TestHostPathPort: a HostPath kernel port gets the frames switched to the
// kernel (from the NIC and from endpoints) and none of the NIC's floods
// (the kernel has those); its floods reach the endpoints but not the NIC,
// and nothing it sends leaves through the NIC (the kernel sent it to the
// wire itself).
func TestHostPathPort(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{}, 1)
	a, _ := l.endpoint("a", l4.PortEndpoint)
	hp := hostPort{memory.New("host", l4.PortKernel, memory.Options{Keep: true, Poll: 5 * time.Millisecond})}
	hid, err := l.p.AddPort(hp)
	if err != nil {
		t.Fatal(err)
	}
	l.listen(hid, l4.ProtoUDP, 22)
	l.nic.Inject(0, arp()) // to a only
	waitSent(t, a, 1)
	hp.Inject(0, arp()) // to a only
	waitSent(t, a, 2)
	hp.Inject(0, frame4(macNIC, macRemote, local, 22, remote, 9, l4.ProtoUDP)) // not out of the NIC
	a.Inject(0, frame4(macNIC, macNIC, local, 40000, local, 22, l4.ProtoUDP))  // to the kernel
	waitSent(t, hp.Port, 1)
	l.nic.Inject(0, frame4(macRemote, macNIC, remote, 9, local, 22, l4.ProtoUDP)) // to the kernel
	waitSent(t, hp.Port, 2)
	deadline := time.Now().Add(hang)
	for l.portStats(hid).Drops[l4.DropNoMatch] == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := l.nic.SentCount(); n != 0 {
		t.Errorf("the NIC sent %d frames; want none (the host port's flood and uplink stay off it)", n)
	}
	if n := hp.SentCount(); n != 2 {
		t.Errorf("the host port got %d frames, want 2 (not the NIC's flood)", n)
	}
	if n := l.portStats(hid).Drops[l4.DropNoMatch]; n != 1 {
		t.Errorf("the host port's uplinked frame: %d no_match drops, want 1", n)
	}
}

func TestStalledTapDropsAndCounts(t *testing.T) {
	tap, err := l4.NewTap(64)
	if err != nil {
		t.Fatal(err)
	}
	l := newLab(t, l4.PipelineConfig{Tap: tap}, 1)
	a, aid := l.endpoint("a", l4.PortEndpoint)
	l.listen(aid, l4.ProtoUDP, 7)
	const n = 1000
	for i := 0; i < n; i += 50 {
		var fs [][]byte
		for range 50 {
			fs = append(fs, frame4(macRemote, macNIC, remote, 9, local, 7, l4.ProtoUDP))
		}
		l.nic.Inject(0, fs...)
		waitSent(t, a, uint64(i+50))
	}
	// The RX worker pushes to the tap after the endpoint's ring: its
	// counts of the last batch may come after a's TX sent it.
	st := tap.Stats()
	for deadline := time.Now().Add(hang); st.Pushed+st.Dropped < n && time.Now().Before(deadline); st = tap.Stats() {
		time.Sleep(time.Millisecond)
	}
	if st.Pushed != 64 || st.Dropped != n-64 {
		t.Fatalf("tap stats %+v, want 64 pushed and %d dropped", st, n-64)
	}
	// Nobody drained the tap: close the pipeline, then drain, so the lab's
	// check finds every buffer back.
	if err := l.p.Close(); err != nil {
		t.Fatal(err)
	}
	cache := l.p.Pool().NewCache()
	stop := make(chan struct{})
	close(stop)
	got := 0
	for tap.Drain(func(*l4.Buf) { got++ }, cache, stop) {
	}
	cache.Flush()
	if got != 64 {
		t.Fatalf("drained %d, want 64", got)
	}
}

// badClosePort is a port whose Recv, once closed, returns some error other
// than ErrPortClosed (as a backend might: EBADF from a closed fd).
type badClosePort struct {
	*memory.Port
	closed atomic.Bool
}

func (p *badClosePort) Recv(q int, bufs []*l4.Buf) (int, error) {
	if p.closed.Load() {
		return 0, errors.New("bad file descriptor")
	}
	n, err := p.Port.Recv(q, bufs)
	if errors.Is(err, l4.ErrPortClosed) {
		err = errors.New("bad file descriptor")
	}
	return n, err
}

func (p *badClosePort) Close() error { p.closed.Store(true); return p.Port.Close() }

// TestCloseWithABackendThatErrs: Close and RemovePort return even when a
// closed port's Recv keeps failing with another error.
func TestCloseWithABackendThatErrs(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{}, 1)
	ep := &badClosePort{Port: memory.New("bad", l4.PortEndpoint, memory.Options{Poll: time.Millisecond})}
	id, err := l.p.AddPort(ep)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.p.RemovePort(id.Port) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(hang):
		t.Fatal("RemovePort hangs on a port whose Recv fails after Close")
	}
}
