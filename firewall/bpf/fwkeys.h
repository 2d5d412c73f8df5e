// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// What the classifier (firewall.c) and the AF_PACKET socket filter
// (sockfilter.c) share: the EtherTypes and protocol numbers they read, the
// key and value of the kernel-allow maps, and those two maps. The socket
// filter's maps are replaced at load with the Firewall's own, so their
// layout must be one; the loader checks it as well.
//
// Keys are family-agnostic, as l4.Key in Go: 16-byte addresses (IPv4 in the
// IPv4-mapped form ::ffff:a.b.c.d), ports in host byte order, the protocol
// and the flags saying which optional fields are set.

#ifndef FWKEYS_H
#define FWKEYS_H

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

static __always_inline int has_ports(__u8 proto)
{
	return proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_DCCP ||
	       proto == PROTO_SCTP || proto == PROTO_UDPLITE;
}

#endif /* FWKEYS_H */
