package l4

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// BenchmarkTableLayout compares, in one process and interleaved batch by
// batch (so that a loaded machine slows all alike), the batched IPv4
// lookup of the flat table against the previous layout (htab: an array of
// pointers to immutable buckets of 8 slots), at 101,000 rules, each with
// a prefetch pass over a batch of 64 keys before the compares. Metrics:
// ns per lookup of each layout.
func BenchmarkTableLayout(b *testing.B) {
	const n, bs = 101000, 64
	tb := NewTable()
	var old htab[key4]
	old.init(tb.hash4, minBuckets)
	keys := make([]key4, n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range keys {
		keys[i] = key4{rng.Uint64(), rng.Uint64() & (1<<48 - 1)}
		h := tb.hash4(&keys[i])
		tb.v4.insert(h, keys[i], entry(i+1))
		old.insert(h, keys[i], entry(i+1))
	}
	for old.state.Load().old != nil { // finish the old table's resize
		old.insert(0, key4{^uint64(0), ^uint64(0)}, 1)
		old.remove(0, key4{^uint64(0), ^uint64(0)}, func(entry) bool { return true })
	}
	for tb.v4.state.Load().old != nil {
		tb.v4.resizeMu.Lock()
		tb.v4.resizeMu.Unlock()
	}
	order := rng.Perm(n)
	var hs [bs]uint64
	var tFlat, tOld int64
	sink := 0
	b.ResetTimer()
	for done := 0; done < b.N; done += bs {
		base := done % (n - bs)
		for v := range 2 {
			t0 := time.Now()
			for i := range bs {
				k := &keys[order[base+i]]
				hs[i] = tb.hash4(k)
				if v == 0 {
					prefetch(tb.v4.first(hs[i]))
				} else if bk := old.find(hs[i]); bk != nil {
					prefetch((*atomic.Uint64)(unsafe.Pointer(&bk.n)))
				}
			}
			for i := range bs {
				k := &keys[order[base+i]]
				var e entry
				if v == 0 {
					e, _ = tb.v4.get(hs[i], k)
				} else {
					e, _ = old.get(hs[i], k)
				}
				sink += int(e)
			}
			if v == 0 {
				tFlat += int64(time.Since(t0))
			} else {
				tOld += int64(time.Since(t0))
			}
		}
	}
	b.StopTimer()
	if sink == 0 {
		b.Fatal("nothing found")
	}
	b.ReportMetric(float64(tFlat)/float64(b.N), "flat-ns/lookup")
	b.ReportMetric(float64(tOld)/float64(b.N), "old-ns/lookup")
	b.ReportMetric(float64(tOld)/float64(tFlat), "old/flat")
	_ = fmt.Sprint
}
