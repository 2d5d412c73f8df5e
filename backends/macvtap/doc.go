// Package macvtap is the macvtap backend, the original usnetd's fallback:
// a passthru macvtap claims the NIC, and the kernel gets a TAP of its own
// in the NIC's place. Both are switch ports: the NIC's (kind PortNIC) reads
// and writes the macvtap, the kernel's (kind PortKernel) the TAP. Every
// frame between the NIC and the kernel crosses the switch in userspace,
// where the kernel is switched like an endpoint: its frames teach the
// switch its connections (learned rules owned by the TAP's port), and it
// gets only what its rules give it (DEBUG_PORTS, learned); a SYN to a port
// it was not given is dropped by the switch, so the kernel never even
// answers with a RST. The package never decides where a frame goes.
//
// # What Open does to the host
//
//   - "<nic>pass": a macvtap in passthru mode on the NIC (the NIC goes
//     promiscuous; the macvtap inherits its MAC). Once it is up, every
//     frame the NIC receives goes to the macvtap's queues, and the kernel's
//     stack on the NIC sees none. Frames written to a queue go out of the
//     NIC.
//   - "<nic>usnetd": a TAP with the NIC's MAC, MTU and addresses (IPv4 and
//     IPv6, link-local ones included, without DAD and without lifetimes;
//     the TAP makes no IPv6 address of its own). The NIC keeps its
//     addresses, so that its local routes and the addresses other programs
//     read stay as they are.
//   - The routes of the main table that use the NIC (the network routes,
//     the default routes, static and multipath routes, IPv4 and IPv6) move
//     to the TAP: added there first, then deleted from the NIC, so that a
//     route is never on neither.
//
// Names longer than 15 bytes are shortened deterministically (Names).
// Close does the reverse: the recorded routes are added back to the NIC,
// then the TAP (with its copies) and the macvtap are deleted; the NIC
// leaves promiscuous mode with the macvtap. The tests compare every route
// of the main table and every link's addresses, flags and MAC before the
// claim and after Close.
//
// # Crashes
//
// The TAP is persistent (TUNSETPERSIST): a process that dies without Close
// leaves it with the routes, and leaves the macvtap, whose queues, with
// nobody reading them, drop every frame: the kernel stays cut off from the
// NIC (fail closed, as the pinned XDP program of the afxdp backend keeps
// it firewalled). The next Open finds the two links by name, checks that
// they are what it makes (a TAP; a passthru macvtap on this NIC: a link
// that merely has the name is refused with ErrNameTaken and left alone),
// adds the TAP's routes back to the NIC, deletes both, and sets up afresh.
//
// # The character device
//
// A macvtap's queues are opened through its character device, which the
// kernel names "tap" + the macvtap's ifindex, with a device number that has
// nothing to do with the ifindex (the minor comes from an allocator). Found
// on these machines (Linux 6.18, /dev is a devtmpfs, no udev):
//
//   - devtmpfs makes /dev/tapN by itself, also for a macvtap in another
//     network namespace; without devtmpfs or udev, nothing makes it.
//   - ifindexes are per namespace: two macvtaps in two namespaces with the
//     same ifindex get the same name, and /dev/tapN is the first one's
//     (the second gets no node). Opening /dev/tapN by name alone can open
//     another namespace's macvtap: TestCharDeviceOfAnotherNamespace builds
//     exactly that.
//   - The device number is in /sys/class/net/NAME/macvtap/tapN/dev, but
//     sysfs shows the namespace of whoever mounted it: a process started
//     into a namespace with setns (the end-to-end tests, netlab's Start)
//     sees the root namespace's links there.
//
// So openCharDev reads the number from a sysfs that it mounts for the
// purpose, on a throwaway thread in the NIC's network namespace and in a
// private mount namespace (mounts there are slaves: nothing propagates to
// the host); opens /dev/tapN if that node has the number; and otherwise
// makes a node in a tmpfs only that thread sees and opens that. The thread
// ends with its mounts; an open fd keeps working. Where the process may not
// mount, the process's own /sys and /dev are used if they show the NIC's
// namespace. Every queue is checked with TUNGETIFF to belong to the
// macvtap. CharDevice says which way it went.
//
// # Queues, reads and writes
//
// Options.Queues opens that many queues of the macvtap (one fd each) and
// of the TAP (IFF_MULTI_QUEUE), each read by its own RX worker. The kernel
// spreads frames over the queues by flow hash, so one flow stays on one
// queue and in order. Send writes every frame to the first queue (the
// pipeline has one TX goroutine per port). The fds are non-blocking and
// carry neither a packet-information nor a virtio-net header (a macvtap
// queue starts with IFF_VNET_HDR, which is switched off), so one read is
// one whole frame and the kernel resolves checksum offload and segments
// GSO frames before handing them over. That makes one system call per
// frame each way, and MTU-sized TCP segments: the cost of this backend.
// DefaultQueues is what BenchmarkKernelTCP measured to be better.
//
// # Limits
//
//   - The kernel's DHCP client on the NIC cannot renew while the claim
//     lasts (its answers arrive through the macvtap and nobody marked the
//     NIC for them): configure the NIC before usnetd starts, as the
//     original said, or run the DHCP client on the TAP, whose requests
//     mark it for the answers (not tested here).
//   - Routes are moved with what netlink.Route carries: an IPv6 route's
//     router preference and expiry (routes learned from router
//     advertisements) come back as a plain route of preference medium.
//     An IPv6 prefix route the kernel made for an address comes back as an
//     ordinary route of protocol kernel: if the address is deleted later,
//     the route stays.
//   - Routes in other tables than main and policy rules are not touched.
//
// # Namespaces and lifetime
//
// Open works in the network namespace of the calling OS thread (it locks
// the goroutine to the thread while it runs) and keeps a netlink socket
// there, so Close changes that namespace whichever goroutine calls it.
// The ports may be used from any goroutine. Close is idempotent.
package macvtap
