// Package firewall holds usnetd's eBPF programs (C in bpf/, compiled with
// bpf2go, generated files committed) and their loader: the ingress
// classifier (an XDP program or a TCX ingress program), the TCX egress
// learner, the kernel-allow maps, and the kernel's socket inventory that
// expires learned entries. The rule table in Go is the one truth; the eBPF
// maps are its kernel-side copy for the kernel's rules.
//
// It is the kernel path of the AF_XDP backend (Options.Hook = HookXDP) and
// of the AF_PACKET backend (HookTC). It never decides where a userspace
// frame goes: the programs only tell "the kernel's" from "not the
// kernel's". With HookXDP the XDP program passes the kernel's frames and
// hands the rest, untouched, to the AF_XDP socket of the frame's RX queue.
// With HookTC the AF_PACKET sockets have seen every frame already (packet
// taps run before tc ingress), and the TCX ingress program lets the
// kernel's frames go on (TCX_NEXT) and drops the rest (TC_ACT_SHOT). It
// never lets the kernel see a frame that no kernel rule allows, apart from
// the link's housekeeping listed below, and never touches eBPF objects
// other than those under its own pin directory.
//
// # Verdicts of the classifier
//
// Both hooks run one decision (bpf/classify.h), so they cannot drift
// apart; the tests run one table of frames through both.
//
//   - NO_HOST_RINGS: nothing for the kernel.
//   - ARP, EAPOL, DHCP answers (UDP 67→68; DHCPv6 547→546), IPv6
//     neighbour discovery (ICMPv6 133–137) and MLD (130–132, 143): kernel.
//   - IPv4/IPv6 (after one 802.1Q/802.1ad tag, IPv4 options, up to six
//     IPv6 extension headers) whose (local = destination, remote = source)
//     tuple finds a kernel entry: kernel. The lookup is l4.Table's three
//     steps on the registered map (exact 5-tuple; local, proto, lport,
//     remote; local, proto, lport; for protocols without ports: local,
//     proto, remote; local, proto), plus the exact step on the learned map.
//     Ports count for TCP, UDP, DCCP, SCTP and UDP-Lite, as in l4.
//   - ICMP/ICMPv6 errors whose quoted packet (sent by us) is a kernel flow:
//     kernel.
//   - Later fragments (no ports): kernel if the first fragment of the same
//     datagram (source, destination, id, protocol) went to the kernel less
//     than 30 s before, else userspace, where the Go switch holds and
//     routes them (also those that arrive before their first fragment).
//   - Everything else, truncated and malformed frames included, is not
//     the kernel's. XDP: bpf_redirect_map into the XSKMAP at the RX queue;
//     with no socket there, XDP_DROP, never the kernel. TC: TC_ACT_SHOT.
//
// XDP sees the whole frame. The TC hook sees an skb, whose linear data may
// end before the headers do (an skb built from page fragments can keep
// just the Ethernet header there): then it pulls up to 512 bytes into the
// linear data (bpf_skb_pull_data, counted as tc_pulled) and decides again;
// headers past that count as a truncated frame. The TC hook sees frames
// after the kernel took out a VLAN tag into the skb (the decision then
// sees the inner EtherType, as XDP does after skipping the tag).
//
// Every frame counts in exactly one of the counters pass_kernel, to_xsk,
// dropped_no_xsk (XDP) or pass_kernel, tc_dropped (TC), and pass_kernel is
// split by reason (see CounterNames).
//
// # The kernel-allow maps
//
// Keys have l4.Key's layout: 16-byte addresses (IPv4 mapped), ports in
// host byte order, protocol, the Key* flags. Two maps, so that learned
// entries can never push out registered ones:
//
//   - kernel_rules (BPF_MAP_TYPE_HASH, 16384 by default): registered
//     entries, AllowKernel and Options.Allow (DEBUG_PORTS). Never evicted,
//     never expired; when full, AllowKernel fails with E2BIG.
//   - kernel_learned (BPF_MAP_TYPE_LRU_HASH, 65536 by default): what the
//     egress learner wrote. When full, the least recently used learned
//     flow makes room; XDP lookups keep live flows recent.
//
// The egress learner (TCX, egress of the same interface) takes each frame
// the kernel sends and writes its reverse tuple (local = source address
// and port, remote = destination) with BPF_NOEXIST, unless a registered
// entry already covers it (replies of a DEBUG_PORTS service teach nothing).
// For protocols without ports it learns (local, proto, remote), for ICMP
// and ICMPv6 only from echo requests. It skips later fragments, TCP RSTs,
// frames from 0.0.0.0 or :: and to multicast or broadcast groups. A
// learned entry's last_seen is refreshed by the kernel's traffic at most
// once a second.
//
// # Expiry
//
// ExpireLearned (meant to run every ExpireInterval, 90 s, as the original)
// removes learned entries idle for at least Options.MinIdle (30 s by
// default) whose socket is gone, as an Inventory (sock_diag dumps of TCP
// and UDP sockets, no /proc parsing) tells; portless entries go once idle.
// A removed entry whose flow is still alive is learned again by its next
// outgoing frame.
//
// # Namespaces, pins and restarts
//
// Attach works on the calling thread's network namespace and pins under
// /sys/fs/bpf/usnetd/INTERFACE/ of the caller's mount namespace, mounting
// a bpffs at /sys/fs/bpf where there is none (inside `ip netns exec`). A
// flock on that directory keeps a second live Firewall off the interface.
// A usnetd that dies without Close leaves its links pinned and the kernel
// firewalled; the next Attach swaps its programs into those links
// (link.Update: no moment unfiltered, no second program) and keeps the
// learned entries, so the kernel's connections survive. If the earlier
// instance used the other hook, Attach attaches its own hook first and
// then removes the earlier link (xdp_link or tcx_ingress_link): both
// filter for a moment, neither is missing. Close detaches everything and
// removes the directory: the kernel is unfiltered again. Release is the
// deliberate form of dying without Close: it closes the process's
// references and leaves the links attached and pinned for the next Attach
// (usnetd uses it for a failed start and for KEEP_FIREWALL). Where
// /sys/fs/bpf is no bpffs and the process may not mount one (no
// CAP_SYS_ADMIN), Attach fails with ErrNotBPFFS saying how to mount it.
//
// The programs need Linux ≥ 6.6 (TCX) and a little-endian CPU (the objects
// are built for bpfel).
//
// # The kernel's ports, for the control plane
//
// ProcSockets (sockinv.go) lists the kernel's TCP, UDP and UDP-Lite sockets
// of the calling thread's network namespace from /proc/thread-self/net, so
// that the control plane never gives a port the kernel uses to an endpoint.
// It only reads /proc; it never touches a socket, and it never panics on
// what it reads (FuzzParseProcNet).
package firewall
