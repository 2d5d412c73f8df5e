package l4

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"
)

// poolTestNew returns a pool and registers a cleanup that asserts that no
// double free was recorded.
func poolTestNew(t testing.TB, count, size int) *BufPool {
	t.Helper()
	p, err := NewBufPool(count, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if n := p.Stats().DoubleFree; n != 0 {
			t.Errorf("DoubleFree = %d, want 0", n)
		}
	})
	return p
}

func TestNewBufPool(t *testing.T) {
	for _, tc := range []struct {
		name        string
		count, size int
		wantSize    int
		wantErr     bool
	}{
		{"default size", 10, 0, DefaultBufSize, false},
		{"one buffer", 1, 64, 64, false},
		{"odd size", 100, 1, 1, false},
		{"jumbo", 3, 9216, 9216, false},
		{"not a batch multiple", BufCacheBatch*2 + 5, 128, 128, false},
		{"max size", 1, bufMaxSize, bufMaxSize, false},
		{"zero count", 0, 2048, 0, true},
		{"negative count", -1, 2048, 0, true},
		{"too many", bufMaxCount + 1, 1, 0, true},
		{"negative size", 10, -1, 0, true},
		{"too large", 10, bufMaxSize + 1, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewBufPool(tc.count, tc.size)
			if tc.wantErr {
				if !errors.Is(err, ErrBufPoolConfig) {
					t.Fatalf("err = %v, want ErrBufPoolConfig", err)
				}
				if p != nil {
					t.Fatal("non-nil pool with error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st := p.Stats()
			if st.Bufs != tc.count || st.BufSize != tc.wantSize || st.SharedFree != tc.count {
				t.Fatalf("stats = %+v, want %d buffers of %d, all free", st, tc.count, tc.wantSize)
			}
			c := p.NewCache()
			seen := map[int]bool{}
			for range tc.count {
				b := c.Get()
				if b == nil {
					t.Fatal("Get = nil before exhaustion")
				}
				if b.Cap() != tc.wantSize || len(b.Data()) != tc.wantSize || cap(b.Data()) != tc.wantSize {
					t.Fatalf("Cap = %d, len(Data) = %d, cap(Data) = %d, want %d",
						b.Cap(), len(b.Data()), cap(b.Data()), tc.wantSize)
				}
				if seen[b.Index()] {
					t.Fatalf("buffer %d handed out twice", b.Index())
				}
				seen[b.Index()] = true
				if off := b.Index() * p.Stride(); &p.Backing()[off] != &b.Data()[0] {
					t.Fatalf("buffer %d is not at Backing()[%d]", b.Index(), off)
				}
			}
			if b := c.Get(); b != nil {
				t.Fatal("Get on exhausted pool returned a buffer")
			}
		})
	}
}

func TestBufHeaderSize(t *testing.T) {
	if s := unsafe.Sizeof(Buf{}); s != 64 {
		t.Fatalf("sizeof(Buf) = %d, want 64 (one cache line)", s)
	}
}

func TestBufPoolExhaustion(t *testing.T) {
	const n = 3*BufCacheBatch + 7
	p := poolTestNew(t, n, 128)
	c := p.NewCache()
	bufs := make([]*Buf, n+1)
	if got := c.GetBatch(bufs); got != n {
		t.Fatalf("GetBatch = %d, want %d", got, n)
	}
	if b := c.Get(); b != nil {
		t.Fatal("Get on exhausted pool returned a buffer")
	}
	if got := c.GetBatch(bufs[n:]); got != 0 {
		t.Fatalf("GetBatch on exhausted pool = %d", got)
	}
	if p.Stats().Exhausted == 0 {
		t.Fatal("Exhausted not counted")
	}
	// Release through a second cache: it overflows and flushes to the store.
	c2 := p.NewCache()
	c2.ReleaseBatch(bufs[:n])
	if got := p.Stats().SharedFree + c2.Len(); got != n {
		t.Fatalf("free after release = %d, want %d", got, n)
	}
	if c2.Len() > 2*BufCacheBatch {
		t.Fatalf("cache holds %d > %d", c2.Len(), 2*BufCacheBatch)
	}
	// What is in the shared store can be taken by the first cache.
	shared := p.Stats().SharedFree
	if got := c.GetBatch(bufs[:n]); got != shared {
		t.Fatalf("GetBatch = %d, want the %d in the shared store", got, shared)
	}
	c.ReleaseBatch(bufs[:shared])
	c.Flush()
	c2.Flush()
	if st := p.Stats(); st.SharedFree != n {
		t.Fatalf("SharedFree after Flush = %d, want %d", st.SharedFree, n)
	}
	if c2.Len() != 0 {
		t.Fatalf("Len after Flush = %d", c2.Len())
	}
}

func TestBufRefcount(t *testing.T) {
	for _, tc := range []struct {
		name   string
		retain []int32 // Retain calls
		refs   int     // references in the end: releases until free
	}{
		{"single", nil, 1},
		{"fan-out 2", []int32{1}, 2},
		{"fan-out 8", []int32{7}, 8},
		{"retain in steps", []int32{1, 2, 3}, 7},
		{"retain 0 and negative ignored", []int32{0, -5, 1}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := poolTestNew(t, BufCacheBatch, 0)
			c := p.NewCache()
			b := c.Get()
			if b.Refs() != 1 || b.Len() != 0 {
				t.Fatalf("fresh buffer: Refs = %d, Len = %d", b.Refs(), b.Len())
			}
			for _, n := range tc.retain {
				b.Retain(n)
			}
			before := c.Len()
			for i := range tc.refs {
				if c.Len() != before {
					t.Fatalf("returned to the cache after %d of %d releases", i, tc.refs)
				}
				c.Release(b)
			}
			if c.Len() != before+1 || b.Refs() != 0 {
				t.Fatalf("not returned after the last release: cache %d→%d, Refs %d", before, c.Len(), b.Refs())
			}
		})
	}
}

func TestBufDoubleFree(t *testing.T) {
	p, err := NewBufPool(BufCacheBatch, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := p.NewCache()
	b := c.Get()
	c.Release(b)
	n := c.Len()
	c.Release(b) // bug: already free
	b.Release()  // bug: already free
	b.Retain(1)  // bug: resurrecting a free buffer
	if got := p.Stats().DoubleFree; got != 3 {
		t.Fatalf("DoubleFree = %d, want 3", got)
	}
	if c.Len() != n || b.Refs() != 0 {
		t.Fatalf("double free changed state: cache %d→%d, Refs %d", n, c.Len(), b.Refs())
	}
	// The pool still hands out every buffer exactly once.
	seen := map[*Buf]bool{}
	for b := c.Get(); b != nil; b = c.Get() {
		if seen[b] {
			t.Fatalf("buffer %d handed out twice", b.Index())
		}
		seen[b] = true
	}
	if len(seen) != BufCacheBatch {
		t.Fatalf("got %d buffers, want %d", len(seen), BufCacheBatch)
	}
}

func TestBufZeroAndNil(t *testing.T) {
	var nilBuf *Buf
	for name, b := range map[string]*Buf{"nil": nilBuf, "zero": {}} {
		t.Run(name, func(t *testing.T) {
			b.SetLen(10)
			if b.Len() != 0 || b.Cap() != 0 || len(b.Bytes()) != 0 || len(b.Data()) != 0 || b.Index() != 0 || b.Refs() != 0 {
				t.Fatal("zero buffer is not empty")
			}
			b.Retain(1)
			b.Release()
			var c BufCache // zero cache: no pool
			c.Release(b)
			c.ReleaseBatch([]*Buf{b, nil})
			if c.Get() != nil || c.GetBatch(make([]*Buf, 4)) != 0 {
				t.Fatal("zero cache returned a buffer")
			}
			c.Flush()
		})
	}
}

func TestBufSetLen(t *testing.T) {
	p := poolTestNew(t, 1, 100)
	c := p.NewCache()
	b := c.Get()
	defer c.Release(b)
	for _, tc := range []struct{ set, want int }{
		{0, 0}, {1, 1}, {60, 60}, {100, 100}, {101, 100}, {1 << 40, 100}, {-1, 0}, {-1 << 40, 0},
	} {
		b.SetLen(tc.set)
		if b.Len() != tc.want || len(b.Bytes()) != tc.want {
			t.Errorf("SetLen(%d): Len = %d, len(Bytes) = %d, want %d", tc.set, b.Len(), len(b.Bytes()), tc.want)
		}
	}
}

func TestBufDataBounded(t *testing.T) {
	p := poolTestNew(t, 2, 64)
	c := p.NewCache()
	a, b := c.Get(), c.Get()
	defer c.ReleaseBatch([]*Buf{a, b})
	copy(b.Data(), "neighbour")
	_ = append(a.Data(), make([]byte, 64)...) // must reallocate, not overwrite b
	_ = append(a.Data()[:10], make([]byte, 100)...)
	if string(b.Data()[:9]) != "neighbour" {
		t.Fatal("append to one buffer overwrote its neighbour")
	}
	a.SetLen(5)
	b2 := c.Get()
	if b2 != nil {
		t.Fatal("pool of 2 gave a third buffer")
	}
}

func TestBufCacheCrossPool(t *testing.T) {
	pa := poolTestNew(t, BufCacheBatch, 0)
	pb := poolTestNew(t, BufCacheBatch, 0)
	ca, cb := pa.NewCache(), pb.NewCache()
	b := ca.Get()
	sharedA := pa.Stats().SharedFree
	cb.Release(b)
	if cb.Len() != 0 {
		t.Fatal("a buffer of pool A went into a cache of pool B")
	}
	if pa.Stats().SharedFree != sharedA+1 {
		t.Fatal("the buffer did not return to pool A")
	}
}

func TestBufPoolAllocs(t *testing.T) {
	p := poolTestNew(t, 4*BufCacheBatch, 0)
	get, put := p.NewCache(), p.NewCache()
	batch := make([]*Buf, 32)
	for name, f := range map[string]func(){
		"Get/Release": func() {
			b := get.Get()
			b.Retain(1)
			put.Release(b)
			put.Release(b)
		},
		"GetBatch/ReleaseBatch across caches": func() {
			n := get.GetBatch(batch)
			put.ReleaseBatch(batch[:n])
		},
		"Buf.Release to the shared store": func() {
			get.Get().Release()
		},
	} {
		// Enough runs to go through refills and flushes many times.
		if a := testing.AllocsPerRun(10000, f); a != 0 {
			t.Errorf("%s: %v allocations per run, want 0", name, a)
		}
	}
}

// TestBufPoolConcurrent has goroutines get buffers from their caches, pass
// them to each other (so buffers flow between caches through the shared
// store), and checks that no buffer is ever held by two owners at once.
func TestBufPoolConcurrent(t *testing.T) {
	const (
		workers = 4
		count   = 3 * BufCacheBatch * workers // tight: caches hold much of it
	)
	iters := 20000
	if testing.Short() {
		iters = 2000
	}
	p := poolTestNew(t, count, 128)
	var owned [count]atomic.Int32 // 1 while a worker holds the buffer
	handoff := make(chan *Buf, 64)
	var wg sync.WaitGroup
	var gets atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := p.NewCache()
			defer c.Flush()
			var mine [16]*Buf
			for i := range iters {
				n := c.GetBatch(mine[:1+i%len(mine)])
				gets.Add(int64(n))
				for _, b := range mine[:n] {
					if !owned[b.Index()].CompareAndSwap(0, 1) {
						t.Errorf("buffer %d handed out while held", b.Index())
						return
					}
					binary.LittleEndian.PutUint64(b.Data(), uint64(w)<<32|uint64(i))
					b.SetLen(8)
				}
				for j, b := range mine[:n] {
					if binary.LittleEndian.Uint64(b.Bytes()) != uint64(w)<<32|uint64(i) {
						t.Errorf("buffer %d overwritten while held", b.Index())
					}
					owned[b.Index()].Store(0)
					switch j % 3 {
					case 0:
						c.Release(b)
					case 1:
						b.Release()
					case 2: // to another worker, who releases it into its cache
						select {
						case handoff <- b:
						default:
							c.Release(b)
						}
					}
				}
				for k := 0; k < 4; k++ {
					select {
					case b := <-handoff:
						c.Release(b)
					default:
					}
				}
			}
		}()
	}
	wg.Wait()
	close(handoff)
	c := p.NewCache()
	for b := range handoff {
		c.Release(b)
	}
	c.Flush()
	if st := p.Stats(); st.SharedFree != count {
		t.Fatalf("after all workers flushed: SharedFree = %d, want %d", st.SharedFree, count)
	}
	if gets.Load() == 0 {
		t.Fatal("no buffer was handed out")
	}
}

