// Package shm is usnetd's side of the shared-memory endpoint channel: a
// switch port (New) over a memfd of two rings of frame slots and a wake-up
// socket pair, the other side of which goes to a userspace network stack
// (the control protocol's RequestSHM). The layout, the protocol and what
// usnetd does not trust are in package ring (backends/shm/ring), which the
// endpoint's side (control/client, usnet) uses as well.
//
// Semantics, as the l4.Port contract wants them:
//   - Send copies each frame into the next free slot of the to-endpoint
//     ring and publishes the batch with one store; it never waits. Frames
//     the ring has no room for are dropped (TxRingFull), frames longer than
//     a slot too (TxTooBig); the pipeline counts both through the short
//     count. It sends a wake-up only when the endpoint set need-wakeup
//     (Wakeups).
//   - WaitRx looks at the from-endpoint ring without a system call; only
//     when it is empty does it set need-wakeup and wait in Go's netpoller
//     (the wake-up socket is non-blocking), without buffers, until the
//     endpoint wakes it, Options.Idle passes, or Close. So an idle channel
//     costs a parked goroutine and no buffer, and a busy one no system
//     call. Recv copies up to a batch of frames out of the ring into the
//     pipeline's buffers: the frame is in usnetd's memory before anyone
//     parses it. Indices and lengths out of range are counted (RxBadIndex,
//     RxBadLen), never followed.
//   - The endpoint closing its end of the wake-up pair (it detached or
//     exited) shows as a hang-up: the port reports it once
//     (Options.OnPeerClosed, PeerClosed) and WaitRx, Recv and Send return
//     l4.ErrPortClosed.
//   - Close wakes a waiting WaitRx or Recv at once, waits until Recv and
//     Send are out of the mapping, unmaps it and closes the socket; the
//     memory is freed when the endpoint's mapping goes too.
//
// BenchmarkChannel compares it with backends/uds in memory.
package shm
