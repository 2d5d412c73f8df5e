package l4

// prefetch asks the CPU to bring the 127 bytes at p (a bucket's count,
// which starts it) into its caches without waiting for them: unlike a
// load, a prefetch retires at once, so a loop of them puts as many misses
// in flight as the core can track instead of as many as fit in its
// reorder window. A prefetch never faults; callers pass a live bucket.
// (Assembly rather than package unsafe, which the data plane does not
// import.)
//
//go:noescape
func prefetch(p *int)

const havePrefetch = true
