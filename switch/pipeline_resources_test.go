package l4_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/usnetd/usnetd/backends/memory"
	l4 "github.com/usnetd/usnetd/switch"
)

// TestNeverReadingEndpointsAmongMany: 200 endpoints that never read get
// frames from the NIC next to one that reads: the reader gets every frame,
// the others hold at most their quota each and all together at most the
// queued limit, and the NIC's receive path never runs out of buffers.
// (With N ports that never drain, about QueuedLimit/(N+1) stays free for
// the one that reads: here 8192/201, more than its bursts of 32.)
func TestNeverReadingEndpointsAmongMany(t *testing.T) {
	cfg := l4.PipelineConfig{RingSize: 256, BatchSize: 32, Buffers: 16384}
	l := newLab(t, cfg, 1)
	const stalled = 200
	var eps []*memory.Port
	for i := range stalled {
		ep, id := l.endpoint("stalled", l4.PortEndpoint)
		ep.Stall()
		l.listen(id, l4.ProtoUDP, uint16(1000+i))
		eps = append(eps, ep)
	}
	fast, fid := l.endpoint("fast", l4.PortEndpoint)
	l.listen(fid, l4.ProtoUDP, 7)
	const rounds, per = 50, 4
	var sentFast uint64
	for r := range rounds {
		var fs [][]byte
		for i := range stalled {
			for range per {
				fs = append(fs, frame4(macRemote, macNIC, remote, 9, local, uint16(1000+i), l4.ProtoUDP))
			}
		}
		for range 32 {
			fs = append(fs, frame4(macRemote, macNIC, remote, 9, local, 7, l4.ProtoUDP))
		}
		sentFast += 32
		l.nic.Inject(0, fs...)
		waitSent(t, fast, sentFast)
		if q := l.p.Stats().Queued; q > int64(cfg.Buffers/2+cfg.BatchSize) {
			t.Fatalf("round %d: %d frames queued to endpoints, above the limit %d", r, q, cfg.Buffers/2)
		}
	}
	st := l.p.Stats()
	nic := l.portStats(l.nicID)
	if nic.Drops[l4.DropNoBuffer] != 0 {
		t.Errorf("the NIC ran out of buffers %d times", nic.Drops[l4.DropNoBuffer])
	}
	if nic.Drops[l4.DropQuota] == 0 {
		t.Errorf("no quota drops with %d endpoints that never read: %+v", stalled, nic.Drops)
	}
	if free := st.Pool.SharedFree; free < st.Pool.Reserve {
		t.Errorf("%d buffers free, below the reserve %d", free, st.Pool.Reserve)
	}
	if fast.SentCount() != sentFast {
		t.Errorf("the reader got %d of %d", fast.SentCount(), sentFast)
	}
	for _, ep := range eps {
		ep.Unstall()
	}
}

// TestIdleEndpointsHoldNoBuffers: endpoints that wait for frames hold no
// buffers; one that sends next to them gets its frames out.
func TestIdleEndpointsHoldNoBuffers(t *testing.T) {
	l := newLab(t, l4.PipelineConfig{Buffers: 2048}, 1)
	var eps []*memory.Port
	for range 500 {
		ep, _ := l.endpoint("idle", l4.PortEndpoint)
		eps = append(eps, ep)
	}
	eps[0].Inject(0, frame4(macNIC, macRemote, local, 4000, remote, 443, l4.ProtoUDP))
	waitSent(t, l.nic, 1)
	deadline := time.Now().Add(hang)
	for {
		st := l.p.Stats().Pool
		// The NIC's worker keeps a batch and its cache; the idle none.
		if held := st.Bufs - st.SharedFree; held <= 64+2*l4.BufCacheBatch {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("%d of %d buffers held with 500 idle endpoints", held, st.Bufs)
		}
		time.Sleep(time.Millisecond)
	}
}

// laterFragment4 is a later IPv4 fragment of datagram id from src.
func laterFragment4(src l4.Addr, id uint16) []byte {
	b := frame4(macRemote, macNIC, src, 0, local, 0, l4.ProtoUDP)
	binary.BigEndian.PutUint16(b[14+4:], id)
	binary.BigEndian.PutUint16(b[14+6:], 0x2000|100)
	return b
}

