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

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_ARP_ 0x0806
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_PAE_ 0x888E /* EAPOL */

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_DCCP 33
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132
#define PROTO_UDPLITE 136

/* Key flags, as l4.KeyLocalPort, l4.KeyRemote, l4.KeyRemotePort. */
#define KEY_LPORT 1
#define KEY_REMOTE 2
#define KEY_RPORT 4

/* Value flags. */
#define FW_STICKY 1  /* registered and never expired (DEBUG_PORTS) */
#define FW_LEARNED 2 /* written by the egress learner */

/* How many IPv6 extension headers the parsers walk before giving up. */
#define MAX_EXT_HDRS 6

/* Learned entries get their last_seen refreshed at most this often. */
#define REFRESH_NS 1000000000ULL

/* A first fragment's kernel verdict is followed for this long. */
#define FRAG_TIMEOUT_NS 30000000000ULL

struct fw_key {
	__u8 local[16];
	__u8 remote[16];
	__u16 lport; /* host byte order */
	__u16 rport; /* host byte order */
	__u8 proto;
	__u8 flags; /* KEY_* */
	__u8 pad[2];
};

struct fw_value {
	__u64 last_seen_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of creation or last refresh */
	__u32 flags;        /* FW_* */
	__u32 pad;
};

/* A fragmented datagram: the fields the kernel reassembles by. */
struct frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;
	__u8 proto;
	__u8 pad[3];
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
	/* TC ingress: frames whose headers had to be pulled into the linear
	 * data first. */
	CNT_TC_PULLED,
	CNT_MAX,
};

/* Registered kernel rules: DEBUG_PORTS and whatever the control plane opens
 * for the kernel. A plain hash: never evicted; a full map makes AllowKernel
 * fail, loudly. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct fw_key);
	__type(value, struct fw_value);
} kernel_rules SEC(".maps");

/* Learned kernel flows (exact 5-tuples, and (local, proto, remote) for
 * protocols without ports). An LRU hash of its own, so that a flood of
 * learned flows can only evict other learned flows (the least recently
 * used), never a registered rule. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fw_key);
	__type(value, struct fw_value);
} kernel_learned SEC(".maps");

/* First fragments that went to the kernel, so that their later fragments
 * (which carry no ports) follow them. Value: bpf_ktime_get_ns. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct frag_key);
	__type(value, __u64);
} frag_kernel SEC(".maps");

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

static __always_inline int has_ports(__u8 proto)
{
	return proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_DCCP ||
	       proto == PROTO_SCTP || proto == PROTO_UDPLITE;
}

static __always_inline void put_v4(__u8 *dst, __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

/* The kernel's three-step lookup, as l4.Table.Lookup: the exact 5-tuple,
 * then (local, proto, lport, remote), then (local, proto, lport); for
 * protocols without ports (local, proto, remote), then (local, proto).
 * k holds the full tuple; flags and the fields the steps drop are set here
 * on a copy. Learned entries only ever have the first step's shape. */
static __always_inline struct fw_value *lookup_kernel(const struct fw_key *full, int learned_too)
{
	struct fw_key k = *full;
	struct fw_value *v;

	if (has_ports(k.proto)) {
		k.flags = KEY_LPORT | KEY_REMOTE | KEY_RPORT;
		if (learned_too) {
			v = bpf_map_lookup_elem(&kernel_learned, &k);
			if (v)
				return v;
		}
		v = bpf_map_lookup_elem(&kernel_rules, &k);
		if (v)
			return v;
		k.rport = 0;
		k.flags = KEY_LPORT | KEY_REMOTE;
		v = bpf_map_lookup_elem(&kernel_rules, &k);
		if (v)
			return v;
		__builtin_memset(k.remote, 0, 16);
		k.flags = KEY_LPORT;
		return bpf_map_lookup_elem(&kernel_rules, &k);
	}
	k.lport = 0;
	k.rport = 0;
	k.flags = KEY_REMOTE;
	if (learned_too) {
		v = bpf_map_lookup_elem(&kernel_learned, &k);
		if (v)
			return v;
	}
	v = bpf_map_lookup_elem(&kernel_rules, &k);
	if (v)
		return v;
	__builtin_memset(k.remote, 0, 16);
	k.flags = 0;
	return bpf_map_lookup_elem(&kernel_rules, &k);
}

/* ---------------------------------------------------------------------- */
/* The decision, shared by both ingress hooks                              */

#include "classify.h"

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

