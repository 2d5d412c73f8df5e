package l4

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestNewRing(t *testing.T) {
	for _, tc := range []struct {
		size    int
		wantErr bool
	}{
		{2, false}, {4, false}, {1024, false}, {1 << 16, false},
		{-2, true}, {-1, true}, {0, true}, {1, true}, {3, true}, {6, true},
		{1000, true}, {ringMaxSize + 1, true}, {ringMaxSize * 2, true},
	} {
		r, err := NewRing(tc.size)
		if tc.wantErr {
			if !errors.Is(err, ErrRingSize) || r != nil {
				t.Errorf("NewRing(%d) = %v, %v; want ErrRingSize", tc.size, r, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("NewRing(%d): %v", tc.size, err)
			continue
		}
		if r.Cap() != tc.size || r.Len() != 0 {
			t.Errorf("NewRing(%d): Cap = %d, Len = %d", tc.size, r.Cap(), r.Len())
		}
	}
}

// ringTestBufs returns n distinct buffers (not from a pool: the ring never
// looks into them).
func ringTestBufs(n int) []*Buf {
	bufs := make([]*Buf, n)
	for i := range bufs {
		bufs[i] = &Buf{idx: uint32(i)}
	}
	return bufs
}

// TestRingSequence runs scripted push/pop steps on a ring of 8 and checks
// counts and order against a model, through many wrap-arounds.
func TestRingSequence(t *testing.T) {
	type step struct {
		push, pop int // batch sizes; one of them is 0
		want      int // frames taken or returned
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"empty pop", []step{{pop: 4, want: 0}}},
		{"zero-length batches", []step{{push: 0, want: 0}, {pop: 0, want: 0}}},
		{"one in one out", []step{{push: 1, want: 1}, {pop: 1, want: 1}, {pop: 1, want: 0}}},
		{"fill exactly", []step{{push: 8, want: 8}, {push: 1, want: 0}, {pop: 8, want: 8}}},
		{"overfill", []step{{push: 5, want: 5}, {push: 5, want: 3}, {pop: 16, want: 8}}},
		{"pop more than there is", []step{{push: 3, want: 3}, {pop: 8, want: 3}}},
		{"wrap", []step{
			{push: 6, want: 6}, {pop: 5, want: 5}, {push: 6, want: 6}, {pop: 3, want: 3},
			{push: 5, want: 4}, {pop: 8, want: 8}, {pop: 1, want: 0},
		}},
		{"many wraps", func() []step {
			var s []step
			for i := range 50 {
				s = append(s, step{push: 3 + i%5, want: 3 + i%5}, step{pop: 3 + i%5, want: 3 + i%5})
			}
			return s
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRing(8)
			if err != nil {
				t.Fatal(err)
			}
			pool := ringTestBufs(1000)
			var model []*Buf // frames in the ring, in order
			next := 0
			var dropped uint64
			dst := make([]*Buf, 16)
			for i, s := range tc.steps {
				if s.push > 0 || s.pop == 0 && s.push == 0 {
					batch := pool[next : next+s.push]
					got := r.PushBatch(batch)
					if got != s.want {
						t.Fatalf("step %d: PushBatch(%d) = %d, want %d", i, s.push, got, s.want)
					}
					model = append(model, batch[:got]...)
					dropped += uint64(s.push - got)
					next += s.push
				}
				if s.pop > 0 || s.pop == 0 && s.push == 0 {
					got := r.PopBatch(dst[:s.pop])
					if got != s.want {
						t.Fatalf("step %d: PopBatch(%d) = %d, want %d", i, s.pop, got, s.want)
					}
					for j, b := range dst[:got] {
						if b != model[j] {
							t.Fatalf("step %d: popped frame %d, want %d", i, b.idx, model[j].idx)
						}
					}
					model = model[got:]
				}
				st := r.Stats()
				if st.Len != len(model) || r.Len() != len(model) || st.DroppedFull != dropped ||
					st.Pushed-st.Popped != uint64(len(model)) || st.Cap != 8 || st.HighWater > 8 {
					t.Fatalf("step %d: stats %+v, Len %d; model holds %d, dropped %d", i, st, r.Len(), len(model), dropped)
				}
			}
		})
	}
}

// TestRingFullNeverBlocks fills a ring that nobody drains: pushes return at
// once with what fitted, and PushBatch counts the rest.
func TestRingFullNeverBlocks(t *testing.T) {
	r, err := NewRing(64)
	if err != nil {
		t.Fatal(err)
	}
	bufs := ringTestBufs(32)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pushed := 0
		for range 1000 {
			pushed += r.PushBatch(bufs)
		}
		if pushed != 64 {
			t.Errorf("pushed %d into a ring of 64", pushed)
		}
		if n := r.TryPushBatch(bufs); n != 0 {
			t.Errorf("TryPushBatch on a full ring = %d", n)
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute): // hang detector, not a timing assertion
		t.Fatal("PushBatch blocked on a full ring")
	}
	st := r.Stats()
	want := RingStats{Pushed: 64, DroppedFull: 1000*32 - 64, HighWater: 64, Len: 64, Cap: 64}
	if st != want {
		t.Fatalf("stats = %+v, want %+v (TryPushBatch must not count)", st, want)
	}
}