// TestFragmentFloodBounded: a flood of later fragments from many sources
// holds at most the store's bytes (the oldest evicted and counted), the
// legitimate frames next to it are delivered, and Close frees every held
// fragment (lab.close checks that every buffer is back).
func TestFragmentFloodBounded(t *testing.T) {
	cfg := l4.PipelineConfig{Buffers: 2048, FragMemory: 64 * 2048, FragPerSource: 16 * 2048}
	l := newLab(t, cfg, 1)
	ep, id := l.endpoint("ep", l4.PortEndpoint)
	l.listen(id, l4.ProtoUDP, 7)
	const rounds = 40
	for r := range rounds {
		var fs [][]byte
		for i := range 64 {
			src := remote
			src[15] = byte(i % 16)
			fs = append(fs, laterFragment4(src, uint16(r*64+i)))
		}
		fs = append(fs, frame4(macRemote, macNIC, remote, 9, local, 7, l4.ProtoUDP))
		l.nic.Inject(0, fs...)
		waitSent(t, ep, uint64(r+1))
		if b := l.p.Stats().FragHeldBytes; b > 64*2048 {
			t.Fatalf("round %d: %d bytes of fragments held", r, b)
		}
	}
	st := l.p.Stats()
	if held := st.FragHeldBytes / 2048; uint64(held)+st.FragEvicted != rounds*64 || st.Drops[l4.DropFragEvicted] != st.FragEvicted {
		t.Fatalf("%d held + %d evicted != %d; drops %d", held, st.FragEvicted, rounds*64, st.Drops[l4.DropFragEvicted])
	}
}

// TestCloseWhileFragmentsHoldThePool: held fragments took the shared store
// down to nothing (a store allowed the whole pool, a reserve of one), the
// NIC's worker lives off its cache; Close frees the fragments first and
// returns, with every buffer back (lab.close checks).
func TestCloseWhileFragmentsHoldThePool(t *testing.T) {
	cfg := l4.PipelineConfig{RingSize: 64, BatchSize: 16, Buffers: 256, Reserve: 1,
		FragMemory: 1 << 20, FragPerSource: 1 << 20}
	l := newLab(t, cfg, 1)
	var fs [][]byte
	for i := range 1024 {
		src := remote
		src[15] = byte(i)
		fs = append(fs, laterFragment4(src, uint16(i)))
	}
	l.nic.Inject(0, fs...)
	deadline := time.Now().Add(hang)
	for st := l.p.Stats(); st.Pool.SharedFree != 0 || st.FragHeldBytes < 128*2048; st = l.p.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("the fragments never took the pool: %+v, %d bytes held", st.Pool, st.FragHeldBytes)
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- l.p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(hang):
		t.Fatal("Close hangs while held fragments hold the pool")
	}
}

// TestNothingQueuedFromTheReserve: while the pool is down to the NIC's
// reserve, frames for endpoints are dropped (quota) at once instead of
// waiting in the reserve's buffers; once buffers are back, they flow.
func TestNothingQueuedFromTheReserve(t *testing.T) {
	cfg := l4.PipelineConfig{Buffers: 1024, Reserve: 256}
	l := newLab(t, cfg, 1)
	ep, id := l.endpoint("ep", l4.PortEndpoint)
	l.listen(id, l4.ProtoUDP, 7)
	// Something else holds everything above the reserve.
	hog := l.p.Pool().NewCache()
	var held []*l4.Buf
	for l.p.Pool().Stats().SharedFree > 256 {
		b := hog.Get()
		if b == nil {
			break
		}
		held = append(held, b)
	}
	hog.Flush() // the cache's spare buffers back: the store is at the reserve
	for l.p.Pool().Stats().SharedFree > 256 {
		held = append(held, hog.Get())
		hog.Flush()
	}
	var fs [][]byte
	for range 200 {
		fs = append(fs, frame4(macRemote, macNIC, remote, 9, local, 7, l4.ProtoUDP))
	}
	l.nic.Inject(0, fs...)
	deadline := time.Now().Add(hang)
	for l.portStats(l.nicID).Drops[l4.DropQuota] < 200 {
		if time.Now().After(deadline) {
			t.Fatalf("frames for the endpoint were not dropped at the reserve: %+v", l.portStats(l.nicID))
		}
		time.Sleep(time.Millisecond)
	}
	if ep.SentCount() != 0 || l.p.Stats().Queued != 0 {
		t.Fatalf("%d frames delivered, %d queued from the reserve", ep.SentCount(), l.p.Stats().Queued)
	}
	for _, b := range held {
		b.Release()
	}
	l.nic.Inject(0, frame4(macRemote, macNIC, remote, 9, local, 7, l4.ProtoUDP))
	waitSent(t, ep, 1)
}
