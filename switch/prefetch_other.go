//go:build !amd64

package l4

import "unsafe"

// prefetch is a no-op where the package has no prefetch instruction;
// lookupBatch then touches the buckets with loads.
func prefetch(unsafe.Pointer) {}

const havePrefetch = false
