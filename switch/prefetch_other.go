//go:build !amd64

package l4

import "sync/atomic"

// prefetch is a no-op where the package has no prefetch instruction;
// lookupBatch then touches the buckets with loads.
func prefetch(*atomic.Uint64) {}

const havePrefetch = false
