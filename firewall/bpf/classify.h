// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// The kernel firewall's decision: is an incoming frame the kernel's?
//
// Shared by both ingress hooks of firewall.c, so that they cannot drift
// apart: the XDP classifier (AF_XDP backend) and the TCX ingress program
// (AF_PACKET backend). Included by firewall.c after the maps, count(),
// has_ports(), put_v4() and lookup_owner(), once per hook, with CLS_CTX
// (the program's context), CLS_LOAD (bpf_xdp_load_bytes or
// bpf_skb_load_bytes) and CLS_NAME (a suffix for the functions) defined.
//
// The frame is read with the load helpers at offsets, never through
// packet pointers: the TC hook's skb may keep its headers outside the
// linear data, and offsets the verifier need not track precisely keep the
// extension-header walk's states few (packet pointers made it explode).
//
// classify() returns a code:
//
//   - a CNT_PASS_* counter index (CNT_PASS_ALLOWED .. CNT_PASS_FRAGMENT_EARLY):
//     the kernel may see the frame, for that reason;
//   - CNT_PARSE_ERROR, CNT_FRAGMENT_TO_XSK or CNT_NO_HOST_RINGS: not the
//     kernel's, and the counter that says why;
//   - CLS_USERSPACE: not the kernel's, nothing to note.
//
// It counts nothing itself (the caller counts the verdict and the code).
// Its only side effect is the frag_verdicts entry of a first fragment.
//
// It is l4's decision (Parse, then Switch.Decide for a frame from the NIC)
// reduced to "the kernel's or not", over the kernel's and the endpoints'
// entries: the same parser limits, the same lookup order, ICMP errors by
// their quote first. firewall/differential_test.go holds the two to that.

#ifndef CLASSIFY_COMMON
#define CLASSIFY_COMMON

#define CLS_USERSPACE CNT_MAX

static __always_inline int cls_kernel(__u32 code)
{
	return code >= CNT_PASS_ALLOWED && code <= CNT_PASS_FRAGMENT_EARLY;
}

enum frag_state {
	FRAG_NONE = 0,
	FRAG_FIRST, /* offset 0 of a fragmented datagram: has the L4 header */
	FRAG_LATER, /* offset > 0: no L4 header */
};

/* What the parser found in an IP packet. */
struct ip_info {
	__u8 src[16];
	__u8 dst[16];
	__u32 frag_id;
	__u32 l4off;  /* offset of the L4 header in the frame */
	__u32 l4room; /* bytes from the L4 header to the end of the IP packet */
	__u8 proto;      /* the upper-layer protocol; a later fragment's: frag_proto */
	__u8 frag_proto; /* the protocol the fragment header names: the same in every fragment */
	__u8 frag;       /* enum frag_state */
	__u8 v6;
	/* The first four bytes of the L4 header, when the load of the IP
	 * header brought them along (no IPv4 options or IPv6 extension
	 * headers): one load call less for the ports. */
	__u8 l4head_ok;
	__u8 l4head[4];
};

/* The first four bytes of the L4 header (ports, or ICMP type and code). */
#define L4HEAD(ctx, in, p) \
	((in)->l4head_ok ? (__builtin_memcpy(p, (in)->l4head, 4), 0) : CLS_LOAD(ctx, (in)->l4off, p, 4))

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

/* 127.0.0.0/8 (in its mapped form) or ::1, as l4.Addr.IsLoopback. */
static __always_inline int is_loopback(const __u8 *a, int v6)
{
	if (!v6)
		return a[12] == 127;
	__u64 hi, lo;
	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&lo, a + 8, 8);
	return hi == 0 && lo == bpf_cpu_to_be64(1);
}

static __always_inline void frag_key_of(struct frag_key *fk, const struct ip_info *in)
{
	__builtin_memcpy(fk->src, in->src, 16);
	__builtin_memcpy(fk->dst, in->dst, 16);
	fk->id = in->frag_id;
	fk->proto = in->frag_proto;
}

/* A later fragment: its first fragment's verdict when that came less than
 * FRAG_TIMEOUT_NS ago. One that comes first (reordering) goes to the
 * kernel when no endpoint has a rule on its (destination, protocol), since
 * then the datagram cannot be an endpoint's, and the kernel reassembles
 * nothing without a first fragment that the classifier passed; otherwise
 * to userspace, where the Go switch holds it for its first fragment. */
