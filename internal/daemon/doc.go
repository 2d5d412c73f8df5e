// Package daemon is usnetd put together: for each configured NIC it claims
// the interface through a backend, builds the switch domain and its
// pipeline, installs the kernel's rules, and runs the control socket, the
// metrics server and the housekeeping until it is told to stop; then it
// gives everything back. With an eBPF firewall (afxdp, afpacket) the
// control socket keeps the endpoints' rules in it (control.Interface's
// EndpointPorts), and /metrics shows its counters.
//
// Fail closed: once a NIC is claimed, the kernel's traffic on it stays
// filtered until a clean stop. A start that fails after claiming a NIC
// (the metrics address or the control socket taken, another NIC that
// cannot be claimed) releases the backends instead of closing them: the
// firewall stays attached and pinned (afxdp, afpacket), or the macvtap and
// the TAP stay and cut the kernel off (macvtap), and the next start takes
// them over. A clean stop (Run's context done) gives everything back, and
// leaves nothing behind (XDP programs, TCX links, pins, socket files,
// routes), unless KEEP_FIREWALL asks to keep the firewall. A start never
// serves half-way: a NIC that cannot be claimed stops it with an error
// naming the NIC.
//
// Following the host (follow.go): a claimed NIC that is deleted is let go
// while its switch domain and endpoints stay; a NIC of its name that
// appears is claimed again; the DEBUG_PORTS rules follow the NIC's
// addresses (applyAddrs, the one place where they change), and so do the
// addresses endpoints may use (l4.Switch.SetLocal). While a NIC is gone
// the daemon is not healthy (no watchdog keep-alives) and its status line
// says so.
//
// Static pipes (pipes.go): each STATIC_PIPES entry is a uds.Listen socket
// in PIPE_DIR, an endpoint port of its interface's pipeline from the start
// (after the control socket is bound, before it is served) to the stop,
// owning the entry's sticky rules in the table and in the firewall's
// endpoint map; they follow the addresses with the DEBUG_PORTS rules.
//
// Frames are sized by each NIC's MTU, read when it is claimed (mtu.go):
// the pipeline's buffers, the backend and the endpoints' channels carry
// frames of that size, and a backend that cannot makes the claim fail
// with one line naming the MTU and the limit (ErrMTU). The follower hands
// a changed MTU to MTUChanged, which keeps an MTU the buffers carry and
// refuses a larger one in the log until a restart.
package daemon
