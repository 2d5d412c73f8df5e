package l4

import (
	"sync"
	"sync/atomic"
)

// Tap hands a reference to every frame the pipeline receives, with the
// port it came from and its verdict (Buf.Tapped: forwarded to whom,
// flooded, sent out of the NIC, or dropped and why), to one consumer
// goroutine, for PCAP_LOG. (A fragment held for its first fragment comes
// when it goes on; one that expires there does not come.) It is off the
// hot path: each RX worker pushes its frames into a ring of its own (no
// copy: the frame's reference count is raised), and when the consumer
// cannot keep up, the ring drops and counts (TapStats.Dropped) instead of
// slowing the switch down. Without a Tap the pipeline keeps no records.
//
// The consumer calls Drain in a loop. Frames are stamped with their receive
// time (Buf.Time), taken once per batch. Stop the consumer only after
// Pipeline.Close, with a last Drain, so that no frame stays in the rings.
type Tap struct {
	size  int
	mu    sync.Mutex
	rings atomic.Pointer[[]*Ring]
	waker *Waker
}

// NewTap returns a tap whose per-worker rings hold size frames (a power of
// two).
func NewTap(size int) (*Tap, error) {
	if _, err := NewRing(size); err != nil {
		return nil, err
	}
	t := &Tap{size: size, waker: NewWaker(-1)}
	t.rings.Store(&[]*Ring{})
	return t, nil
}

// ring makes the ring for one more RX worker.
func (t *Tap) ring() *Ring {
	r, _ := NewRing(t.size) // the size was checked in NewTap
	t.mu.Lock()
	defer t.mu.Unlock()
	rs := append(append([]*Ring(nil), *t.rings.Load()...), r)
	t.rings.Store(&rs)
	return r
}

// TapStats are the tap's counters.
type TapStats struct {
	Pushed  uint64 // frames handed to the consumer's rings
	Dropped uint64 // frames dropped because the consumer fell behind
}

// Stats reads the counters.
func (t *Tap) Stats() TapStats {
	var s TapStats
	for _, r := range *t.rings.Load() {
		rs := r.Stats()
		s.Pushed += rs.Pushed
		s.Dropped += rs.DroppedFull
	}
	return s
}

// Drain waits until frames are queued (or stop is closed), then calls
// write for each queued frame, in order per worker, and releases it. It
// returns false once stop is closed and nothing is left. write must not
// keep the frame. Drain is for one consumer goroutine.
func (t *Tap) Drain(write func(b *Buf), cache *BufCache, stop <-chan struct{}) bool {
	var batch [64]*Buf
	ready := func() bool {
		for _, r := range *t.rings.Load() {
			if r.Len() > 0 {
				return true
			}
		}
		return false
	}
	if !ready() && !t.waker.Wait(ready, stop) {
		// Stopped: the last frames still go out.
		if !ready() {
			return false
		}
	}
	for _, r := range *t.rings.Load() {
		for {
			n := r.PopBatch(batch[:])
			if n == 0 {
				break
			}
			for _, b := range batch[:n] {
				write(b)
			}
			cache.ReleaseBatch(batch[:n])
			clear(batch[:n])
		}
	}
	return true
}
