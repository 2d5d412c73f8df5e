package l4

import "sync/atomic"

// prefetch asks the CPU to bring the cache line at p (a bucket's first
// word; a bucket is one line) into its caches without waiting for them: unlike a
// load, a prefetch retires at once, so a loop of them puts as many misses
// in flight as the core can track instead of as many as fit in its
// reorder window. A prefetch never faults; callers pass a live bucket.
// (Assembly rather than package unsafe, which the data plane does not
// import.)
//
//go:noescape
func prefetch(p *atomic.Uint64)

const havePrefetch = true
