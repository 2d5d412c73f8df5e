// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// usnetd's kernel firewall: an ingress classifier that lets the kernel see
// only its own traffic, and a tc (TCX) egress learner that opens the
// reverse tuple of each connection the kernel starts. The classifier's
// decision (classify.h) runs on one of two hooks: an XDP program that sends
// everything else to the AF_XDP socket of the frame's RX queue (AF_XDP
// backend), or a TCX ingress program that drops everything else (AF_PACKET
// backend, whose sockets saw the frame before tc ingress).
//
// Built by bpf2go (see ../gen.go); the generated object is committed.
//
// Keys are family-agnostic, as l4.Key in Go: 16-byte addresses (IPv4 in the
// IPv4-mapped form ::ffff:a.b.c.d), ports in host byte order, the protocol
// and the flags saying which optional fields are set.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef TCX_NEXT
#define TCX_NEXT -1 /* same value as TC_ACT_UNSPEC; missing in Debian's 6.1 headers */
#endif

#include "fwkeys.h"

/* The IPv6 header walk's steps: up to eight extension headers and then the
 * upper-layer header, as l4's parser (maxExtHeaders). */
#define MAX_EXT_HDRS 9

/* Learned entries get their last_seen refreshed at most this often. */
#define REFRESH_NS 1000000000ULL

/* A first fragment's kernel verdict is followed for this long. */
#define FRAG_TIMEOUT_NS 30000000000ULL

/* A fragmented datagram: the fields the kernel reassembles by. proto is
 * the protocol the fragment header names (IPv4: the protocol field), the
 * same in every fragment of the datagram. */
struct frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;
	__u8 proto;
	__u8 pad[3];
};

/* The verdict of a datagram's first fragment, for its later fragments. */
struct frag_verdict {
	__u64 seen_ns; /* bpf_ktime_get_ns of the first fragment */
	__u32 kernel;  /* 1: the kernel's */
	__u32 pad;
};

/* The key of endpoint_ports: (local address, protocol, local port) of the
 * endpoints' rules (port 0 for protocols without ports), and with any = 1
 * (local address, protocol) whatever the port. */
struct ep_port_key {
	__u8 local[16];
	__u16 lport; /* host byte order */
	__u8 proto;
	__u8 any;
};

/* Counter indexes; the Go side names them (counterNames in firewall.go). */
enum fw_counter {
	/* XDP verdicts: every frame counts in exactly one of these three
	 * (the TC ingress verdicts are CNT_PASS_KERNEL and CNT_TC_DROPPED). */
	CNT_PASS_KERNEL = 0,
	CNT_TO_XSK,
	CNT_DROPPED_NO_XSK,
	/* Why a frame went to the kernel: these add up to CNT_PASS_KERNEL. */
	CNT_PASS_ALLOWED,
	CNT_PASS_ARP,
	CNT_PASS_EAPOL,
	CNT_PASS_DHCP,
	CNT_PASS_NDP,
	CNT_PASS_ICMP_ERROR,
	CNT_PASS_FRAGMENT,
	CNT_PASS_FRAGMENT_EARLY,
	/* Notes on frames that went to userspace (or were kept from the kernel). */
	CNT_PARSE_ERROR,
	CNT_FRAGMENT_TO_XSK,
	CNT_NO_HOST_RINGS,
	/* Egress learner. */
	CNT_LEARN_NEW,
	CNT_LEARN_REFRESH,
	CNT_LEARN_COVERED,
	CNT_LEARN_SKIPPED,
	CNT_LEARN_FAILED,
	/* TC ingress verdict (AF_PACKET backend): every frame counts in
	 * exactly one of CNT_PASS_KERNEL and this. */
	CNT_TC_DROPPED,
	/* Egress: frames the kernel sent from an endpoint's registered flow
	 * (a local port that an endpoint holds), dropped. */
	CNT_EGRESS_ENDPOINT,
	/* The host path (usnetd's TAP beside the NIC): frames an endpoint
	 * sent to the kernel, redirected into the NIC's ingress or dropped by
	 * the classifier; the kernel's frames to an endpoint's MAC redirected
	 * to the TAP, and its ARP, NDP and EAPOL to group addresses cloned to
	 * it. */
	CNT_HOST_IN,
	CNT_HOST_IN_DROPPED,
	CNT_HOST_OUT,
	CNT_HOST_CLONE,
	CNT_MAX,
};

