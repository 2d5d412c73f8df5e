// Package afpacket is the AF_PACKET backend: an l4.Port (of kind PortNIC)
// on one NIC, for any Ethernet interface, where AF_XDP is not available.
// It reads every frame that arrives on the interface through packet
// sockets and sends the switch's frames through one more. It never
// decides where a frame goes: the switch decides what the endpoints get,
// and the firewall's TC ingress hook (firewall.HookTC) what the kernel
// gets. Packet taps run before tc ingress, so this port sees every frame,
// the kernel's included (the switch drops those: they match the kernel's
// rules), and what the TC hook drops has been read already.
//
// # Receive: TPACKET_V3 rings in a fanout group
//
// Each worker (Options.Workers, by default one per RX queue of the NIC)
// has its own socket with a TPACKET_V3 RX ring of Blocks blocks of
// BlockSize bytes (256 KiB × 32 = 8 MiB by default), and is one l4 queue:
// Recv(q, …) reads worker q's ring. The sockets form one PACKET_FANOUT
// group (PACKET_FANOUT_HASH: the kernel's symmetric flow hash, so the
// frames of a flow stay on one worker and in order; the group id is
// chosen by the kernel, PACKET_FANOUT_FLAG_UNIQUEID). The number of
// workers need not match the NIC's queues. Setup follows the order the
// kernel needs: socket (protocol 0: nothing arrives yet), a classic BPF
// filter that drops everything, PACKET_VERSION, PACKET_IGNORE_OUTGOING,
// PACKET_RX_RING, mmap, bind (ETH_P_ALL, the interface), and, once every
// socket is bound, PACKET_FANOUT; only then do the filters go, so no frame
// reaches two workers while they join.
//
// usnetd must not read what it sends, nor what the kernel sends: the
// sockets set PACKET_IGNORE_OUTGOING, and the group has
// PACKET_FANOUT_FLAG_IGNORE_OUTGOING, because a socket in a fanout group
// receives through the group's hook, which the socket option does not
// reach.
//
// Before the ring, each socket gets PACKET_VNET_HDR (a virtio-net header in
// front of every frame) and, once in the group, the caller's socket filter
// (Options.Filter, SO_ATTACH_BPF; usnetd's keeps the kernel's own frames
// out, so they are neither copied nor counted) in place of the drop-all
// one.
//
// Recv copies each frame from the ring into the caller's l4.Buf and gives
// a block back to the kernel as soon as all its frames are copied (a
// block is the kernel's unit of handover; the rest of a block waits for
// the next Recv). Every offset read from the ring is checked against its
// block first. Frames whose VLAN tag the kernel had taken out into the
// skb (it does so before the taps) get it back, as it was on the wire.
// The copy is one memcpy per frame from a ring the kernel just wrote;
// BenchmarkAFPacketReceive measures it against a loop that copies nothing.
//
// # Block timeout: 1 ms
//
// TPACKET_V3 hands a block over when the next frame does not fit or when
// the block timeout (tp_retire_blk_tov) has passed since the block opened:
// at a low rate every frame waits that long, at a high rate blocks fill
// first. The kernel's default for a link of unknown speed (veth) is 8 ms;
// usnetd asks for 1 ms, the shortest there is, because a TCP handshake or
// a request/response pays it on every packet in, while the cost (a timer
// per socket, and a poll wake-up per block rather than per frame) stays
// small. BenchmarkAFPacketLatency (Linux 6.18, whose retire timer is
// precise to well below a millisecond, HZ=250 notwithstanding): one frame
// at a time, Send on the peer to Recv on the host, median 1.00 ms and 99th
// percentile 1.05 ms with 1 ms (2.1 ms on a busier run); medians 4.0 and
// 8.0 ms with 4 and 8 ms. Options.BlockTimeout changes it, in whole
// milliseconds.
//
// # Transmit: sendmmsg with PACKET_QDISC_BYPASS
//
// Send writes through one more packet socket, bound to the interface with
// protocol 0 (it receives nothing), one sendmmsg per batch of up to 256
// frames. PACKET_QDISC_BYPASS sends each frame straight to the driver:
// faster, and necessary, because on the way through the qdisc the frame
// would pass tc egress, where the firewall's learner would take the
// endpoints' flows for the kernel's and open the kernel to their replies.
// A TPACKET_V2 TX ring was measured against sendmmsg and lost
// (BenchmarkAFPacketSend, 2-core VM, sender pinned, three runs each in
// one go, batches of 64): the ring cost 474–492 ns of CPU per 60-byte
// frame and 537–556 ns per 1514-byte frame, sendmmsg 442–454 and
// 465–475 ns (2.18–2.25 against 2.02–2.07 Mpps at 60 bytes). The ring also
// hands the driver skbs whose linear part is only the Ethernet header
// (the rest are the ring's pages), which every receiver that reads headers
// from the linear part has to pull first. The ring's code stays in the tests, for the
// comparison. Send waits for room (socket buffer full) at most four times
// 1 ms, woken early by Close, and counts what it could not send.
//
// # Counters
//
// Stats returns the kernel's PACKET_STATISTICS per worker (tp_packets,
// tp_drops, tp_freeze_q_cnt; the kernel resets them on every read, so the
// port sums them) and the port's own counters, RX and TX.
//
// # GRO, LRO and offloaded checksums
//
// The taps see frames after GRO and LRO: where the NIC (or a veth with GRO
// on) coalesced a flow's segments, a frame can be up to 64 KiB. The
// virtio-net header says so (gso_type, gso_size), and Recv cuts such a
// super-frame (TCP over IPv4 or IPv6, UDP with UDP_L4 segmentation) back
// into the segments the wire carried, each in its own buffer with its own
// IP length, IPv4 ID and header checksum, TCP sequence number and flags
// (FIN and PSH on the last, CWR on the first) or UDP length, and L4
// checksum (gso.go). Other GSO types are dropped and counted (RxGSOBad).
// When the buffers of a Recv run out in the middle of a super-frame, the
// next Recv goes on with the next segment. So GRO can stay on for the
// kernel. A frame whose L4 checksum a local sender left to offload
// (CHECKSUM_PARTIAL, a veth peer's kernel) is completed from csum_start
// and csum_offset, as the NIC it never met would have (RxCsumPartial).
//
// # Limits
//
//   - A frame (or segment) longer than the caller's buffer is dropped
//     (RxOversize); Options.MaxFrame (the NIC's MTU, its header and a
//     VLAN tag) must fit a ring block, or Open fails with ErrFrameSize.
//   - Cutting super-frames costs a checksum over each segment.
//
// # Namespaces and lifetime
//
// Open resolves the interface and creates the sockets in the network
// namespace of the calling OS thread: construct the port inside the
// namespace (e.g. within netlab's ns.Do). The sockets stay there and may
// be used from any goroutine afterwards. Close is idempotent, wakes any
// Recv or Send waiting in poll (an eventfd), waits for them to leave the
// rings, unmaps the rings and closes the sockets, which leaves the fanout
// group. Nothing outlives the process: there is nothing to pin or clean
// up after a crash.
package afpacket