/* Multi-buffer aware: a jumbo frame may come in several buffers, and
 * data..end is only the first one. Compiled as xdp.frags; the loader keeps
 * BPF_F_XDP_HAS_FRAGS only where the MTU needs it (a veth refuses a
 * program without it above an MTU of about 3,500 bytes), since in generic
 * mode the flag makes the kernel copy every frame. The headers
 * are in the first buffer on every driver usnetd has met; a frame whose
 * headers go on past it is not classified (CNT_PARSE_ERROR) and goes to
 * usnetd, which reads the whole frame. */
SEC("xdp.frags")
int usnetd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	/* Is the whole frame in the first buffer? (Asked without subtracting
	 * packet pointers, as in the TC hook below.) */
	__u64 len = bpf_xdp_get_buff_len(ctx);
	int complete = len <= 0xffff && data + len <= end;

	__u32 code = classify(data, end, complete);
	if (code == CLS_NEED_MORE)
		code = CNT_PARSE_ERROR;
	if (cls_kernel(code))
		return pass(code);
	if (code < CNT_MAX)
		count(code);
	return to_xsk(ctx);
}

/* ---------------------------------------------------------------------- */
/* TCX ingress filter (AF_PACKET backend)                                  */

/* What the TC hook makes readable when the headers go on past the skb's
 * linear data (an skb built from page fragments keeps as little as the
 * Ethernet header there: a TPACKET TX ring on the other end of a veth, say).
 * Headers past it count as a truncated packet, as in XDP. */
#define TC_PULL_MAX 512

/* AF_PACKET taps run before tc ingress: usnetd has seen the frame already.
 * This program only decides whether the kernel sees it too. */
SEC("tcx/ingress")
int usnetd_tc_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	/* Is the whole packet linear? (Asked without subtracting packet
	 * pointers, which the verifier allows only with CAP_PERFMON; len is
	 * bounded first so that data + len is a valid packet pointer.) */
	__u32 len = skb->len;
	int complete = len <= 0xffff && data + len <= end;
	__u32 code = classify(data, end, complete);
	if (code == CLS_NEED_MORE) {
		__u32 want = skb->len < TC_PULL_MAX ? skb->len : TC_PULL_MAX;
		if (bpf_skb_pull_data(skb, want) == 0) {
			data = (void *)(long)skb->data;
			end = (void *)(long)skb->data_end;
			code = classify(data, end, 1);
		} else {
			code = CNT_PARSE_ERROR;
		}
		count(CNT_TC_PULLED);
	}
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

/* Reads the IP header of an outgoing frame with bpf_skb_load_bytes (the
 * skb may be non-linear) and fills the learned key: local = source,
 * remote = destination. Returns 0 when there is nothing to learn. */
static __always_inline int learn_key(struct __sk_buff *skb, struct fw_key *k)
{
	__u32 off = ETH_HLEN;
	__be16 et;
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
			return 0; /* later fragment: the first one taught us */
		__be32 a;
		__builtin_memcpy(&a, ip + 12, 4);
		if (a == 0)
			return 0; /* 0.0.0.0: a DHCP request */
		put_v4(k->local, a);
		__builtin_memcpy(&a, ip + 16, 4);
		if (ip[16] >= 224)
			return 0; /* multicast, broadcast, class E: no reply comes from there */
		put_v4(k->remote, a);
		proto = ip[9];
		off += (ip[0] & 0x0f) * 4;
	} else if (ethtype == ETH_P_IPV6_) {
		__u8 ip[40];
		if (bpf_skb_load_bytes(skb, off, ip, 40) < 0)
			return 0;
		if ((ip[0] >> 4) != 6 || ip[24] == 0xff)
			return 0; /* not IPv6, or to a multicast group */
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
#pragma unroll
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
				return 0; /* RST: the kernel is closing, not opening */
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
		if (!((proto == PROTO_ICMP && ethtype == ETH_P_IP_ && type == 8) ||
		      (proto == PROTO_ICMPV6 && ethtype == ETH_P_IPV6_ && type == 128)))
			return 0; /* only echo requests open a way back */
	}
	k->flags = KEY_REMOTE;
	return 1;
}

SEC("tcx/egress")
int usnetd_learn(struct __sk_buff *skb)
{
	struct fw_key k = {};
	if (!learn_key(skb, &k)) {
		count(CNT_LEARN_SKIPPED);
		return TCX_NEXT;
	}
	__u64 now = bpf_ktime_get_ns();
	struct fw_value *v = bpf_map_lookup_elem(&kernel_learned, &k);
	if (v) {
		if (now - v->last_seen_ns > REFRESH_NS) {
			v->last_seen_ns = now;
			count(CNT_LEARN_REFRESH);
		}
		return TCX_NEXT;
	}
	if (lookup_kernel(&k, 0)) {
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
