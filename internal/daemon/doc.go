// Package daemon is usnetd put together: for each configured NIC it claims
// the interface through a backend, builds the switch domain and its
// pipeline, installs the kernel's rules, and runs the control socket, the
// metrics server and the housekeeping until it is told to stop; then it
// gives everything back. With an eBPF firewall (afxdp, afpacket) the
// control socket keeps the endpoints' rules in it (control.Interface's
// EndpointPorts), and /metrics shows its counters.
//
// It must never leave anything behind on a clean stop (XDP programs, TCX
// links, pins, socket files, routes), and never start half-way: a NIC that
// cannot be claimed stops the start with an error naming it, after undoing
// what was done.
//
// Frames are sized by each NIC's MTU, read when it is claimed (mtu.go):
// the pipeline's buffers, the backend and the endpoints' channels carry
// frames of that size, and a backend that cannot makes the claim fail
// with one line naming the MTU and the limit (ErrMTU). MTUChanged is the
// entry point for link following.
package daemon