/* The endpoints' registered rules (AddMatch), with l4.Key's shapes: the
 * control plane writes them before it answers OK and removes them with the
 * rule. A frame whose lookup ends in one of them is never the kernel's, and
 * the kernel's frames that such a rule would answer are dropped at egress.
 * A plain hash: never evicted; when full, the control plane refuses the
 * rule. Value unused (0). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fw_key);
	__type(value, __u32);
} endpoint_rules SEC(".maps");

/* How many endpoint rules each (local address, protocol, local port) and
 * each (local address, protocol) has, kept by the loader with
 * endpoint_rules: a lookup asks endpoint_rules only when an endpoint has a
 * rule on the tuple's local port (one probe for the kernel's flows instead
 * of three), and a later fragment that comes before its first fragment can
 * only be an endpoint's when its (destination, protocol) has a rule. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ep_port_key);
	__type(value, __u32);
} endpoint_ports SEC(".maps");

/* The verdicts of first fragments, so that their later fragments (which
 * carry no ports) follow them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct frag_key);
	__type(value, struct frag_verdict);
} frag_verdicts SEC(".maps");

/* AF_XDP sockets by RX queue id; max_entries is set at load. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* The kernel's own MAC (the NIC's), written by the loader at attach and
 * when the firewall moves onto a re-created NIC: a DHCP answer for another
 * MAC (an endpoint's, ADD_MACS) goes to userspace. set == 0: unknown, every
 * DHCP answer that no rule claims is the kernel's. */
struct nic_mac {
	__u8 mac[6];
	__u8 set;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nic_mac);
} nic_mac SEC(".maps");

/* The host path: usnetd's TAP (tap_ifindex, 0: none) beside the NIC
 * (nic_ifindex). Written by the loader when usnetd opens the TAP and
 * cleared when it closes it. */
struct host_port {
	__u32 tap_ifindex;
	__u32 nic_ifindex;
	__u32 macs; /* entries of endpoint_macs: 0 spares every frame the lookup */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct host_port);
} host_port SEC(".maps");

/* The endpoints' own MACs (ADD_MACS): the kernel's frames to them go to
 * the host path instead of the wire. Value unused (0). */
struct mac_key {
	__u8 mac[6];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct mac_key);
	__type(value, __u32);
} endpoint_macs SEC(".maps");

/* The mark (skb->mark) of the frames that the host path puts into the
 * NIC's ingress: the packet sockets on the NIC (the neighbour tap, the
 * AF_PACKET backend's) see them as arriving on the NIC, and leave them out
 * by this mark, since the switch has switched them already (a fragment or
 * an ARP frame read back would go round again). Keep it in sync with
 * HostMark in Go. */
#define HOST_MARK 0x75736e64 /* "usnd" */

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* NO_HOST_RINGS=true: the kernel gets nothing from the NIC. Set at load. */
volatile const __u8 cfg_no_host_rings = 0;

/* The number of counters; also puts enum fw_counter into the BTF, for
 * bpf2go -type and for the loader's check that it names them all. */
volatile const enum fw_counter fw_counter_max = CNT_MAX;

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += 1;
}

