// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// The kernel firewall's decision: is an incoming frame the kernel's?
//
// Shared by both ingress hooks of firewall.c, so that they cannot drift
// apart: the XDP classifier (AF_XDP backend) and the TCX ingress program
// (AF_PACKET backend). Included by firewall.c after the maps, count(),
// has_ports(), put_v4() and lookup_kernel().
//
// classify() looks at the frame between data and end and returns a code:
//
//   - a CNT_PASS_* counter index (CNT_PASS_ALLOWED .. CNT_PASS_FRAGMENT):
//     the kernel may see the frame, for that reason;
//   - CNT_PARSE_ERROR, CNT_FRAGMENT_TO_XSK or CNT_NO_HOST_RINGS: not the
//     kernel's, and the counter that says why;
//   - CLS_USERSPACE: not the kernel's, nothing to note;
//   - CLS_NEED_MORE: the headers go on past end, and end is not the end of
//     the packet (complete == 0): the caller makes more of the packet
//     readable and asks again. Only the TC hook, whose skb may keep part of
//     the headers outside its linear data, ever gets it.
//
// It counts nothing itself (the caller counts the verdict and the code), so
// that a second call after CLS_NEED_MORE counts a frame once. Its only side
// effect is the frag_kernel entry of a first fragment that goes to the
// kernel, and that happens on final verdicts only.

#define CLS_USERSPACE CNT_MAX
#define CLS_NEED_MORE (CNT_MAX + 1)

static __always_inline int cls_kernel(__u32 code)
{
	return code >= CNT_PASS_ALLOWED && code <= CNT_PASS_FRAGMENT;
}

enum frag_state {
	FRAG_NONE = 0,
	FRAG_FIRST, /* offset 0, more to come: has the L4 header */
	FRAG_LATER, /* offset > 0: no L4 header */
};

/* What the parser found in an IP packet. */
struct ip_info {
	__u8 src[16];
	__u8 dst[16];
	__u32 frag_id;
	__u8 proto;
	__u8 frag_proto; /* the fragment's protocol: the same in every fragment */
	__u8 frag;       /* enum frag_state */
	__u8 v6;
	__u8 trunc; /* parsing stopped at end (rather than at a malformed header) */
};

/* IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) must never be on the wire
 * (RFC 4291 2.5.5.2); here they would alias the IPv4 keys. */
static __always_inline int is_v4mapped(const __u8 *a)
{
	__u64 hi;
	__u32 mid;
	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&mid, a + 8, 4);
	return hi == 0 && mid == bpf_htonl(0x0000ffff);
}

static __always_inline void *truncated(struct ip_info *info)
{
	info->trunc = 1;
	return NULL;
}

/* Parses the IPv4 or IPv6 header at l3 and returns the L4 header, or NULL
 * when the packet is malformed or truncated (info->trunc set) or a later
 * fragment (info->frag == FRAG_LATER). Only headers the program reads are
 * checked. */
