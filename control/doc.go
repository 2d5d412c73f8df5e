// Package control is usnetd's control socket: the server (server.go), the
// control socket itself (socket.go), kernel-verified credentials and fd
// handover (creds.go) and the policy that decides who may claim what
// (policy.go). The messages and their byte-compatible codec are package
// control/wire (standard library only); the Go client is control/client.
//
// A client binds its own Unix datagram socket and sends JSON requests to
// the server's; every request that gets an answer gets one ("OK", "ER",
// "$" with a channel descriptor, or JSON). RequestUDS attaches a packet
// channel (backends/uds) to a NIC's pipeline, RequestSHM (an extension) a
// shared-memory one (backends/shm; its rings count against
// ServerConfig.SHMMemory, beyond which it is refused and the client falls
// back to RequestUDS); AddMatch registers rules for
// it in that NIC's table, as l4.Registered rules owned by the channel's
// port, and in the kernel side's copy (Interface.EndpointPorts: the eBPF
// firewall, which then keeps the kernel off those flows both ways) before
// it answers OK; the data path does the rest. AddMatch takes a local
// address only among the interface's addresses (Interface.Addrs, read
// under the server's lock at each request) and those granted
// (Interface.Granted, ENDPOINT_ADDRS); Refused counts the others. A
// channel's port gets its l4.PortPolicy when it attaches: whether the
// client may send from a privileged source port (uid 0 or
// CAP_NET_BIND_SERVICE).
//
// The kernel's sockets come from internal/sockdiag (sock_diag dumps with
// each socket's inode; for AddMatch only those on the rule's protocol and
// port, filtered by the kernel, and for a TCP connection's rule only the
// listeners on its port and the socket of exactly its address pair,
// sockdiag.TCPFlow: a dump of every connection costs milliseconds). A kernel socket that the requesting
// process holds itself (its inode among /proc/PID/fd) is its reservation,
// as the original's client library binds one before AddMatch, and does
// not refuse the rule (policy.go). A rule with the full 5-tuple is a
// connection's and ends with its flow (flows.go: the switch's
// l4.FlowWatch sees FIN, RST and activity; the janitor removes it), so
// that MaxRulesPerClient counts live connections.
//
// QueryUsedPorts answers at most MaxUsedPortsAnswer (1,000,000) bytes, the
// buffer of the original's client: the rules with a local port, as the
// original listed them, and the kernel's listening sockets; registered
// rules first when not everything fits. QueryPortsInUse (an extension)
// answers in a fixed size which ports of a protocol any rule or kernel
// socket holds: what usnet needs to pick a free port.
//
// It must never trust a client's word for who it is (credentials come from
// the kernel with every message), never let a client take traffic that
// another owner or the kernel holds (see policy.go for "overlap"), never
// leave a client waiting for an answer that is due, never wait for a
// client (answers are sent without blocking), never panic on a message,
// and never touch frames: it changes rules and attaches ports. What a
// client may hold is bounded per client, per user (uid) and in total
// (clients, channels, rules; the rules through l4.RuleQuota, enforced by
// the table where a rule is made), and every refusal is counted
// (Server.Refused).
package control