static __always_inline __u32 later_fragment(const struct ip_info *in)
{
	struct frag_key fk = {};
	frag_key_of(&fk, in);
	struct frag_verdict *fv = bpf_map_lookup_elem(&frag_verdicts, &fk);
	if (fv && bpf_ktime_get_ns() - fv->seen_ns < FRAG_TIMEOUT_NS)
		return fv->kernel ? CNT_PASS_FRAGMENT : CNT_FRAGMENT_TO_XSK;
	struct ep_port_key pk = {};
	__builtin_memcpy(pk.local, in->dst, 16);
	pk.proto = in->frag_proto;
	pk.any = 1;
	if (!bpf_map_lookup_elem(&endpoint_ports, &pk))
		return CNT_PASS_FRAGMENT_EARLY;
	return CNT_FRAGMENT_TO_XSK;
}

#endif /* CLASSIFY_COMMON */

/* Parses the IPv4 or IPv6 header at offset l3, as l4.Parse does, and
 * returns 1 with info->l4off set, 0 when the packet is malformed (l4 would
 * drop it) or a later fragment (info->frag == FRAG_LATER).
 *
 * room is how many bytes the packet has from l3 on. A packet (quote == 0)
 * must fit its length fields into room and ends where they say (Ethernet
 * padding is not part of it); an ICMP error's quote (quote == 1) is cut
 * short by design, so its length fields are not read and it ends at room,
 * as in l4's parseInner4/parseInner6. */
static __always_inline int CLS_NAME(parse_ip)(CLS_CTX *ctx, __u32 l3, __u32 room, __u16 ethtype,
					      struct ip_info *info, int quote)
{
	if (room > 0xffff)
		room = 0xffff;
	if (ethtype == ETH_P_IP_) {
		__u8 ip[24];
		int big = room >= 24;
		if (room < 20)
			return 0;
		if (big ? CLS_LOAD(ctx, l3, ip, 24) < 0 : CLS_LOAD(ctx, l3, ip, 20) < 0)
			return 0;
		if ((ip[0] >> 4) != 4)
			return 0;
		__u32 ihl = (ip[0] & 0x0f) * 4;
		if (ihl < 20)
			return 0;
		__u32 lim = room;
		if (!quote) {
			__u32 total = ((__u32)ip[2] << 8) | ip[3];
			if (total < ihl || total > room)
				return 0;
			lim = total;
		}
		if (ihl > lim)
			return 0;
		__be32 a;
		__builtin_memcpy(&a, ip + 12, 4);
		put_v4(info->src, a);
		__builtin_memcpy(&a, ip + 16, 4);
		put_v4(info->dst, a);
		info->proto = ip[9];
		info->frag_proto = ip[9];
		info->v6 = 0;
		info->l4off = l3 + ihl;
		info->l4room = lim - ihl;
		if (big && ihl == 20 && lim >= 24) {
			__builtin_memcpy(info->l4head, ip + 20, 4);
			info->l4head_ok = 1;
		}
		__u16 fo = ((__u16)ip[6] << 8) | ip[7];
		info->frag_id = ((__u32)ip[4] << 8) | ip[5];
		if (fo & 0x1fff) {
			info->frag = FRAG_LATER;
			return 0;
		}
		info->frag = (fo & 0x2000) ? FRAG_FIRST : FRAG_NONE;
		return 1;
	}

	/* IPv6 */
	__u8 ip[44];
	int big = room >= 44;
	if (room < 40)
		return 0;
	if (big ? CLS_LOAD(ctx, l3, ip, 44) < 0 : CLS_LOAD(ctx, l3, ip, 40) < 0)
		return 0;
	if ((ip[0] >> 4) != 6)
		return 0;
	__builtin_memcpy(info->src, ip + 8, 16);
	__builtin_memcpy(info->dst, ip + 24, 16);
	if (is_v4mapped(info->src) || is_v4mapped(info->dst))
		return 0;
	__u32 lim = room;
	if (!quote) {
		__u32 plen = ((__u32)ip[4] << 8) | ip[5];
		if (40 + plen > room)
			return 0;
		lim = 40 + plen;
	}
	info->v6 = 1;
	info->frag = FRAG_NONE;
	__u8 nh = ip[6];
	__u32 off = 40;

#pragma clang loop unroll(disable)
	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		__u8 h[8];
		switch (nh) {
		case 0:   /* hop-by-hop options */
		case 43:  /* routing */
		case 60:  /* destination options */
		case 135: /* mobility */
		case 139: /* HIP */
		case 140: /* shim6 */
		case 51:  /* AH: length in 4-octet units, minus 2 */
			if (off + 8 > lim || CLS_LOAD(ctx, l3 + off, h, 2) < 0)
				return 0;
			{
				__u32 n = nh == 51 ? ((__u32)h[1] + 2) * 4 : ((__u32)h[1] + 1) * 8;
				if (off + n > lim)
					return 0;
				nh = h[0];
				off += n;
			}
			break;
		case 44: /* fragment */
			if (off + 8 > lim || CLS_LOAD(ctx, l3 + off, h, 8) < 0)
				return 0;
			nh = h[0];
			info->frag_id = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
			info->frag_proto = nh;
			if ((((__u16)h[2] << 8) | h[3]) & 0xfff8) {
				info->proto = nh;
				info->frag = FRAG_LATER;
				return 0;
			}
			/* Offset 0, even without M (an atomic fragment): l4
			 * remembers its verdict too. */
			info->frag = FRAG_FIRST;
			off += 8;
			break;
		default:
			info->proto = nh;
			info->l4off = l3 + off;
			info->l4room = lim - off;
			if (big && off == 40 && lim >= 44) {
				__builtin_memcpy(info->l4head, ip + 40, 4);
				info->l4head_ok = 1;
			}
			return 1;
		}
	}
	return 0; /* too many extension headers */
}

