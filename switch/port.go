package l4

import (
	"errors"
	"time"
)

// RecvTimeout is the longest a Port's Recv may block with no frame before
// it returns (0, nil), so that its worker notices a stop: the poll
// interval of the port contract. Every backend waits exactly this long.
const RecvTimeout = 100 * time.Millisecond

// RecvTimeoutMillis is RecvTimeout in milliseconds, for poll(2).
const RecvTimeoutMillis = int(RecvTimeout / time.Millisecond)

// The port contract: what a backend implements to be a switch port.
//
// A port moves frames in and out of one thing (a NIC, the kernel path, an
// endpoint's channel). It has RxQueues receive queues, each read by one RX
// worker goroutine, and one transmit side, written by one TX goroutine.
// Frames travel as *Buf references into the pipeline's BufPool, in
// batches: a backend receives and sends a whole batch with one system call
// where the device allows it (recvmmsg and sendmmsg, a ring).
//
// Threads. Only the RX workers of the NIC port are locked to OS threads
// (and may be pinned to CPUs): there are as many as the NIC has queues. The
// RX workers of every other port, and every TX goroutine, are plain
// goroutines; a backend of such a port must wait in Go's netpoller (an
// *os.File or syscall.RawConn over a non-blocking descriptor), never in a
// blocking system call, so that a thousand idle channels cost a thousand
// parked goroutines and no thread each.
//
// Buffers. The RX worker of a non-NIC port that implements RxWaiter (every
// endpoint should) asks it to wait for frames first, with no buffer held,
// and takes a batch from the pool only when WaitRx says frames are queued,
// so an idle channel holds none. The NIC's workers, and those of ports
// without RxWaiter, hand Recv a batch of buffers that it holds while it
// waits (the NIC has few queues). The
// workers of non-NIC ports take buffers only above the pool's reserve
// (BufPool.SetReserve), which keeps the NIC's receive path supplied.
//
// Concurrency: Recv(q, …) and WaitRx(q, …) are called by one goroutine per
// queue q, Send by one goroutine, and Close by the pipeline once, from yet
// another goroutine; Close must make blocked WaitRx, Recv and Send calls
// return promptly.
type Port interface {
	// Name is the port's name for logs and metrics ("eth0/q0",
	// "endpoint 12 (pid 4242)").
	Name() string
	// Kind says what the port stands for.
	Kind() PortKind
	// RxQueues is the number of receive queues: one RX worker each.
	RxQueues() int
	// Recv receives up to len(bufs) frames on queue q into the buffers
	// (into b.Data(), then b.SetLen) and returns how many it filled, in
	// order from bufs[0]. It blocks until at least one frame arrived, the
	// port is closed (ErrPortClosed), or a poll interval of at most
	// RecvTimeout passed (0, nil), so that the worker can notice a stop. After
	// WaitRx reported frames ready it returns at once.
	Recv(q int, bufs []*Buf) (int, error)
	// Send transmits the frames and returns how many the backend took.
	// The caller keeps its references and releases every buffer after
	// Send returns; a backend that needs a frame longer copies it. Send
	// may block while the device is busy, which holds up only this port's
	// TX goroutine; frames for it then wait in its rings or are dropped
	// there, and no other port slows down.
	Send(bufs []*Buf) (int, error)
	// Close releases the port's resources and makes Recv and Send return.
	Close() error
}

// RxWaiter is implemented by ports that can wait for frames without
// holding buffers: the pipeline then calls WaitRx before it takes a batch
// of buffers for Recv, so that an idle port holds none.
type RxWaiter interface {
	// WaitRx blocks until queue q has at least one frame ready (true),
	// the port is closed (ErrPortClosed, promptly), or a poll interval
	// of at most a second passed (false, nil). When it is about to block it calls idle
	// (if not nil) once first: the worker gives its cached buffers back
	// then. A frame that WaitRx reported stays queued for the next Recv.
	WaitRx(q int, idle func()) (bool, error)
}

// HostPath is implemented by a kernel port (PortKernel) that lies beside a
// NIC whose frames the kernel gets directly: usnetd's TAP with the AF_XDP
// and AF_PACKET backends, where an eBPF program passes the kernel's frames
// from the NIC and sends the kernel's own to the wire. The kernel has, and
// the wire got, what such a port would otherwise carry twice: a flooded
// frame from the NIC does not go to it, and frames from it do not go out
// of the NIC (a flooded one goes to the other ports only; one for the
// uplink is dropped, DropNoMatch). Forwarded frames from the NIC reach it
// (the kernel's fragments that came before their first).
type HostPath interface {
	// HostPath reports whether the port is such a port.
	HostPath() bool
}

// ErrPortClosed is returned by Recv and Send of a closed port.
var ErrPortClosed = errors.New("port closed")
