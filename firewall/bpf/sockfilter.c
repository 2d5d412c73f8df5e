// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// A socket filter (SO_ATTACH_BPF) for the AF_PACKET backend's receive
// sockets: it keeps the kernel's own frames out of usnetd. Packet taps
// see every frame of the NIC before tc ingress; without this filter each
// frame of the kernel's connections would be copied into a ring, read by
// an RX worker, decided for the kernel by the switch, and dropped there
// (there is no kernel port with this backend): work for nothing, and a
// false drop in the counters.
//
// It reads the firewall's maps (kernel_rules, kernel_learned, defined with
// their key and value in fwkeys.h, which firewall.c includes as well;
// replaced at load with the Firewall's own) and does the same lookup as the
// classifier, but only for what is the kernel's alone: an unfragmented
// IPv4 or IPv6 packet (no extension headers) with ports, or ICMP/ICMPv6
// other than errors and neighbour discovery, whose tuple a kernel rule
// or a learned kernel flow owns. Everything else is kept (the return
// value is the length to keep, 0 drops): ARP, EAPOL, DHCP answers, NDP
// and ICMP errors, which the switch also gives to endpoints; fragments,
// whose later pieces the switch follows by the first; anything it cannot
// read. Frames that usnetd's host path put into the NIC's ingress (marked
// HOST_MARK) are dropped too: usnetd switched them already. A socket filter has no direct packet access: the headers are
// copied with bpf_skb_load_bytes_relative from the MAC header; a VLAN tag
// the NIC took out is not in the frame.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#include "fwkeys.h"

/* Frames kept from the socket (index 0) and passed to it (index 1). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sf_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&sf_counters, &idx);
	if (c)
		*c += 1;
}

/* The classifier's three-step lookup (lookup_kernel in firewall.c). */
static __always_inline int is_kernels(struct fw_key *k)
{
	if (has_ports(k->proto)) {
		k->flags = KEY_LPORT | KEY_REMOTE | KEY_RPORT;
		if (bpf_map_lookup_elem(&kernel_learned, k) || bpf_map_lookup_elem(&kernel_rules, k))
			return 1;
		k->rport = 0;
		k->flags = KEY_LPORT | KEY_REMOTE;
		if (bpf_map_lookup_elem(&kernel_rules, k))
			return 1;
		__builtin_memset(k->remote, 0, 16);
		k->flags = KEY_LPORT;
		return bpf_map_lookup_elem(&kernel_rules, k) != NULL;
	}
	k->lport = 0;
	k->rport = 0;
	k->flags = KEY_REMOTE;
	if (bpf_map_lookup_elem(&kernel_learned, k) || bpf_map_lookup_elem(&kernel_rules, k))
		return 1;
	__builtin_memset(k->remote, 0, 16);
	k->flags = 0;
	return bpf_map_lookup_elem(&kernel_rules, k) != NULL;
}

/* Reads len bytes at off from the Ethernet header: on a packet socket the
 * skb's data starts there too, but relative to the MAC header the offsets
 * hold wherever data points (a test run starts it at the IP header). */
static __always_inline long load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes_relative(skb, off, to, len, BPF_HDR_START_MAC);
}

static __always_inline void put_v4(__u8 *dst, const __u8 *a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, a, 4);
}

/* Returns 1 when the frame is the kernel's alone. */
static __always_inline int kernel_frame(struct __sk_buff *skb)
{
	__u8 et[2];
	__u32 off = ETH_HLEN;
	if (load(skb, 12, et, 2) < 0)
		return 0;
	__u16 ethtype = ((__u16)et[0] << 8) | et[1];
	if (ethtype == ETH_P_8021Q_ || ethtype == ETH_P_8021AD_) {
		if (load(skb, 16, et, 2) < 0)
			return 0;
		ethtype = ((__u16)et[0] << 8) | et[1];
		off += 4;
	}

	struct fw_key k = {};
	if (ethtype == ETH_P_IP_) {
		__u8 ip[20];
		if (load(skb, off, ip, 20) < 0)
			return 0;
		if ((ip[0] >> 4) != 4 || (ip[0] & 0x0f) < 5)
			return 0;
		if ((((__u16)ip[6] << 8) | ip[7]) & 0x3fff)
			return 0; /* a fragment: the switch follows them by the first */
		put_v4(k.remote, ip + 12);
		put_v4(k.local, ip + 16);
		k.proto = ip[9];
		off += (ip[0] & 0x0f) * 4;
	} else if (ethtype == ETH_P_IPV6_) {
		__u8 ip[40];
		if (load(skb, off, ip, 40) < 0)
			return 0;
		if ((ip[0] >> 4) != 6)
			return 0;
		__builtin_memcpy(k.remote, ip + 8, 16);
		__builtin_memcpy(k.local, ip + 24, 16);
		k.proto = ip[6]; /* extension headers: not a protocol below, kept */
		off += 40;
	} else {
		return 0;
	}

	if (has_ports(k.proto)) {
		__u8 p[4];
		if (load(skb, off, p, 4) < 0)
			return 0;
		k.rport = ((__u16)p[0] << 8) | p[1];
		k.lport = ((__u16)p[2] << 8) | p[3];
		if (k.proto == PROTO_UDP && ((k.rport == 67 && k.lport == 68) || (k.rport == 547 && k.lport == 546)))
			return 0; /* DHCP answers: the switch gives them to the endpoint that asked too */
		return is_kernels(&k);
	}
	if (k.proto == PROTO_ICMP || k.proto == PROTO_ICMPV6) {
		__u8 type;
		if (load(skb, off, &type, 1) < 0)
			return 0;
		if (k.proto == PROTO_ICMP && (type == 3 || type == 4 || type == 11 || type == 12))
			return 0; /* errors go to the owner of the flow they quote */
		if (k.proto == PROTO_ICMPV6 && (type < 128 || (type >= 130 && type <= 143)))
			return 0; /* errors, MLD, NDP */
		return is_kernels(&k);
	}
	return 0;
}

/* As in firewall.c: the frames the host path put into the NIC's ingress,
 * which the switch has switched already. */
#define HOST_MARK 0x75736e64

SEC("socket")
int usnetd_sock_filter(struct __sk_buff *skb)
{
	if (skb->mark == HOST_MARK || kernel_frame(skb)) {
		count(0);
		return 0;
	}
	count(1);
	return skb->len;
}

char __license[] SEC("license") = "Dual MIT/GPL";