/* An ICMP or ICMPv6 error quotes the packet that caused it: a packet we
 * sent, so its source is our side. Returns whose flow that packet is
 * (OWNER_*, the same lookup as for the packet itself; a quote without
 * ports for a protocol with ports looks up ports 0, as l4 does). l4 and
 * l4room: the ICMP message's offset and length. */
static __always_inline int CLS_NAME(quote_owner)(CLS_CTX *ctx, __u32 l4, __u32 l4room, int v6)
{
	if (l4room < 8)
		return OWNER_NONE; /* no quote: l4 does not read one either */
	struct ip_info in = {};
	int ok = CLS_NAME(parse_ip)(ctx, l4 + 8, l4room - 8, v6 ? ETH_P_IPV6_ : ETH_P_IP_, &in, 1);
	if (!ok && in.frag != FRAG_LATER)
		return OWNER_NONE;
	struct fw_key k = {};
	__builtin_memcpy(k.local, in.src, 16);
	__builtin_memcpy(k.remote, in.dst, 16);
	k.proto = in.proto;
	__u8 p[4];
	if (ok && has_ports(in.proto) && in.l4room >= 4 && L4HEAD(ctx, &in, p) == 0) {
		k.lport = ((__u16)p[0] << 8) | p[1];
		k.rport = ((__u16)p[2] << 8) | p[3];
	}
	return lookup_owner(&k, NULL);
}

/* Whether a DHCP answer (UDP 67->68, IPv4) is the kernel's: its
 * destination MAC is the NIC's or a group address, and its client hardware
 * address (chaddr, 28 bytes into the BOOTP message) is the NIC's. An
 * answer for another MAC (an endpoint's) goes to userspace, where the
 * switch gives it to the port that asked. While the NIC's MAC is unknown,
 * and when chaddr is not in the packet, the answer is the kernel's. */
static __always_inline int CLS_NAME(dhcp_kernels)(CLS_CTX *ctx, struct ip_info *in)
{
	__u32 zero = 0;
	struct nic_mac *nm = bpf_map_lookup_elem(&nic_mac, &zero);
	if (!nm || !nm->set)
		return 1;
	__u8 dst[6];
	if (CLS_LOAD(ctx, 0, dst, 6) < 0)
		return 1;
	if (!(dst[0] & 1) && !mac_eq(dst, nm->mac))
		return 0; /* unicast to another MAC */
	if (in->l4room < 8 + 28 + 6)
		return 1;
	__u8 ch[6];
	if (CLS_LOAD(ctx, in->l4off + 8 + 28, ch, 6) < 0)
		return 1;
	return mac_eq(ch, nm->mac);
}

/* The code of an IP packet at offset l3 (see classify). room: bytes from
 * l3 to the end of the frame. */
