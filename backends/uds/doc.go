// Package uds is the endpoint channel of usnetd: a switch port over one end
// of socketpair(AF_UNIX, SOCK_DGRAM), one Ethernet frame per datagram, the
// other end being handed to a userspace network stack (the control
// protocol's RequestUDS). Frames move in batches: recvmmsg into the
// pipeline's buffers, sendmmsg out of them.
//
// Semantics, as the l4.Port contract wants them:
//   - The socket is non-blocking and waits in Go's netpoller (an os.File
//     over it), never in a blocking system call: a thousand idle channels
//     cost a thousand parked goroutines, no thread each. WaitRx waits
//     without buffers until a datagram is queued (it peeks), so the
//     pipeline takes buffers only for frames that are there; Recv waits at
//     most Options.Poll (≤ l4.RecvTimeout). Close wakes both at once. A datagram
//     longer than a buffer is dropped and counted, never delivered cut
//     short.
//   - Send never blocks: when the peer's socket buffer is full (EAGAIN)
//     the frames that did not fit are dropped, which the pipeline counts
//     through the short count.
//   - A Unix datagram socket does not report its peer's close (no POLLHUP),
//     so an idle Recv asks the kernel (sock_diag) whether the peer socket
//     still exists; when it is gone, or a send finds it gone, the port
//     reports it once (Options.OnPeerClosed, PeerClosed) and Recv and Send
//     return l4.ErrPortClosed, so that the owner can detach it.
//
// Listen makes the other kind of port, a static pipe (STATIC_PIPES): a
// Unix datagram socket bound at a path, same framing and batching, whose
// peer is whichever named socket sent to it last (bound.go says exactly).
// It never reports its peer closed; frames for a peer that is not there
// are dropped and counted. Close removes its socket file.
//
// What this package must never do: decide where a frame goes (that is
// package l4), block the pipeline on a slow peer, or read a frame it did
// not receive whole.
package uds
