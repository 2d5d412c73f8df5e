package l4

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestWakerNoLostWakeup pushes single frames with random pauses (none, a
// yield, a short sleep) so that pushes land in every phase of the
// consumer's spin/park/re-check sequence, many times. A lost wake-up
// leaves the consumer parked with a frame in the ring: the test then hangs
// and the deadline (a hang detector only) fails it.
func TestWakerNoLostWakeup(t *testing.T) {
	items := 50_000
	if testing.Short() {
		items = 5_000
	}
	for _, tc := range []struct {
		name string
		spin int
	}{
		{"park at once", -1},
		{"spin 1", 1},
		{"spin default", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRing(4)
			if err != nil {
				t.Fatal(err)
			}
			w := NewWaker(tc.spin)
			bufs := ringTestBufs(items)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(1, uint64(tc.spin)))
				for i := 0; i < items; {
					if r.TryPushBatch(bufs[i:i+1]) == 0 {
						runtime.Gosched() // ring full: the consumer is awake
						continue
					}
					w.Wake()
					i++
					switch x := rng.IntN(100); {
					case x < 60: // back to back
					case x < 90:
						runtime.Gosched()
					case x < 99:
						for range rng.IntN(200) { // a short busy pause
							_ = rng.Uint64()
						}
					default:
						time.Sleep(time.Duration(rng.IntN(20)) * time.Microsecond)
					}
				}
			}()
			got := 0
			go func() {
				defer wg.Done()
				ready := func() bool { return r.Len() > 0 }
				var dst [4]*Buf
				for got < items {
					k := r.PopBatch(dst[:])
					for j := range k {
						if dst[j] != bufs[got+j] {
							t.Errorf("frame %d arrived as %d", dst[j].idx, got+j)
						}
					}
					got += k
					if k == 0 && !w.Wait(ready, stop) {
						return
					}
				}
			}()
			ringTestWait(t, &wg, stop)
			if got != items {
				t.Fatalf("received %d of %d", got, items)
			}
			st := w.Stats()
			if tc.spin < 0 && st.Parks == 0 {
				t.Fatal("consumer never parked: the test did not exercise the wake-up")
			}
			t.Logf("%+v", st)
		})
	}
}

func TestWakerWait(t *testing.T) {
	t.Run("ready at once", func(t *testing.T) {
		w := NewWaker(-1)
		if !w.Wait(func() bool { return true }, nil) {
			t.Fatal("Wait = false")
		}
		if w.Stats().Parks != 0 {
			t.Fatal("parked although ready")
		}
	})
	t.Run("ready while spinning", func(t *testing.T) {
		w := NewWaker(10)
		polls := 0
		if !w.Wait(func() bool { polls++; return polls == 5 }, nil) || w.Stats().Parks != 0 {
			t.Fatalf("Wait after %d polls, %+v", polls, w.Stats())
		}
	})
	t.Run("stop while parked", func(t *testing.T) {
		w := NewWaker(-1)
		stop := make(chan struct{})
		go func() {
			for !w.parked.Load() {
				runtime.Gosched()
			}
			close(stop)
		}()
		if w.Wait(func() bool { return false }, stop) {
			t.Fatal("Wait = true on stop")
		}
		if w.parked.Load() {
			t.Fatal("still marked parked after Wait returned")
		}
	})
	t.Run("stop before", func(t *testing.T) {
		w := NewWaker(100)
		stop := make(chan struct{})
		close(stop)
		if w.Wait(func() bool { return false }, stop) {
			t.Fatal("Wait = true on stop")
		}
	})
	t.Run("wake while parked", func(t *testing.T) {
		w := NewWaker(-1)
		go func() {
			for !w.parked.Load() {
				runtime.Gosched()
			}
			w.Wake()
		}()
		if !w.Wait(func() bool { return false }, nil) {
			t.Fatal("Wait = false")
		}
		if st := w.Stats(); st.Parks != 1 || st.Wakes != 1 {
			t.Fatalf("stats %+v, want one park, one wake", st)
		}
	})
	t.Run("wake when not parked is free", func(t *testing.T) {
		w := NewWaker(0)
		if a := testing.AllocsPerRun(1000, w.Wake); a != 0 {
			t.Fatalf("%v allocations", a)
		}
		if len(w.ch) != 0 || w.Stats().Wakes != 0 {
			t.Fatal("Wake sent a token to a consumer that is not parked")
		}
	})
	t.Run("stale token is dropped", func(t *testing.T) {
		w := NewWaker(-1)
		w.ch <- struct{}{} // as a producer that saw parked just before it was cleared
		stop := make(chan struct{})
		go func() {
			for !w.parked.Load() {
				runtime.Gosched()
			}
			close(stop)
		}()
		if w.Wait(func() bool { return false }, stop) {
			t.Fatal("a stale token woke the consumer")
		}
	})
	t.Run("nil ready", func(t *testing.T) {
		w := NewWaker(3)
		stop := make(chan struct{})
		close(stop)
		if w.Wait(nil, stop) {
			t.Fatal("Wait = true")
		}
	})
}
