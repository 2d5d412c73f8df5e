package l4

import "errors"

// The port contract: what a backend implements to be a switch port.
//
// A port moves frames in and out of one thing (a NIC, the kernel path, an
// endpoint's channel). It has RxQueues receive queues, each read by one RX
// worker goroutine, and one transmit side, written by one TX goroutine.
// Frames travel as *Buf references into the pipeline's BufPool.
//
// Concurrency: Recv(q, …) is called by one goroutine per queue q, Send by
// one goroutine, and Close by the pipeline once, from yet another goroutine;
// Close must make blocked Recv and Send calls return promptly.
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
	// 100 ms passed (0, nil), so that the worker can notice a stop.
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

// ErrPortClosed is returned by Recv and Send of a closed port.
var ErrPortClosed = errors.New("port closed")