func TestRingHighWater(t *testing.T) {
	r, err := NewRing(16)
	if err != nil {
		t.Fatal(err)
	}
	bufs := ringTestBufs(16)
	dst := make([]*Buf, 16)
	r.PushBatch(bufs[:10])
	if hw := r.Stats().HighWater; hw != 10 {
		t.Fatalf("HighWater with 10 queued = %d", hw)
	}
	r.PopBatch(dst)
	r.PushBatch(bufs[:3])
	r.PopBatch(dst)
	if st := r.Stats(); st.HighWater != 10 || st.Len != 0 {
		t.Fatalf("after draining: %+v, want HighWater 10", st)
	}
	r.PushBatch(bufs[:16])
	r.PopBatch(dst[:1])
	r.PushBatch(bufs[:2]) // one fits: full again, one dropped
	if st := r.Stats(); st.HighWater != 16 || st.DroppedFull != 1 {
		t.Fatalf("after filling: %+v, want HighWater 16", st)
	}
}

func TestRingAllocs(t *testing.T) {
	r, err := NewRing(64)
	if err != nil {
		t.Fatal(err)
	}
	bufs := ringTestBufs(48)
	dst := make([]*Buf, 32)
	if a := testing.AllocsPerRun(1000, func() {
		r.PushBatch(bufs)
		r.PopBatch(dst)
		r.PopBatch(dst)
		_ = r.Stats()
	}); a != 0 {
		t.Fatalf("%v allocations per push/pop, want 0", a)
	}
}

// ringTestSeq is how the concurrent tests number frames.
func ringTestSeq(b *Buf) uint64 { return binary.LittleEndian.Uint64(b.Bytes()) }

