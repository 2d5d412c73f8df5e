// Package l4 is the data plane of usnetd: frame parsing, the rule table,
// the forwarding decision, and (in later files) the rings, buffer pool and
// pipeline that move frames between ports.
//
// The directory is called switch/ as in DESIGN.md, but switch is a Go
// keyword, so the package is named l4: it switches by L4 address, and call
// sites read as what they do — l4.Parse, l4.Table, l4.Decide.
//
// What this package must never do:
//   - make a system call (no os, no net, no syscall, no unix): backends own
//     the devices, this package only decides; pinning and polling live in
//     the backends and in cmd/usnetd;
//   - allocate, lock or log per frame on the hot path (Parse, Lookup,
//     Decide): counters are plain atomics owned by one goroutine;
//   - panic on any input: a malformed frame becomes a DropReason that is
//     counted.
//
// Concurrency contract: Parse and Decide are safe from any number of
// goroutines. Table readers take no lock and write no shared memory; table
// writers serialise per shard. See table.go.
package l4
