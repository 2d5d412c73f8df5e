// Package metrics exports usnetd's counters to Prometheus. Collectors read
// the pipeline's per-goroutine atomic counters when scraped; nothing here is
// ever called per packet.
package metrics
