// Package usnet gives Go programs net.Listener, net.Conn and net.PacketConn
// on a gVisor userspace network stack attached through usnetd, sharing the
// NIC's IP with the kernel: what usnet_sockets is for Rust. A service
// written in Go then runs its TCP/IP in memory-safe code of its own
// process, and usnetd hands it exactly the frames of its ports.
//
// # Moving a net/http server over
//
// Change the line that makes the listener:
//
//	ln, err := net.Listen("tcp", ":8080")   // before
//	ln, err := usnet.Listen("tcp", ":8080") // after
//	...
//	http.Serve(ln, handler)
//
// and run the program with USNET_INTERFACE=eth0 (the NIC usnetd claims) and
// access to usnetd's control socket. Everything else comes from the
// environment or the NIC:
//
//	USNET_INTERFACE  the NIC (required)
//	USNET_SOCKET     usnetd's control socket (also SOCKET_PATH); default /run/usnetd.socket
//	USNET_MAC        "passthru" (default: the NIC's MAC) or a MAC
//	USNET_IP         "passthru" (default: the NIC's addresses and the kernel's
//	                 routes through it) or addresses like 198.18.0.2/24,2001:db8::2/64
//	USNET_GATEWAY    default routers for static addresses, comma separated
//	USNET_MTU        default: what usnetd says the channel carries (its
//	                 QueryStatus answer), else the NIC's MTU
//	USNET_LOOPBACK   true: also listen on 127.0.0.1 through the kernel
//
// A MAC of the stack's own must be in usnetd's ADD_MACS, and addresses of
// its own in ENDPOINT_ADDRS: usnetd drops an endpoint's frames from any
// other source MAC or address.
//
// or set the same in a Config and call its methods. Clients dial through
// the stack with usnet.Dial or, for net/http,
// http.Transport{DialContext: usnet.DialContext}.
//
// # One stack for the life of the program
//
// Open attaches a stack once and returns a Stack, a handle with Listen,
// ListenPacket, Dial, DialContext, DialTCP and DialUDP that all use the
// same gVisor stack and the same channel from usnetd until Stack.Close
// (which closes the sockets still open, tears the stack down and
// detaches). This is the API for a program that runs for long, and for
// one that dials one connection at a time:
//
//	st, err := usnet.Open(ctx, nil) // nil: the Config from the environment
//	...
//	defer st.Close()
//	ln, err := st.Listen("tcp", ":8080")
//	c := &http.Client{Transport: &http.Transport{DialContext: st.DialContext}}
//
// The package-level functions and a Config's methods are a thin layer
// over the same code: a Config keeps an implicit stack, made by its first
// socket and torn down with its last (see "How it works").
//
// # Socket options
//
// A TCP connection of the stack is a *TCPConn (what Accept, Dial and
// DialTCP return) with net.TCPConn's options where gVisor has them:
// SetNoDelay (no delay by default, as with net), SetKeepAlive,
// SetKeepAlivePeriod, SetKeepAliveConfig, SetReadBuffer, SetWriteBuffer,
// SetLinger, CloseRead and CloseWrite. A UDP socket is a *UDPConn with
// SetReadBuffer and SetWriteBuffer. (With Loopback, what comes through
// the kernel's loopback is a *net.TCPConn, and ListenPacket returns a
// conn that merges both.) A *TCPConn or *UDPConn that Dial made to a
// kernel service on the shared address (below) wraps the kernel's
// connection: its options are the kernel's.
//
// # The kernel's services on the shared address
//
// The stack shares its address with the kernel, and a usnet program runs
// on the same host as the kernel's services: Dial, DialContext, DialTCP
// and DialUDP to one of the stack's own addresses go
//
//   - into the stack, if it listens there (a Listen, or for UDP a
//     ListenPacket, on that address and port): the program talks to
//     itself, as with net;
//   - else to the kernel, if it has that address too (passthru, or a
//     static address of the kernel's): the dial is a kernel socket's, in
//     the calling thread's network namespace, and reaches the kernel's
//     service on that port; where nothing listens the kernel refuses it
//     (ECONNREFUSED). gVisor alone would answer such a dial itself and
//     refuse it, and the kernel's packets to its own address never reach
//     usnetd, so no channel could carry them.
//
// This is no way around usnetd's firewall: the firewall guards the NIC,
// and the kernel reaches its own address over its loopback, as for every
// local program. The kernel path gives the program what a net.Dial of its
// own, in the same process and with the same credentials, gives it, and
// nothing more. An address of the stack's own that the kernel does not
// have (an endpoint with an address of its own) stays in the stack, as
// before. A port that another usnet program on the shared address listens
// on is not reached this way (the kernel has no socket there and refuses
// it); loopback addresses follow Loopback (below).
//
// # How it works
//
// A Stack, and the implicit stack of a Config (made on its first Listen,
// ListenPacket or Dial and shared by all its sockets), is a gVisor stack
// (IPv4, IPv6, ARP, TCP, UDP, ICMP; neighbours resolved by ARP and NDP; routes from the
// kernel for passthru, else on-link prefixes and Config.Gateways) on an
// Ethernet link over the packet channel that usnetd hands over: a
// shared-memory channel where usnetd offers one (RequestSHM,
// backends/shm/ring: rings of frame slots read and written in batches, no
// system call while frames keep coming; the receiver polls the ring for
// Config.ChannelPoll, default DefaultChannelPoll, before it sleeps), else
// (or with Config.NoSHM) a Unix datagram channel (RequestUDS: one end of a
// socketpair(AF_UNIX, SOCK_DGRAM), one frame per datagram). The link
// endpoint is this package's own (link.go says why it is not gVisor's
// fdbased; link_shm.go has the shared-memory side). The control protocol
// is spoken by control/client (DialControl, the default of Config.Attach:
// one client and one set of errors, ErrRefused and ErrDetached being the
// client's), with control/wire's message types; usnet does not depend on
// usnetd's server, its firewall or their dependencies. Tests put a fake
// Attacher in Config.Attach.
//
// A listener registers its port with usnetd (AddMatch: the stack's
// address, the port, TCP or UDP; one rule per address) and removes it on
// Close. Outgoing connections register nothing: usnetd learns them from
// their first packet. Their local ports, and those of listeners on port 0,
// are chosen outside the kernel's ip_local_port_range and clear of every
// port usnetd reports in use (QueryPortsInUse), so they never clash with the
// kernel's own connections on the shared address.
//
// Closing the last socket of a Config, like closing a Stack, lets the
// stack's TCP connections finish their closing handshake (up to a
// second), tears the stack down (no goroutine and no descriptor stays)
// and detaches from usnetd (DeleteClient). The next Listen or Dial of the
// Config attaches anew, so a program that dials one connection at a time
// through a Config pays an attach per connection: such a program should
// Open a Stack instead.
//
// # Restarts of usnetd
//
// usnetd's channels and rules die with its process; a stack survives
// that. It notices usnetd's exit (a pidfd of the process that made the
// channel, from SO_PEERPIDFD, client.ChannelPeer; where that process
// cannot be watched, a send that finds the channel closed), then attaches
// again: at once, then after 50 ms, doubling up to 1 s between tries
// (a client.Watch, the loop of a client.Session), forever, until the last socket of the Config is closed (the
// supervisor goroutine of the stack stops then). Once usnetd answers, it
// requests a new channel, swaps it in under the running gVisor stack (the
// link endpoint's descriptor is replaced; addresses, listeners and TCP
// connections stay, and TCP retransmits what was lost meanwhile) and
// registers the rules of every open listener again. Config.Reattached is
// called after each reattach, with the rules usnetd refused to take back
// (a port another client took meanwhile), if any. While usnetd is away,
// Listen, ListenPacket and Dial fail with ErrDetached. A connection lives
// through the gap if the kernel does not answer its frames meanwhile: after
// a crash of usnetd the kernel stays filtered (frames are only lost), but
// after a SIGTERM usnetd gives the NIC back until its next start, and the
// kernel resets a connection whose frame arrives in that gap.
//
// Loopback addresses are never routed through the stack: with
// Config.Loopback (USNET_LOOPBACK=true) listeners also listen on the
// kernel's loopback interface on the same port, so that local programs
// reach the service, and dials to loopback addresses go through the
// kernel, as usnet_sockets did; without it such dials fail with
// ErrLoopback. Host names in Dial are resolved by Go's resolver, which
// asks through the kernel.
//
// # What it never does
//
//   - It never touches the kernel's ports: it registers with usnetd only
//     the ports it listens on, and picks its own ports outside the
//     kernel's ephemeral range and clear of usnetd's rules. (With
//     Loopback it opens kernel sockets on the loopback interface; a dial
//     to a kernel service on the shared address is a kernel socket too,
//     whose port the kernel picks, as for any of its connections.)
//   - It never leaves usnetd's client socket file behind: the file it
//     binds for usnetd's answers is removed when the stack detaches, also
//     when attaching fails. A process killed outright cannot remove its
//     own; the next client to attach removes those of processes that are
//     gone.
//   - It never keeps a stack, a goroutine or a descriptor after its Stack
//     is closed or the last socket of its Config, also while it waits for
//     usnetd to come back.
package usnet