static __always_inline void *parse_ip(void *l3, void *end, __u16 ethtype, struct ip_info *info)
{
	if (ethtype == ETH_P_IP_) {
		__u8 *ip = l3;
		if (l3 + 20 > end)
			return truncated(info);
		if ((ip[0] >> 4) != 4)
			return NULL;
		__u32 ihl = (ip[0] & 0x0f) * 4;
		if (ihl < 20)
			return NULL;
		void *l4 = l3 + ihl;
		if (l4 > end)
			return truncated(info);
		__be32 a;
		__builtin_memcpy(&a, ip + 12, 4);
		put_v4(info->src, a);
		__builtin_memcpy(&a, ip + 16, 4);
		put_v4(info->dst, a);
		info->proto = ip[9];
		info->frag_proto = ip[9];
		info->v6 = 0;
		__u16 fo = ((__u16)ip[6] << 8) | ip[7];
		info->frag_id = ((__u32)ip[4] << 8) | ip[5];
		if (fo & 0x1fff) {
			info->frag = FRAG_LATER;
			return NULL;
		}
		info->frag = (fo & 0x2000) ? FRAG_FIRST : FRAG_NONE;
		return l4;
	}

	/* IPv6 */
	__u8 *ip = l3;
	if (l3 + 40 > end)
		return truncated(info);
	if ((ip[0] >> 4) != 6)
		return NULL;
	__builtin_memcpy(info->src, ip + 8, 16);
	__builtin_memcpy(info->dst, ip + 24, 16);
	if (is_v4mapped(info->src) || is_v4mapped(info->dst))
		return NULL;
	info->v6 = 1;
	info->frag = FRAG_NONE;
	__u8 nh = ip[6];
	void *cur = l3 + 40;

#pragma unroll
	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		__u8 *h = cur;
		switch (nh) {
		case 0:   /* hop-by-hop options */
		case 43:  /* routing */
		case 60:  /* destination options */
		case 135: /* mobility */
		case 139: /* HIP */
		case 140: /* shim6 */
			if (cur + 2 > end)
				return truncated(info);
			nh = h[0];
			cur += ((__u32)h[1] + 1) * 8;
			break;
		case 51: /* AH: length in 4-octet units, minus 2 */
			if (cur + 2 > end)
				return truncated(info);
			nh = h[0];
			cur += ((__u32)h[1] + 2) * 4;
			break;
		case 44: /* fragment */
			if (cur + 8 > end)
				return truncated(info);
			nh = h[0];
			{
				__u16 fo = ((__u16)h[2] << 8) | h[3];
				info->frag_id = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) |
						((__u32)h[6] << 8) | h[7];
				info->proto = nh;
				info->frag_proto = nh;
				if (fo & 0xfff8) {
					info->frag = FRAG_LATER;
					return NULL;
				}
				info->frag = (fo & 1) ? FRAG_FIRST : FRAG_NONE;
			}
			cur += 8;
			break;
		default:
			info->proto = nh;
			if (cur > end)
				return truncated(info);
			return cur;
		}
	}
	return NULL; /* too many extension headers */
}

/* An ICMP or ICMPv6 error quotes the packet that caused it: a packet we
 * sent, so its source is our side. Returns 1 when that packet belongs to a
 * kernel flow (found with the same three-step lookup), 0 when not (a quote
 * too short for its ports is none of the kernel's), -1 when the quote goes
 * on past end and end is not the end of the packet. */
static __always_inline int icmp_error_of_kernel(void *l4, void *end, int v6, int complete)
{
	void *inner = l4 + 8;
	struct ip_info in = {};
	void *il4 = parse_ip(inner, end, v6 ? ETH_P_IPV6_ : ETH_P_IP_, &in);
	if (!il4)
		return in.trunc && !complete ? -1 : 0;
	struct fw_key k = {};
	__builtin_memcpy(k.local, in.src, 16);
	__builtin_memcpy(k.remote, in.dst, 16);
	k.proto = in.proto;
	if (has_ports(in.proto)) {
		__u8 *p = il4;
		if (il4 + 4 > end)
			return complete ? 0 : -1;
		k.lport = ((__u16)p[0] << 8) | p[1];
		k.rport = ((__u16)p[2] << 8) | p[3];
	}
	return lookup_kernel(&k, 1) != NULL;
}

static __always_inline void frag_key_of(struct frag_key *fk, const struct ip_info *in)
{
	__builtin_memcpy(fk->src, in->src, 16);
	__builtin_memcpy(fk->dst, in->dst, 16);
	fk->id = in->frag_id;
	fk->proto = in->frag_proto;
}

/* The code for a packet cut short at end: a parse error if that is the
 * packet's end, else a request for more. */
static __always_inline __u32 short_packet(int complete)
{
	return complete ? CNT_PARSE_ERROR : CLS_NEED_MORE;
}

