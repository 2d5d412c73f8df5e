package l4

import (
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// BenchmarkTableLayout compares IPv4 table layouts at 101,000 rules in one
// process, interleaved batch by batch so that a loaded machine slows both
// alike: the flat array of 64-byte buckets (ftab) and the previous layout
// (htab: an array of pointers to immutable buckets of up to 8 slots). Each looks
// up batches of 64 keys in random order (the batch's keys copied into
// the caches first, and each layout going first in turn) as lookupBatch does: a pass of
// hashes and prefetches (for htab: the bucket pointer's load, then the
// prefetch), then the compares. Metrics: ns per lookup of each, and
// their ratio.
func BenchmarkTableLayout(b *testing.B) {
	const n, bs = 101000, 64
	tb := NewTable()
	var flat ftab
	flat.init(tb.hash4, minBuckets)
	var old htab[key4]
	old.init(tb.hash4, minBuckets)
	keys := make([]key4, n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range keys {
		keys[i] = key4{rng.Uint64(), rng.Uint64() & (1<<48 - 1)}
		h := tb.hash4(&keys[i])
		flat.insert(h, keys[i], entry(i+1))
		old.insert(h, keys[i], entry(i+1))
	}
	for old.state.Load().old != nil { // finish the old table's resize
		old.insert(0, key4{^uint64(0), ^uint64(0)}, 1)
		old.remove(0, key4{^uint64(0), ^uint64(0)}, func(entry) bool { return true })
	}
	flat.settled() // and the flat one's
	order := rng.Perm(n)
	var hs [bs]uint64
	var kb [bs]key4
	var ns [2]int64
	sink := 0
	b.ResetTimer()
	for done := 0; done < b.N; done += bs {
		base := done % (n - bs)
		for i := range kb { // the batch's keys, in the caches for all three
			kb[i] = keys[order[base+i]]
		}
		for r := range ns {
			v := (r + done/bs) % len(ns) // each goes first in turn
			t0 := time.Now()
			for i := range bs {
				hs[i] = tb.hash4(&kb[i])
				if v == 0 {
					prefetch(flat.first(hs[i]))
				} else if bk := old.find(hs[i]); bk != nil {
					prefetch((*atomic.Uint64)(unsafe.Pointer(&bk.n)))
				}
			}
			for i := range bs {
				k := &kb[i]
				var e entry
				if v == 0 {
					e, _ = flat.get(hs[i], k)
				} else {
					e, _ = old.get(hs[i], k)
				}
				sink += int(e)
			}
			ns[v] += int64(time.Since(t0))
		}
	}
	b.StopTimer()
	if sink == 0 {
		b.Fatal("nothing found")
	}
	b.ReportMetric(float64(ns[0])/float64(b.N), "flat-ns/lookup")
	b.ReportMetric(float64(ns[1])/float64(b.N), "ptr-ns/lookup")
	b.ReportMetric(float64(ns[1])/float64(ns[0]), "ptr/flat")
}