static __always_inline void put_v4(__u8 *dst, __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

#define OWNER_NONE 0
#define OWNER_KERNEL 1
#define OWNER_ENDPOINT 2

/* One step of the lookup: an endpoint's rule (when ep: an endpoint has a
 * rule on the local port), a learned kernel flow (only when learned is
 * given: learned entries have the exact step's shape), a registered kernel
 * rule. A key is in at most one of them (the Go table holds each key
 * once). *learned is set when the learned map has it. */
static __always_inline int lookup_step(const struct fw_key *k, struct fw_value **learned, int ep)
{
	if (ep && bpf_map_lookup_elem(&endpoint_rules, k))
		return OWNER_ENDPOINT;
	if (learned) {
		struct fw_value *v = bpf_map_lookup_elem(&kernel_learned, k);
		if (v) {
			*learned = v;
			return OWNER_KERNEL;
		}
	}
	if (bpf_map_lookup_elem(&kernel_rules, k))
		return OWNER_KERNEL;
	return OWNER_NONE;
}

/* l4.Table.Lookup's three steps over the endpoints' and the kernel's
 * entries: the exact 5-tuple, then (local, proto, lport, remote), then
 * (local, proto, lport); for protocols without ports (local, proto,
 * remote), then (local, proto). The first step that finds an entry decides
 * whose the tuple is (OWNER_*), as in Go. full holds the whole tuple;
 * flags and the fields a step drops are set here on a copy. learned, if
 * not NULL, receives the learned entry that decided. */
static __always_inline int lookup_owner(const struct fw_key *full, struct fw_value **learned)
{
	struct fw_key k = *full;
	struct fw_value *dummy = NULL;
	struct fw_value **lp = learned ? learned : &dummy;
	int o;
	int ported = has_ports(k.proto);

	if (!ported) {
		k.lport = 0;
		k.rport = 0;
	}
	struct ep_port_key pk = {};
	__builtin_memcpy(pk.local, k.local, 16);
	pk.lport = k.lport;
	pk.proto = k.proto;
	int ep = bpf_map_lookup_elem(&endpoint_ports, &pk) != NULL;

	if (ported) {
		k.flags = KEY_LPORT | KEY_REMOTE | KEY_RPORT;
		o = lookup_step(&k, lp, ep);
		if (o)
			return o;
		k.rport = 0;
		k.flags = KEY_LPORT | KEY_REMOTE;
		o = lookup_step(&k, NULL, ep);
		if (o)
			return o;
		__builtin_memset(k.remote, 0, 16);
		k.flags = KEY_LPORT;
		return lookup_step(&k, NULL, ep);
	}
	k.flags = KEY_REMOTE;
	o = lookup_step(&k, lp, ep);
	if (o)
		return o;
	__builtin_memset(k.remote, 0, 16);
	k.flags = 0;
	return lookup_step(&k, NULL, ep);
}

/* ---------------------------------------------------------------------- */
/* The decision, shared by both ingress hooks                              */

#define CLS_CTX struct xdp_md
#define CLS_LOAD bpf_xdp_load_bytes
#define CLS_NAME(f) f##_xdp
#include "classify.h"
#undef CLS_CTX
#undef CLS_LOAD
#undef CLS_NAME

#define CLS_CTX struct __sk_buff
#define CLS_LOAD bpf_skb_load_bytes
#define CLS_NAME(f) f##_tc
#include "classify.h"
#undef CLS_CTX
#undef CLS_LOAD
#undef CLS_NAME

/* ---------------------------------------------------------------------- */
/* XDP classifier (AF_XDP backend)                                         */

static __always_inline int pass(__u32 why)
{
	count(CNT_PASS_KERNEL);
	count(why);
	return XDP_PASS;
}

static __always_inline int to_xsk(struct xdp_md *ctx)
{
	int ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
	count(ret == XDP_REDIRECT ? CNT_TO_XSK : CNT_DROPPED_NO_XSK);
	return ret;
}

/* Multi-buffer aware: a jumbo frame may come in several buffers. The
 * decision reads the frame with bpf_xdp_load_bytes at offsets, which reads
 * across buffers, and bpf_xdp_get_buff_len gives the whole length, so a
 * jumbo frame is judged whole. Compiled as xdp.frags; the loader keeps
 * BPF_F_XDP_HAS_FRAGS only where the MTU needs it (a veth refuses a
 * program without it above an MTU of about 3,500 bytes), since in generic
 * mode the flag makes the kernel copy every frame. */
SEC("xdp.frags")
int usnetd_xdp(struct xdp_md *ctx)
{
	__u32 code = classify_xdp(ctx, bpf_xdp_get_buff_len(ctx));
	if (cls_kernel(code))
		return pass(code);
	if (code < CNT_MAX)
		count(code);
	return to_xsk(ctx);
}

/* ---------------------------------------------------------------------- */
/* TCX ingress filter (AF_PACKET backend)                                  */

/* AF_PACKET taps run before tc ingress: usnetd has seen the frame already.
 * This program only decides whether the kernel sees it too. The skb may
 * keep its headers outside the linear data: the decision reads them with
 * bpf_skb_load_bytes, wherever they are. */
SEC("tcx/ingress")
int usnetd_tc_ingress(struct __sk_buff *skb)
{
	__u32 code = classify_tc(skb, skb->len);
	if (cls_kernel(code)) {
		count(CNT_PASS_KERNEL);
		count(code);
		return TCX_NEXT;
	}
	if (code < CNT_MAX)
		count(code);
	count(CNT_TC_DROPPED);
	return TC_ACT_SHOT;
}

/* ---------------------------------------------------------------------- */
/* TCX egress learner                                                      */

/* What egress_key found besides the key. */
struct out_info {
	__u8 learn; /* the frame may open a way back */
};

/* Reads the headers of an outgoing frame with bpf_skb_load_bytes (the skb
 * may be non-linear) and fills the key of its way back: local = source,
 * remote = destination, as l4's learn. Returns 0 when the frame has no such
 * key to judge (not IP, a later fragment, from 0.0.0.0 or ::, an ICMP
 * error: an error is about a flow, it does not open one); o->learn says
 * whether the learner may write the key (not to multicast or broadcast,
 * not a TCP RST, for ICMP only echo requests). */
static __always_inline int egress_key(struct __sk_buff *skb, struct fw_key *k, struct out_info *o)
{
	__u32 off = ETH_HLEN;
	__be16 et;
	o->learn = 1;
	if (bpf_skb_load_bytes(skb, 12, &et, 2) < 0)
		return 0;
	__u16 ethtype = bpf_ntohs(et);
	if (ethtype == ETH_P_8021Q_ || ethtype == ETH_P_8021AD_) {
		if (bpf_skb_load_bytes(skb, 16, &et, 2) < 0)
			return 0;
		ethtype = bpf_ntohs(et);
		off += 4;
	}

	__u8 proto;
	if (ethtype == ETH_P_IP_) {
		__u8 ip[20];
		if (bpf_skb_load_bytes(skb, off, ip, 20) < 0)
			return 0;
		if ((ip[0] >> 4) != 4 || (ip[0] & 0x0f) < 5)
			return 0;
		if ((((__u16)ip[6] << 8) | ip[7]) & 0x1fff)
			return 0; /* later fragment: no ports; the first one was judged */
		__be32 a;
		__builtin_memcpy(&a, ip + 12, 4);
		if (a == 0)
			return 0; /* 0.0.0.0: a DHCP request */
		put_v4(k->local, a);
		__builtin_memcpy(&a, ip + 16, 4);
		if (ip[16] >= 224)
			o->learn = 0; /* multicast, broadcast, class E: no reply comes from there */
		put_v4(k->remote, a);
		proto = ip[9];
		off += (ip[0] & 0x0f) * 4;
	} else if (ethtype == ETH_P_IPV6_) {
		__u8 ip[40];
		if (bpf_skb_load_bytes(skb, off, ip, 40) < 0)
			return 0;
		if ((ip[0] >> 4) != 6)
			return 0;
		if (ip[24] == 0xff)
			o->learn = 0; /* to a multicast group */
		__builtin_memcpy(k->local, ip + 8, 16);
		__builtin_memcpy(k->remote, ip + 24, 16);
		if (is_v4mapped(k->local) || is_v4mapped(k->remote))
			return 0;
		__u64 hi, lo;
		__builtin_memcpy(&hi, ip + 8, 8);
		__builtin_memcpy(&lo, ip + 16, 8);
		if (hi == 0 && lo == 0)
			return 0; /* from ::, duplicate address detection */
		proto = ip[6];
		off += 40;
		int done = 0;
#pragma clang loop unroll(disable)
		for (int i = 0; i < MAX_EXT_HDRS; i++) {
			__u8 h[4];
			switch (proto) {
			case 0:
			case 43:
			case 60:
			case 135:
			case 139:
			case 140:
				if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
					return 0;
				proto = h[0];
				off += ((__u32)h[1] + 1) * 8;
				break;
			case 51:
				if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
					return 0;
				proto = h[0];
				off += ((__u32)h[1] + 2) * 4;
				break;
			case 44:
				if (bpf_skb_load_bytes(skb, off, h, 4) < 0)
					return 0;
				if ((((__u16)h[2] << 8) | h[3]) & 0xfff8)
					return 0; /* later fragment */
				proto = h[0];
				off += 8;
				break;
			default:
				done = 1;
			}
			if (done)
				break;
		}
		if (!done)
			return 0;
	} else {
		return 0;
	}

	k->proto = proto;
	if (has_ports(proto)) {
		__u8 l4[14];
		__u32 n = proto == PROTO_TCP ? 14 : 4;
		if (n == 14) {
			if (bpf_skb_load_bytes(skb, off, l4, 14) < 0)
				return 0;
			if (l4[13] & 0x04)
				o->learn = 0; /* RST: the kernel is closing, not opening */
		} else if (bpf_skb_load_bytes(skb, off, l4, 4) < 0) {
			return 0;
		}
		k->lport = ((__u16)l4[0] << 8) | l4[1];
		k->rport = ((__u16)l4[2] << 8) | l4[3];
		k->flags = KEY_LPORT | KEY_REMOTE | KEY_RPORT;
		return 1;
	}
	if (proto == PROTO_ICMP || proto == PROTO_ICMPV6) {
		__u8 type;
		if (bpf_skb_load_bytes(skb, off, &type, 1) < 0)
			return 0;
		if ((proto == PROTO_ICMP && ethtype == ETH_P_IP_ &&
		     (type == 3 || type == 4 || type == 5 || type == 11 || type == 12)) ||
		    (proto == PROTO_ICMPV6 && ethtype == ETH_P_IPV6_ && type >= 1 && type <= 4))
			return 0; /* an error: judged by nobody, as in l4 */
		if (!((proto == PROTO_ICMP && ethtype == ETH_P_IP_ && type == 8) ||
		      (proto == PROTO_ICMPV6 && ethtype == ETH_P_IPV6_ && type == 128)))
			o->learn = 0; /* only echo requests open a way back */
	}
	k->flags = KEY_REMOTE;
	return 1;
}

/* Whether an outgoing frame is link business that the endpoints must see
 * too: ARP, EAPOL, or ICMPv6 neighbour discovery (types 133..137) right
 * after the IPv6 header. */
static __always_inline int link_business(struct __sk_buff *skb, __u16 ethtype)
{
	if (ethtype == ETH_P_ARP_ || ethtype == ETH_P_PAE_)
		return 1;
	if (ethtype != ETH_P_IPV6_)
		return 0;
	__u8 nh, type;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0 || nh != PROTO_ICMPV6)
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 40, &type, 1) < 0)
		return 0;
	return type >= 133 && type <= 137;
}

