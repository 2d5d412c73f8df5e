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
// the link's housekeeping listed below, nor one that an endpoint's rule
// claims, and never touches eBPF objects other than those under its own
// pin directory.
//
// # Verdicts of the classifier
//
// Both hooks run one decision (bpf/classify.h), so they cannot drift
// apart; the tests run one table of frames through both. That decision is
// l4's (Parse, then Switch.Decide for a frame from the NIC) reduced to "the
// kernel's or not": differential_test.go runs a corpus and FuzzDifferential
// through the XDP program and through l4 with the same rules and requires
// the same verdict (the two divergences it allows are named there).
//
//   - NO_HOST_RINGS: nothing for the kernel.
//   - ARP, EAPOL and IPv6 neighbour discovery (ICMPv6 133–137): kernel.
//   - Malformed as l4.Parse sees it (headers cut short, IP length fields
//     past the frame, more than eight IPv6 extension headers, IPv6 with
//     IPv4-mapped addresses, an 802.1ad tag or an unknown EtherType), or to
//     a loopback address: not the kernel's.
//   - IPv4/IPv6 (after one 802.1Q tag, IPv4 options, up to eight IPv6
//     extension headers): an ICMP/ICMPv6 error goes the way of the flow it
//     quotes (a packet we sent), if that is anyone's; otherwise the
//     (local = destination, remote = source) tuple is looked up with
//     l4.Table's three steps (exact 5-tuple; local, proto, lport, remote;
//     local, proto, lport; for protocols without ports: local, proto,
//     remote; local, proto) over the endpoints' rules, the registered
//     kernel entries and, at the exact step, the learned ones. The first
//     step that finds an entry decides: a kernel entry is the kernel's, an
//     endpoint's rule is not. Ports count for TCP, UDP, DCCP, SCTP and
//     UDP-Lite, as in l4.
//   - No entry at all: DHCP answers for the NIC's MAC (UDP 67→68 to the
//     NIC's MAC or a group address, with the NIC's MAC as chaddr where the
//     packet holds one; the loader writes the MAC into nic_mac at Attach
//     and Reattach), DHCPv6 answers (547→546) and MLD (130–132, 143) are
//     the kernel's, the rest is not: a DHCP answer for an endpoint's MAC
//     goes to userspace.
//   - Later fragments (no ports) take their first fragment's verdict
//     (source, destination, id and the protocol the fragment header names)
//     if it came less than 30 s before. One that comes first goes to the
//     kernel when no endpoint has a rule on its (destination, protocol)
//     (pass_fragment_early: the kernel reassembles nothing without a first
//     fragment the classifier passed), else to userspace, where the Go
//     switch holds it for its first fragment.
//   - Not the kernel's: XDP: bpf_redirect_map into the XSKMAP at the RX
//     queue; with no socket there, XDP_DROP, never the kernel. TC:
//     TC_ACT_SHOT.
//
// The decision reads the frame with bpf_xdp_load_bytes or
// bpf_skb_load_bytes at offsets: the TC hook's skb may keep its headers
// outside its linear data, a jumbo frame may come to XDP in several
// buffers, and offsets keep the verifier's states few. The XDP program is
// multi-buffer aware (SEC("xdp.frags")); with Options.MultiBuffer (a jumbo
// MTU) it is loaded with BPF_F_XDP_HAS_FRAGS, since a veth refuses any
// other above an MTU of about 3,500 bytes; without, the flag is cleared,
// because in generic mode it makes the kernel copy every frame. The TC
// hook sees frames after the kernel took out a VLAN tag into the skb (the
// decision then sees the inner EtherType, as XDP does after skipping the
// tag).
//
// Every frame counts in exactly one of the counters pass_kernel, to_xsk,
// dropped_no_xsk (XDP) or pass_kernel, tc_dropped (TC), and pass_kernel is
// split by reason (see CounterNames).
//
// # The socket filter of the AF_PACKET backend
//
// Packet taps run before tc ingress, so without help the AF_PACKET
// backend would copy every frame of the kernel's own connections into
// its rings, and the switch would send each one to the kernel a second
// time, through the host path. Firewall.SocketFilter loads
// bpf/sockfilter.c, a BPF_PROG_TYPE_SOCKET_FILTER program over this
// firewall's kernel_rules and kernel_learned maps (so it follows every
// change at once), for SO_ATTACH_BPF on the backend's sockets. It keeps
// out an unfragmented TCP, UDP, DCCP, SCTP or UDP-Lite packet, or a
// non-error ICMP/ICMPv6 one, whose tuple a kernel entry owns (the same
// lookup as the classifier), and lets everything else through: ARP,
// EAPOL, DHCP answers, neighbour discovery and ICMP errors, which the
// switch also gives to endpoints, fragments, IPv6 with extension headers,
// anything it cannot read. Headers are copied with
// bpf_skb_load_bytes_relative (a socket filter has no direct packet
// access). Frames that the host path put into the NIC's ingress (marked
// HostMark) are kept out too: the switch has switched them already. Its
// counters say how many frames it kept out and let through.
//
// # The host path
//
// AttachHostPort makes a TAP that usnetd owns the kernel's switch port
// beside the NIC (AF_XDP and AF_PACKET backends): a TCX ingress program
// on the TAP (usnetd_host_ingress) judges what usnetd writes there with
// the same classifier and redirects the kernel's frames into the NIC's
// ingress (bpf_redirect with BPF_F_INGRESS, skb->mark = HostMark), as if
// the NIC had received them, so the kernel's firewall holds for them; the
// rest is dropped. The egress program, after its own checks, redirects the
// kernel's frames to a MAC in endpoint_macs (ADD_MACS) to the TAP and
// clones its ARP, NDP and EAPOL frames to group addresses there
// (bpf_clone_redirect). Counters: host_in, host_in_dropped, host_out,
// host_clone.
//
// # The kernel-allow maps
//
// Keys have l4.Key's layout: 16-byte addresses (IPv4 mapped), ports in
// host byte order, protocol, the Key* flags. Two maps for the kernel, so
// that learned entries can never push out registered ones, and one for
// the endpoints:
//
//   - kernel_rules (BPF_MAP_TYPE_HASH, 16384 by default): registered
//     entries, AllowKernel and Options.Allow (DEBUG_PORTS). Never evicted,
//     never expired; when full, AllowKernel fails with E2BIG.
//   - kernel_learned (BPF_MAP_TYPE_LRU_HASH, 65536 by default): what the
//     egress learner wrote. When full, the least recently used learned
//     flow makes room; XDP lookups keep live flows recent.
//   - endpoint_rules (BPF_MAP_TYPE_HASH, 65536 by default): the rules the
//     endpoints registered, AddEndpointPort and RemoveEndpointPort (the
//     control plane calls them with AddMatch and the rule's end; a full
//     map refuses the rule; adding one removes the learned flows it
//     covers, whose sockets are gone). endpoint_ports counts them per (local
//     address, protocol, local port), so that a lookup asks endpoint_rules
//     only where an endpoint has a rule on the local port, and per (local
//     address, protocol), for the early later fragments.
//
// The egress program (TCX, egress of the same interface; attached with
// NO_HOST_RINGS too) first looks up each frame the kernel sends the way its
// reply would be looked up: when that ends in an endpoint's rule (a kernel
// socket bound to an endpoint's port), the frame is dropped and counted as
// egress_endpoint_dropped, and nothing is learned. ICMP errors, later
// fragments and frames from 0.0.0.0 or :: are not judged, as in l4's
// learning. Otherwise it learns: it writes the reverse tuple (local =
// source address and port, remote = destination) with BPF_NOEXIST, unless
// a registered entry already covers it (replies of a DEBUG_PORTS service
// teach nothing).
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
// default) whose socket is gone, as an Inventory (internal/sockdiag's dumps
// of TCP and UDP sockets, no /proc parsing) tells; portless entries go once idle.
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
package firewall
