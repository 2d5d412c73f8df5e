// Package afxdp is the AF_XDP backend: an l4.Port (of kind PortNIC) on the
// queues of one NIC. The XDP program in front of the NIC (firewall/, or a
// test's) redirects the frames that are not the kernel's into an XSKMAP;
// this package opens one AF_XDP socket (XSK) per NIC queue, puts each into
// that map at its queue id, and moves frames between the sockets and the
// pipeline's buffers. It never decides where a frame goes: what reaches a
// socket was chosen by the XDP program, and what Send gets was chosen by
// the switch.
//
// # Sockets and memory
//
// Each socket has its own UMEM (NumFrames RX frames of FrameSize bytes,
// anonymous memory outside the Go heap) and its own fill, completion and
// RX rings; the socket of the lowest queue also has the TX ring and
// RingSize TX frames. A shared
// UMEM (XDP_SHARED_UMEM) would save memory (8 MiB per queue by default)
// but buys nothing here: every queue needs its own fill and completion
// ring anyway, and frames that wander between queues would need a free
// list shared by several RX workers and the TX goroutine. With a UMEM per
// socket, the RX worker of queue q is the only user of q's RX frames, and
// the TX goroutine the only user of the TX frames: no locks, no atomics
// between our goroutines, only the rings' indices shared with the kernel
// (ring.go). Sharing becomes worth it with zero-copy handover (below),
// when a frame received on one queue is sent on another.
//
// # Copy into the pipeline's buffers
//
// Recv copies each frame from the UMEM into the caller's l4.Buf and gives
// the UMEM frame back to the kernel at once; Send copies each frame into a
// free TX frame. Handing UMEM frames to the pipeline without a copy is
// future work, because the two buffer disciplines do not fit yet: a frame
// in the pipeline may be held for long (a slow endpoint's ring, a held
// fragment) and is released by whichever TX goroutine sent it last, while
// a UMEM frame can only go back through its socket's fill ring, which has
// one producer (the RX worker of that queue); the kernel puts the data at
// a headroom offset that l4.Buf has no field for; and registering the
// pool's Go-heap backing array as UMEM would let the kernel write into
// memory that Go, and the race detector, believe only Go writes. A 64-byte
// copy costs far less than the syscalls around it; the benchmark measures
// what the copy costs.
//
// # Jumbo frames: multi-buffer sockets
//
// A UMEM chunk is at most a page (4 KiB) in aligned mode, and 256 bytes of
// it are the kernel's headroom on receive. A frame longer than a chunk
// (Options.MaxFrame above FrameSize-256: any MTU above 1,774 with the
// default 2 KiB chunks) needs multi-buffer sockets: Open binds with
// XDP_USE_SG, the kernel spreads a frame over several chunks (every
// descriptor but the last flagged XDP_PKT_CONTD), Recv copies the run into
// one buffer, and Send writes a long frame as a run of chunks. The XDP
// program in front must be multi-buffer aware (BPF_F_XDP_HAS_FRAGS; a
// veth refuses any other above an MTU of about 3,500). Larger chunks were
// the other way: above a page they need a UMEM of huge pages (Linux 6.6),
// which a host has to set aside, and unaligned chunks still stop at a
// page. Multi-buffer works in copy mode on any driver (veth included, in
// native and generic XDP mode: TestJumboVeth carries 9,018-byte frames
// both ways); where a driver's zero-copy mode lacks it (the bind fails
// with EOPNOTSUPP), Open binds again in copy mode. If that fails too, Open
// fails with ErrFrameSize naming the size and the limit, as it does for a
// frame of more than MaxChunks chunks (28,672 bytes with 2 KiB chunks). A run cut off by the end of what the RX ring shows waits for
// the rest; frames longer than the caller's buffer are dropped whole
// (RxOversize).
//
// # Modes
//
// Open binds without a mode flag, so the kernel uses zero-copy where the
// driver has it and copy mode otherwise (veth has no zero-copy), and reads
// the mode back (XDP_OPTIONS); ForceCopy binds with XDP_COPY. Mode returns
// it and Open logs it. All sockets use XDP_USE_NEED_WAKEUP: Recv kicks the
// fill ring with recvfrom and Send the TX ring with sendto only when the
// ring's flag asks. In copy mode the TX flag is always set, and the sendto
// is what transmits (synchronously, up to max_tx_budget frames per call,
// which Open raises to the ring size where the kernel allows it).
//
// # Transmit queue
//
// The port is one l4.Port with one TX goroutine, so it transmits through
// one socket: the lowest queue's. A single XSK TX ring carries more than
// the one core of the TX goroutine can fill, and one queue keeps the
// frames of a flow in order, which spreading batches round-robin over
// queues would not. (With zero-copy on a real NIC, TX work could later be
// spread by flow hash; in copy mode the sendto runs on the TX goroutine's
// core whichever queue it names.)
//
// # Namespaces and lifetime
//
// Open resolves the interface and creates the sockets in the network
// namespace of the calling OS thread: construct the port inside the
// namespace (e.g. within netlab's ns.Do). The sockets stay there and may
// be used from any goroutine afterwards. Close is idempotent, wakes any
// Recv blocked in poll (an eventfd), waits for Recv and Send to leave the
// rings, closes the sockets (the kernel drops them from the XSKMAP) and
// unmaps everything. Binding a queue right after a close can fail with
// EBUSY while the kernel tears the old socket down: Open retries for up
// to 3 s.
package afxdp
