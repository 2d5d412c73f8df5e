// Package sockdiag is usnetd's inventory of the kernel's own sockets: the
// TCP, UDP and UDP-Lite sockets (IPv4 and IPv6) of a network namespace,
// each with its local and remote address, state, owner (uid) and socket
// inode, read with sock_diag (a NETLINK_SOCK_DIAG socket, inet_diag dumps)
// and never from /proc/net text.
//
// The control server uses it to refuse an endpoint a rule that would take
// a kernel socket's traffic (and, with the inode, to accept one whose
// kernel socket the requesting process holds itself: a reservation); the
// daemon's housekeeping uses it to expire the learned kernel flows whose
// socket is gone (firewall.Inventory).
//
// A dump walks the kernel's whole table of a protocol whatever its filter,
// and the TCP connection table is large (milliseconds per dump on a host
// with plenty of memory), so the check of a rule for one TCP connection
// uses TCPFlow instead: a dump of the listeners only (the small listening
// table) and a lookup of the one address pair, about a hundredth of the
// cost (BenchmarkTCPFlow).
//
// A Conn is bound to the network namespace of the thread that opened it
// (netlink sockets keep the namespace they were made in); its methods may
// then be called from any goroutine. The kernel's answer
// is parsed by ParseDump, which takes arbitrary bytes without panicking
// (FuzzParseDump).
//
// The package imports only the standard library and x/sys/unix.
package sockdiag