func BenchmarkPool(b *testing.B) {
	b.Run("cache", func(b *testing.B) {
		p := poolTestNew(b, 4*BufCacheBatch, 0)
		c := p.NewCache()
		b.ReportAllocs()
		for b.Loop() {
			c.Release(c.Get())
		}
	})
	b.Run("cache-batch32", func(b *testing.B) {
		p := poolTestNew(b, 4*BufCacheBatch, 0)
		get, put := p.NewCache(), p.NewCache() // buffers go through the shared store
		bufs := make([]*Buf, 32)
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			k := get.GetBatch(bufs)
			put.ReleaseBatch(bufs[:k])
			n += k
		}
		b.ReportMetric(float64(n)/b.Elapsed().Seconds()/1e6, "Mbufs/s")
	})
	b.Run("shared-only", func(b *testing.B) {
		// Baseline: every release goes straight to the shared store.
		p := poolTestNew(b, 4*BufCacheBatch, 0)
		c := p.NewCache()
		b.ReportAllocs()
		for b.Loop() {
			c.Get().Release()
		}
	})
}

// TestBufPoolSharedStackABA hammers the shared store's push and pop with
// the pattern that breaks an untagged Treiber stack: pop A, pop B, push A
// back while another goroutine is between its load of A and its CAS. Each
// popped chain is marked owned; a chain handed to two goroutines at once
// (or a lost one) fails the test.
func TestBufPoolSharedStackABA(t *testing.T) {
	const workers = 8
	iters := 50_000
	if testing.Short() {
		iters = 5_000
	}
	p := poolTestNew(t, 16, 64)
	// Make every buffer a chain of its own, so there are 16 small chains.
	c := p.NewCache()
	var all [16]*Buf
	c.GetBatch(all[:])
	for _, b := range all {
		b.Release()
	}
	var owned [16]atomic.Int32
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range iters {
				a := p.popChain()
				b := p.popChain()
				for _, x := range []*Buf{a, b} {
					if x != nil && !owned[x.idx].CompareAndSwap(0, 1) {
						t.Errorf("chain %d popped twice", x.idx)
					}
				}
				if i%7 == 0 {
					runtime.Gosched()
				}
				for _, x := range []*Buf{a, b} {
					if x != nil {
						owned[x.idx].Store(0)
						p.pushChain(x, x, 1)
					}
				}
			}
		}()
	}
	wg.Wait()
	if got := p.Stats().SharedFree; got != 16 {
		t.Fatalf("SharedFree = %d, want 16", got)
	}
	n := 0
	for b := p.popChain(); b != nil; b = p.popChain() {
		n++
		if n > 16 {
			t.Fatal("the stack has a cycle")
		}
	}
	if n != 16 {
		t.Fatalf("%d chains on the stack, want 16", n)
	}
}
