// Command usnetd-lab builds a throwaway network-namespace lab, runs usnetd
// on it with a userspace service and a kernel service on the same IP,
// drives traffic and prints a summary. It must never touch anything outside
// the namespaces it made, and it removes them on exit.
//
//	sudo go run ./cmd/usnetd-lab          # run the checks, print, tear down
//	sudo go run ./cmd/usnetd-lab --keep   # ... and stay up until Ctrl-C
//	sudo go run ./cmd/usnetd-lab -e XDP_MODE=generic -e LOG_LEVEL=debug
//
// The lab (internal/netlab, prefix "ulab"): a namespace LAB-host whose
// veth end (named LAB, so that usnetd's pin directory is the lab's own)
// has 198.18.X.1/24, and a namespace LAB-remote with the other end, eth0,
// at 198.18.X.2/24. Inside the host namespace run
//
//   - usnetd, claiming the veth, with DEBUG_PORTS=LAB:TCP:8081,
//     SOCKET_PATH and PCAP_LOG in a temporary directory and its metrics at
//     127.0.0.1:9464 (of the host namespace);
//   - an HTTP server on usnet, the userspace stack, on :8080, attached
//     through the control socket and sharing the veth's IP and MAC with
//     the kernel;
//   - two HTTP servers of the kernel on the same IP: :8081, opened with
//     DEBUG_PORTS, and :8082, which usnetd must keep closed.
//
// usnetd and the usnet server are this binary again (re-executed with
// USNETD_LAB_ROLE set, started from a thread inside the host namespace
// with netlab's NS.Start, so that usnetd sees the host's bpffs), which is
// why `go run` is enough: usnetd is the same code as cmd/usnetd
// (internal/usnetdcmd). The children get their own process group, so a
// Ctrl-C reaches the demo only, which stops them in order; should the
// demo be killed outright, they get SIGTERM (PR_SET_PDEATHSIG), usnetd
// gives the NIC back, and the next run sweeps the namespaces.
//
// From the remote namespace, the demo fetches :8080 (usnet must answer)
// and :8081 (the kernel must answer) with curl, or with Go's client where
// curl is missing, and connects to :8082, which must time out: no answer,
// not even a RST. Both kernel servers are first checked from inside the
// host namespace, so that silence means usnetd's firewall. It prints a
// table (step, expected, got, ok) and the counters of `usnetctl status
// --json` and /metrics, stops everything, checks that usnetd left no pins
// and removes the namespaces and files. Exit status 0 when every check
// passed; 1 and a line "usnetd-lab: FAILED: STEP: expected ..., got ..."
// when one failed (or the teardown did); 130 when interrupted before the
// checks were done; 2 for a usage error.
//
// The remote's eth0 has TX checksum offload switched off (ethtool -K eth0
// tx off): a veth hands frames on with the TCP checksum left for a NIC
// that does not exist (CHECKSUM_PARTIAL), and the userspace stack, which
// sees the raw frame through AF_XDP, drops such segments. A real wire
// always carries complete checksums.
package main
