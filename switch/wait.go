package l4

import (
	"runtime"
	"sync/atomic"
)

// Waiting for work without burning a core or losing a wake-up.
//
// A TX goroutine drains its rings round-robin. When all are empty it calls
// Waker.Wait, which first polls briefly (Spin rounds of the ready check,
// each followed by runtime.Gosched, so a producer sharing the P can run)
// and then parks on a channel. Producers call Wake after each successful
// push.
//
// The protocol (a Dekker-style handshake on two sequentially consistent
// atomics, which is what sync/atomic guarantees):
//
//	consumer                              producer
//	parked.Store(true)                    ring.tail.Store(t+k)   (push)
//	if ready() { unpark; return }         if parked.Load() {
//	<-ch                                      select { case ch <- {}: default: }
//	                                      }
//
// Either the producer's load sees parked == true and it sends a token, or
// the consumer's re-check (ready, after setting parked) sees the pushed
// frame: a wake-up cannot be lost. The channel has capacity 1 and the send
// never blocks, so any number of producers may Wake and a producer never
// waits for the consumer.
//
// Trade-offs, and why this and not something else:
//
//   - Wake is one atomic load of a flag that the consumer writes only when
//     it parks or unparks: under load the consumer never parks, the flag's
//     cache line stays shared in every producer's cache and Wake costs a few
//     cycles. A channel send per push would cost a lock per frame;
//     sync.Cond needs the mutex on the push side; a futex is a system call,
//     which this package never makes.
//   - A token can go stale (a producer saw parked == true just before the
//     consumer's re-check succeeded). Wait drops a stale token before it
//     parks, and any one left over causes at most one spurious return,
//     after which the caller finds its rings empty and waits again.
//   - The spin phase trades CPU for latency: a frame that arrives within
//     Spin polls is seen without a park/unpark, which costs a goroutine
//     wake-up (and, if the consumer's thread slept, an OS thread wake-up:
//     tens of microseconds). Spin is a count, not a time, so nothing here
//     reads a clock. Each poll is a runtime.Gosched, a trip through the
//     scheduler (a few hundred nanoseconds): 64 polls keep an idle TX
//     goroutine busy for longer than an RX worker takes to fill its next
//     batch, so with the old default of 64 the TX goroutines never parked
//     and held the second core of a 2-core machine, the one a second RX
//     worker needs. DefaultWakerSpin is 4, chosen by
//     BenchmarkPipelineWakerSpin (BENCHMARKS.md): it did better than 64
//     and 256 and than parking at once, whose every wake-up puts an OS
//     thread wake-up on the RX worker's path.

// DefaultWakerSpin is the number of polls before Wait parks when NewWaker
// is given 0.
const DefaultWakerSpin = 4

// Waker lets one consumer goroutine sleep until any of its producers has
// pushed. See the comment above for the protocol. Create it with NewWaker:
// the zero Waker has no channel, so its Wait returns only on stop.
type Waker struct {
	_ [ringPad]byte
	// Written by the consumer when it parks and unparks; read by every Wake.
	parked atomic.Bool
	parks  atomic.Uint64
	_      [ringPad]byte

	// Read-only after NewWaker, and the producers' slow-path counter.
	ch    chan struct{}
	spin  int
	wakes atomic.Uint64
	_     [ringPad]byte
}

// WakerStats are a Waker's counters; safe to read from any goroutine.
type WakerStats struct {
	Parks uint64 // times the consumer blocked on the channel
	Wakes uint64 // tokens sent by producers to a parked (or parking) consumer
}

// NewWaker returns a Waker that polls spin times before parking (0:
// DefaultWakerSpin; negative: park at once).
func NewWaker(spin int) *Waker {
	if spin == 0 {
		spin = DefaultWakerSpin
	}
	return &Waker{ch: make(chan struct{}, 1), spin: max(spin, 0)}
}

// Wake tells the consumer that a producer has pushed. Call it after every
// successful push (PushBatch returned > 0); it costs one atomic load unless
// the consumer is parked. Safe from any number of goroutines.
func (w *Waker) Wake() {
	if w.parked.Load() {
		select {
		case w.ch <- struct{}{}:
			w.wakes.Add(1)
		default: // a token is already pending
		}
	}
}

// Wait blocks the consumer until ready reports true or a producer calls
// Wake, and returns true; or returns false once stop is closed (a nil stop
// never closes). Call it after finding all rings empty; ready must report
// whether any of them has frames (Ring.Len() > 0) and is called again after
// the consumer has announced that it parks, which is what makes the
// hand-shake race-free. Wait may return true spuriously; the caller then
// simply drains (nothing) and waits again. Consumer only.
//
// A nil ready is treated as never ready; then a wake-up that races with
// parking can be missed until the next Wake, so always pass one.
func (w *Waker) Wait(ready func() bool, stop <-chan struct{}) bool {
	for range w.spin {
		if ready != nil && ready() {
			return true
		}
		select {
		case <-stop:
			return false
		default:
		}
		runtime.Gosched()
	}
	// Drop a stale token: it belongs to a push that the caller's last drain
	// has already seen (the producer pushed before it loaded parked == true,
	// and that load came before our last Store(false)).
	select {
	case <-w.ch:
	default:
	}
	w.parked.Store(true)
	if ready != nil && ready() {
		w.parked.Store(false)
		return true
	}
	w.parks.Add(1)
	select {
	case <-w.ch:
		w.parked.Store(false)
		return true
	case <-stop:
		w.parked.Store(false)
		return false
	}
}

// Stats returns the Waker's counters.
func (w *Waker) Stats() WakerStats {
	return WakerStats{Parks: w.parks.Load(), Wakes: w.wakes.Load()}
}