// TestRingConcurrentOrder moves 1e6 pooled frames with sequence numbers
// from a producer goroutine to a consumer goroutine, losslessly (the
// producer retries with TryPushBatch), and checks that every frame arrives
// once and in order. The consumer parks on a Waker when the ring is empty,
// and buffers return to the producer through the pool.
func TestRingConcurrentOrder(t *testing.T) {
	n := uint64(1_000_000)
	if testing.Short() {
		n = 100_000
	}
	r, err := NewRing(256)
	if err != nil {
		t.Fatal(err)
	}
	p := poolTestNew(t, r.Cap()+4*2*BufCacheBatch+64, 64)
	w := NewWaker(4)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // producer
		defer wg.Done()
		c := p.NewCache()
		defer c.Flush()
		var batch [32]*Buf
		seq := uint64(0)
		for seq < n {
			k := c.GetBatch(batch[:min(uint64(len(batch)), n-seq)])
			if k == 0 { // every buffer in flight: let the consumer return some
				runtime.Gosched()
				continue
			}
			for _, b := range batch[:k] {
				binary.LittleEndian.PutUint64(b.Data(), seq)
				b.SetLen(8)
				seq++
			}
			for off := 0; off < k; {
				m := r.TryPushBatch(batch[off:k])
				if m > 0 {
					w.Wake()
				} else {
					runtime.Gosched()
				}
				off += m
			}
		}
	}()
	var got uint64
	go func() { // consumer
		defer wg.Done()
		c := p.NewCache()
		defer c.Flush()
		var batch [32]*Buf
		ready := func() bool { return r.Len() > 0 }
		for got < n {
			k := r.PopBatch(batch[:])
			if k == 0 {
				if !w.Wait(ready, stop) {
					return
				}
				continue
			}
			for _, b := range batch[:k] {
				if s := ringTestSeq(b); s != got {
					t.Errorf("frame %d arrived as number %d", s, got)
					close(stop)
					return
				}
				got++
			}
			c.ReleaseBatch(batch[:k])
		}
	}()
	ringTestWait(t, &wg, stop)
	st := r.Stats()
	if got != n || st.Pushed != n || st.Popped != n || st.DroppedFull != 0 || st.Len != 0 {
		t.Fatalf("received %d of %d; ring stats %+v", got, n, st)
	}
	if pst := p.Stats(); pst.SharedFree != pst.Bufs {
		t.Fatalf("pool: %d of %d buffers back", pst.SharedFree, pst.Bufs)
	}
	t.Logf("ring %+v, waker %+v", st, w.Stats())
}

// TestRingConcurrentLossy is the data path's use: the producer pushes with
// PushBatch and releases what did not fit. Frames may be lost, never
// reordered or duplicated, and every frame is either popped or counted.
func TestRingConcurrentLossy(t *testing.T) {
	n := uint64(300_000)
	if testing.Short() {
		n = 30_000
	}
	r, err := NewRing(64)
	if err != nil {
		t.Fatal(err)
	}
	p := poolTestNew(t, r.Cap()+4*2*BufCacheBatch+64, 64)
	w := NewWaker(-1) // park at once: exercise the wake-up path hard
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	var produced, released uint64
	go func() { // producer
		defer wg.Done()
		defer close(stop)
		c := p.NewCache()
		defer c.Flush()
		var batch [32]*Buf
		for seq := uint64(0); seq < n; {
			k := c.GetBatch(batch[:min(1+seq%uint64(len(batch)), n-seq)])
			if k == 0 {
				runtime.Gosched()
				continue
			}
			for _, b := range batch[:k] {
				binary.LittleEndian.PutUint64(b.Data(), seq)
				b.SetLen(8)
				seq++
			}
			produced += uint64(k)
			m := r.PushBatch(batch[:k])
			if m > 0 {
				w.Wake()
			}
			released += uint64(k - m)
			c.ReleaseBatch(batch[m:k])
			if seq%1024 == 0 {
				runtime.Gosched() // let the consumer catch up now and then
			}
		}
	}()
	var got uint64
	go func() { // consumer: runs until the producer is done and the ring is empty
		defer wg.Done()
		c := p.NewCache()
		defer c.Flush()
		var batch [16]*Buf
		last := int64(-1)
		ready := func() bool { return r.Len() > 0 }
		for {
			k := r.PopBatch(batch[:])
			if k == 0 {
				if !w.Wait(ready, stop) {
					k = r.PopBatch(batch[:]) // stop was closed after the last push
					if k == 0 {
						return
					}
				} else {
					continue
				}
			}
			for _, b := range batch[:k] {
				s := int64(ringTestSeq(b))
				if s <= last {
					t.Errorf("frame %d after frame %d", s, last)
				}
				last = s
			}
			got += uint64(k)
			c.ReleaseBatch(batch[:k])
		}
	}()
	ringTestWait(t, &wg, nil)
	st := r.Stats()
	if produced != n || st.Pushed != got || st.Popped != got || st.Pushed+st.DroppedFull != n || st.DroppedFull != released {
		t.Fatalf("produced %d, got %d, released %d; ring stats %+v", produced, got, released, st)
	}
	if pst := p.Stats(); pst.SharedFree != pst.Bufs {
		t.Fatalf("pool: %d of %d buffers back", pst.SharedFree, pst.Bufs)
	}
	t.Logf("ring %+v, waker %+v", st, w.Stats())
}