/* The kernel's side of the host path, after the egress checks: a frame to
 * an endpoint's MAC goes to usnetd's TAP instead of the wire; ARP, NDP and
 * EAPOL to a group address go to both. */
static __always_inline int host_out(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct host_port *hp = bpf_map_lookup_elem(&host_port, &zero);
	if (!hp || !hp->tap_ifindex)
		return TCX_NEXT;
	/* The Ethernet header, read in place (it is in the linear data at
	 * egress; a frame where it is not is left alone). */
	__u8 *eth = (__u8 *)(long)skb->data;
	if ((void *)(eth + 14) > (void *)(long)skb->data_end)
		return TCX_NEXT;
	if (eth[0] & 1) {
		if (link_business(skb, ((__u16)eth[12] << 8) | eth[13]) &&
		    bpf_clone_redirect(skb, hp->tap_ifindex, 0) == 0)
			count(CNT_HOST_CLONE);
		return TCX_NEXT;
	}
	if (!hp->macs)
		return TCX_NEXT;
	struct mac_key mk = {};
	__builtin_memcpy(mk.mac, eth, 6);
	if (!bpf_map_lookup_elem(&endpoint_macs, &mk))
		return TCX_NEXT;
	count(CNT_HOST_OUT);
	return bpf_redirect(hp->tap_ifindex, 0);
}

