// Package metrics exports usnetd's counters to Prometheus. Collectors read
// the pipeline's per-goroutine atomic counters when scraped; nothing here is
// ever called per packet. Besides the pipeline's counters it exports, per
// NIC, what the backend (and the kernel under it) dropped
// (usnetd_backend_drops_total, from Domain.BackendDrops), so that no frame
// is lost where no counter sees it.
package metrics
