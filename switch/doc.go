// Package l4 is the data plane of usnetd: frame parsing, the rule table,
// the forwarding decision, and the pipeline that moves frames between ports
// through lock-free rings.
//
// The directory is called switch/ (docs/architecture.md), but switch is a Go
// keyword, so the package is named l4: it switches by L4 address, and call
// sites read as what they do: l4.Parse, l4.Table, l4.NewSwitch, l4.Decide.
//
// The pieces, in the order a frame meets them:
//
//   - Parse (frame.go) reads one Ethernet frame into a Frame without
//     allocating: 802.1Q, ARP, EAPOL, IPv4 (options, fragments), IPv6
//     (extension headers, fragments), the ports of TCP, UDP, DCCP, SCTP and
//     UDP-Lite, ICMP/ICMPv6 type and, for errors, the quoted flow, DHCP.
//     A malformed frame yields a DropReason (drop.go), never a panic. The
//     eBPF classifier (firewall/bpf/classify.h) is this decision's kernel
//     side; firewall/differential_test.go holds the two to one verdict.
//   - Table (table.go, hashtab4.go, hashtab.go, key.go) holds the rules
//     (rule.go): a hash table per IP family under compact keys (16 bytes
//     for IPv4), read without locks in at most three lookup steps. IPv4
//     rules live in a flat, pointer-free array of 64-byte buckets (two
//     rules each, linear probing with overflow counts) that readers read
//     under a per-bucket sequence number, so a lookup reads one cache line;
//     IPv6 rules in buckets of up to 8 rules that writers copy on write.
//     Both grow without a write paying for the table. batch.go looks up a
//     NIC's receive batch in two passes, the first prefetching every
//     frame's bucket (prefetch_amd64.s), so that their cache misses overlap.
//   - Switch.Decide (decide.go) is the forwarding decision of the original,
//     with learning, the anti-hijack check, the DHCP relay, local switching
//     by the local-MAC set (local.go), fragments (frag.go) and ICMP errors.
//     Before it, every frame an endpoint sends passes the isolation checks
//     (isolate.go): source MAC, source address, source port and its
//     privilege, ICMP errors and fragments of its own flows only, ARP and
//     neighbour discovery for its own addresses only, nothing that
//     configures hosts. The local identity (local MACs: the NIC's and
//     ADD_MACS; the addresses endpoints may use) comes from SetLocal only.
//     A FlowWatch (flowwatch.go), when set, notes the frames of endpoints'
//     flows (activity on a coarse clock, TCP FIN and RST) for the control
//     plane, which ends a connection's rule with its flow.
//   - Pipeline (pipeline.go, worker.go) runs it: an RX worker per port
//     queue (an OS thread of its own only for the NIC's queues) that parses
//     a receive batch, looks it up in one go and decides frame by frame,
//     batches per destination, an SPSC Ring (ring.go) per (worker, port)
//     pair, a TX goroutine per port waking on a Waker (wait.go), Bufs from
//     a BufPool (pool.go), counters read by Stats (stats.go). Ports are
//     what backends implement (port.go); one that waits without buffers
//     (RxWaiter) holds none while idle.
//   - Resource bounds: the NIC's receive path keeps a reserve of buffers
//     (BufPool.SetReserve), frames queued to other ports have quotas
//     (pipeline.go), held fragments are bounded in bytes per interface and
//     per source (frag.go), and rules per owner group (RuleQuota,
//     table.go): no port and no remote sender can starve the others.
//
// What this package must never do:
//   - make a system call (no os, net, syscall or unix import; a test checks):
//     backends own the devices, this package only decides and moves
//     references; pinning threads is left to a hook (PipelineConfig);
//   - allocate, lock or log per frame on the hot path (Parse, Lookup,
//     Decide, the RX and TX loops): counters are atomics that their owner
//     goroutine writes once per batch;
//   - block a producer on a full ring, or panic on any input.
//
// Concurrency contract: Parse and Decide are safe from any number of
// goroutines. Table readers and the local identity's take no lock and
// write no shared memory; Table writers serialise on a lock per IP family
// (IPv4; a write holds it for a few hundred nanoseconds) or per stripe of
// buckets (IPv6), SetLocal swaps one snapshot. Rings, caches and wakers have one
// owner per end (see ring.go). Pipeline methods are safe from any goroutine.
package l4