/* The endpoints' side of the host path: a TCX ingress program on usnetd's
 * TAP, which gets what usnetd writes there (frames the switch gave the
 * kernel). The classifier judges each as if it came from the wire, so the
 * kernel's firewall holds for them as for the NIC's; the kernel's go into
 * the NIC's ingress, as if received there, the rest are dropped. */
SEC("tcx/ingress")
int usnetd_host_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct host_port *hp = bpf_map_lookup_elem(&host_port, &zero);
	__u32 code = classify_tc(skb, skb->len);
	if (!hp || !hp->nic_ifindex || !cls_kernel(code)) {
		count(CNT_HOST_IN_DROPPED);
		return TC_ACT_SHOT;
	}
	skb->mark = HOST_MARK;
	count(CNT_HOST_IN);
	return bpf_redirect(hp->nic_ifindex, BPF_F_INGRESS);
}

/* The egress program: the kernel may not send from an endpoint's flow (its
 * replies would go to the endpoint, or, once learned, take the endpoint's
 * traffic: a kernel socket bound to an endpoint's port), so such frames
 * are dropped and counted; for the others it learns the way back, and
 * then the host path takes the endpoints' frames (host_out). */
static __always_inline int learn(struct __sk_buff *skb);

SEC("tcx/egress")
int usnetd_learn(struct __sk_buff *skb)
{
	int v = learn(skb);
	if (v != TCX_NEXT)
		return v;
	return host_out(skb);
}

