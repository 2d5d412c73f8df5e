package l4

import "unsafe"

// prefetch asks the CPU to bring the 127 bytes at p into its caches
// without waiting for them: unlike a load, a prefetch retires at once, so
// a loop of them puts as many misses in flight as the core can track
// instead of as many as fit in its reorder window. A prefetch never
// faults; callers pass a live bucket.
//
//go:noescape
func prefetch(p unsafe.Pointer)

const havePrefetch = true
