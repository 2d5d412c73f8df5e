//go:build !amd64

package l4

// prefetch is a no-op where the package has no prefetch instruction;
// lookupBatch then touches the buckets with loads.
func prefetch(*int) {}

const havePrefetch = false