static __always_inline __u32 CLS_NAME(classify_ip)(CLS_CTX *ctx, __u32 l3, __u32 room, __u16 ethtype)
{
	struct ip_info in = {};
	int ok = CLS_NAME(parse_ip)(ctx, l3, room, ethtype, &in, 0);

	if (!ok && in.frag != FRAG_LATER)
		return CNT_PARSE_ERROR;

	int icmp = (!in.v6 && in.proto == PROTO_ICMP) || (in.v6 && in.proto == PROTO_ICMPV6);
	struct fw_key k = {};
	__u8 type = 0;
	__u8 p[4];
	if (ok && (has_ports(in.proto) || icmp)) {
		if (in.l4room < 4 || L4HEAD(ctx, &in, p) < 0)
			return CNT_PARSE_ERROR;
		if (icmp) {
			type = p[0];
			/* IPv6's ARP goes to every port, before anything else. */
			if (in.v6 && type >= 133 && type <= 137)
				return CNT_PASS_NDP;
		} else {
			k.rport = ((__u16)p[0] << 8) | p[1];
			k.lport = ((__u16)p[2] << 8) | p[3];
		}
	}
	if (is_loopback(in.dst, in.v6))
		return CLS_USERSPACE; /* l4 drops it */
	if (!ok)
		return later_fragment(&in);

	__builtin_memcpy(k.local, in.dst, 16);
	__builtin_memcpy(k.remote, in.src, 16);
	k.proto = in.proto;
	__u32 why = CLS_USERSPACE;
	int owner = OWNER_NONE;

	/* An ICMP error goes the way of the flow it quotes, if that is anyone's. */
	if (icmp && ((!in.v6 && (type == 3 || type == 4 || type == 5 || type == 11 || type == 12)) ||
		     (in.v6 && type >= 1 && type <= 4))) {
		owner = CLS_NAME(quote_owner)(ctx, in.l4off, in.l4room, in.v6);
		if (owner == OWNER_KERNEL)
			why = CNT_PASS_ICMP_ERROR;
	}
	if (owner == OWNER_NONE) {
		owner = lookup_owner(&k, NULL);
		if (owner == OWNER_KERNEL)
			why = CNT_PASS_ALLOWED;
	}
	/* The link's own business, when no rule claims it: DHCP answers for
	 * the NIC's MAC (dhcp_kernels), DHCPv6 answers and MLD go to the
	 * kernel; a DHCP answer for another MAC goes to userspace. */
	if (owner == OWNER_NONE) {
		if (in.proto == PROTO_UDP && !in.v6 && k.rport == 67 && k.lport == 68) {
			if (CLS_NAME(dhcp_kernels)(ctx, &in))
				why = CNT_PASS_DHCP;
		} else if (in.proto == PROTO_UDP && in.v6 && k.rport == 547 && k.lport == 546)
			why = CNT_PASS_DHCP;
		else if (icmp && in.v6 && ((type >= 130 && type <= 132) || type == 143))
			why = CNT_PASS_NDP;
	}

	if (in.frag == FRAG_FIRST) {
		struct frag_key fk = {};
		frag_key_of(&fk, &in);
		struct frag_verdict fv = {.seen_ns = bpf_ktime_get_ns(), .kernel = why != CLS_USERSPACE};
		bpf_map_update_elem(&frag_verdicts, &fk, &fv, BPF_ANY);
	}
	return why;
}

/* The decision for one Ethernet frame of len bytes. A function of its own
 * (not inlined) per hook. */
static __noinline __u32 CLS_NAME(classify)(CLS_CTX *ctx, __u32 len)
{
	if (cfg_no_host_rings)
		return CNT_NO_HOST_RINGS;
	/* The EtherType and, in the same load, the 802.1Q tag's. */
	__u8 eth[6];
	int tagged = len >= ETH_HLEN + 4;
	if (len < ETH_HLEN)
		return CNT_PARSE_ERROR;
	if (tagged ? CLS_LOAD(ctx, 12, eth, 6) < 0 : CLS_LOAD(ctx, 12, eth, 2) < 0)
		return CNT_PARSE_ERROR;
	__u16 ethtype = ((__u16)eth[0] << 8) | eth[1];
	__u32 l3 = ETH_HLEN;
	__u32 room = len - ETH_HLEN;
	/* One 802.1Q tag, as l4. (802.1ad is not parsed there either: such
	 * frames are nobody's.) */
	if (ethtype == ETH_P_8021Q_) {
		if (!tagged)
			return CNT_PARSE_ERROR;
		ethtype = ((__u16)eth[4] << 8) | eth[5];
		l3 += 4;
		room -= 4;
	}

	switch (ethtype) {
	case ETH_P_ARP_:
		if (room < 28)
			return CNT_PARSE_ERROR;
		return CNT_PASS_ARP;
	case ETH_P_PAE_:
		if (room < 4)
			return CNT_PARSE_ERROR;
		return CNT_PASS_EAPOL;
	case ETH_P_IP_:
	case ETH_P_IPV6_:
		return CLS_NAME(classify_ip)(ctx, l3, room, ethtype);
	}
	return CLS_USERSPACE;
}