// ringTestWait waits for wg with a generous deadline that only detects a
// hang (a lost wake-up); it asserts nothing about speed.
func ringTestWait(t *testing.T, wg *sync.WaitGroup, stop chan struct{}) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		if stop != nil {
			close(stop)
		}
		t.Fatal("hang: producer or consumer stuck (lost wake-up?)")
	}
}

// BenchmarkRing moves b.N frames from a producer goroutine to a consumer
// goroutine in batches of 32, losslessly, and reports millions of frames
// per second. "chan" is the baseline: a buffered channel of *Buf of the
// same capacity, one frame per send and receive.
func BenchmarkRing(b *testing.B) {
	const (
		batch = 32
		size  = 1024
	)
	bufs := ringTestBufs(size)
	run := func(b *testing.B, produce func(n int), consume func(n int)) {
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); produce(b.N) }()
		consume(b.N)
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds()/1e6, "Mpps")
	}
	b.Run("spsc", func(b *testing.B) {
		r, _ := NewRing(size)
		run(b, func(n int) {
			for i := 0; i < n; {
				k := min(batch, n-i)
				src := bufs[i%size : i%size+k]
				for off := 0; off < k; {
					m := r.TryPushBatch(src[off:])
					if m == 0 {
						runtime.Gosched()
					}
					off += m
				}
				i += k
			}
		}, func(n int) {
			var dst [batch]*Buf
			for got := 0; got < n; {
				k := r.PopBatch(dst[:])
				if k == 0 {
					runtime.Gosched()
				}
				got += k
			}
		})
	})
	b.Run("spsc-waker", func(b *testing.B) {
		// As the pipeline runs it: the consumer parks when the ring is
		// empty and the producer wakes it after each push.
		r, _ := NewRing(size)
		w := NewWaker(0)
		ready := func() bool { return r.Len() > 0 }
		run(b, func(n int) {
			for i := 0; i < n; {
				k := min(batch, n-i)
				src := bufs[i%size : i%size+k]
				for off := 0; off < k; {
					m := r.TryPushBatch(src[off:])
					if m == 0 {
						runtime.Gosched()
					} else {
						w.Wake()
					}
					off += m
				}
				i += k
			}
		}, func(n int) {
			var dst [batch]*Buf
			for got := 0; got < n; {
				k := r.PopBatch(dst[:])
				if k == 0 {
					w.Wait(ready, nil)
				}
				got += k
			}
		})
		b.ReportMetric(float64(w.Stats().Parks)/float64(b.N), "parks/op")
	})
	b.Run("chan", func(b *testing.B) {
		ch := make(chan *Buf, size)
		run(b, func(n int) {
			for i := 0; i < n; {
				k := min(batch, n-i)
				for _, buf := range bufs[i%size : i%size+k] {
					ch <- buf
				}
				i += k
			}
		}, func(n int) {
			var dst [batch]*Buf
			for got := 0; got < n; {
				k := 0
				dst[k] = <-ch // block for the first, then take what is there
				k++
			more:
				for k < batch && got+k < n {
					select {
					case dst[k] = <-ch:
						k++
					default:
						break more
					}
				}
				got += k
			}
		})
	})
}