/* The code of an IP packet (see classify). */
static __always_inline __u32 classify_ip(void *l3, void *end, __u16 ethtype, int complete)
{
	struct ip_info in = {};
	void *l4 = parse_ip(l3, end, ethtype, &in);

	if (!l4) {
		if (in.frag != FRAG_LATER)
			return in.trunc ? short_packet(complete) : CNT_PARSE_ERROR;
		struct frag_key fk = {};
		frag_key_of(&fk, &in);
		__u64 *seen = bpf_map_lookup_elem(&frag_kernel, &fk);
		if (seen && bpf_ktime_get_ns() - *seen < FRAG_TIMEOUT_NS)
			return CNT_PASS_FRAGMENT;
		return CNT_FRAGMENT_TO_XSK;
	}

	struct fw_key k = {};
	__builtin_memcpy(k.local, in.dst, 16);
	__builtin_memcpy(k.remote, in.src, 16);
	k.proto = in.proto;
	__u32 why = CLS_USERSPACE;

	if (has_ports(in.proto)) {
		__u8 *p = l4;
		if (l4 + 4 > end)
			return short_packet(complete);
		k.rport = ((__u16)p[0] << 8) | p[1];
		k.lport = ((__u16)p[2] << 8) | p[3];
		if (in.proto == PROTO_UDP &&
		    ((!in.v6 && k.rport == 67 && k.lport == 68) ||
		     (in.v6 && k.rport == 547 && k.lport == 546)))
			why = CNT_PASS_DHCP;
		else if (lookup_kernel(&k, 1))
			why = CNT_PASS_ALLOWED;
	} else {
		__u8 type = 0;
		int icmp = (!in.v6 && in.proto == PROTO_ICMP) || (in.v6 && in.proto == PROTO_ICMPV6);
		if (icmp) {
			if (l4 + 8 > end)
				return short_packet(complete);
			type = *(__u8 *)l4;
		}
		if (icmp && in.v6 && ((type >= 133 && type <= 137) || /* NDP */
				      (type >= 130 && type <= 132) || type == 143 /* MLD */))
			why = CNT_PASS_NDP;
		else if (lookup_kernel(&k, 1))
			why = CNT_PASS_ALLOWED;
		else if (icmp && ((!in.v6 && (type == 3 || type == 4 || type == 11 || type == 12)) ||
				  (in.v6 && type >= 1 && type <= 4))) {
			int r = icmp_error_of_kernel(l4, end, in.v6, complete);
			if (r < 0)
				return CLS_NEED_MORE;
			if (r)
				why = CNT_PASS_ICMP_ERROR;
		}
	}

	if (why != CLS_USERSPACE && in.frag == FRAG_FIRST) {
		struct frag_key fk = {};
		frag_key_of(&fk, &in);
		__u64 now = bpf_ktime_get_ns();
		bpf_map_update_elem(&frag_kernel, &fk, &now, BPF_ANY);
	}
	return why;
}

/* The decision for one Ethernet frame from data to end; complete says
 * whether end is the end of the packet. A function of its own (not
 * inlined), so that the TC hook, which may call it twice, carries one copy. */
static __noinline __u32 classify(void *data, void *end, int complete)
{
	if (cfg_no_host_rings)
		return CNT_NO_HOST_RINGS;
	if (data + ETH_HLEN > end)
		return short_packet(complete);
	__u8 *eth = data;
	__u16 ethtype = ((__u16)eth[12] << 8) | eth[13];
	void *l3 = data + ETH_HLEN;
	if (ethtype == ETH_P_8021Q_ || ethtype == ETH_P_8021AD_) {
		if (l3 + 4 > end)
			return short_packet(complete);
		__u8 *tag = l3;
		ethtype = ((__u16)tag[2] << 8) | tag[3];
		l3 += 4;
	}

	switch (ethtype) {
	case ETH_P_ARP_:
		return CNT_PASS_ARP;
	case ETH_P_PAE_:
		return CNT_PASS_EAPOL;
	case ETH_P_IP_:
	case ETH_P_IPV6_:
		return classify_ip(l3, end, ethtype, complete);
	}
	return CLS_USERSPACE;
}