static __always_inline int learn(struct __sk_buff *skb)
{
	struct fw_key k = {};
	struct out_info o = {};
	if (!egress_key(skb, &k, &o)) {
		count(CNT_LEARN_SKIPPED);
		return TCX_NEXT;
	}
	struct fw_value *v = NULL;
	int owner = lookup_owner(&k, &v);
	if (owner == OWNER_ENDPOINT) {
		count(CNT_EGRESS_ENDPOINT);
		return TC_ACT_SHOT;
	}
	if (!o.learn) {
		count(CNT_LEARN_SKIPPED);
		return TCX_NEXT;
	}
	__u64 now = bpf_ktime_get_ns();
	if (v) {
		if (now - v->last_seen_ns > REFRESH_NS) {
			v->last_seen_ns = now;
			count(CNT_LEARN_REFRESH);
		}
		return TCX_NEXT;
	}
	if (owner == OWNER_KERNEL) {
		/* A registered rule covers the way back already (a reply
		 * from a DEBUG_PORTS service, say). */
		count(CNT_LEARN_COVERED);
		return TCX_NEXT;
	}
	struct fw_value nv = {.last_seen_ns = now, .flags = FW_LEARNED};
	long err = bpf_map_update_elem(&kernel_learned, &k, &nv, BPF_NOEXIST);
	if (err == 0)
		count(CNT_LEARN_NEW);
	else if (err != -17 /* EEXIST: another CPU was first */)
		count(CNT_LEARN_FAILED);
	return TCX_NEXT;
}

char __license[] SEC("license") = "Dual MIT/GPL";
