package afpacket

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// sendRounds bounds the waits of one Send: after a full socket buffer,
// Send waits for room (sendWait) at most this often before it gives up on
// the rest.
const sendRounds = 4

// sendWait is how long Send waits for room (milliseconds), each round.
const sendWait = 1

// mmsgBatch is how many messages one sendmmsg carries at most.
const mmsgBatch = 256

// txSock is the port's transmitting AF_PACKET socket. It is bound to the
// interface with protocol 0, so it receives nothing, and sends with
// PACKET_QDISC_BYPASS: frames go straight to the driver, without the
// qdisc and, what matters here, without tc egress, where the firewall's
// learner would take the endpoints' flows for the kernel's.
//
// It sends with sendmmsg, one message and one iovec per frame of a batch
// (each message points at its iovec, once and for all); a TPACKET TX ring
// lost to it in BenchmarkAFPacketSend (doc.go).
type txSock struct {
	fd      int
	pollfds [2]unix.PollFd // the socket (POLLOUT) and the port's eventfd
	msgs    []unix.Mmsghdr
	iovs    []unix.Iovec
	c       txCounters
}

// txCounters are written by the Send caller and read by Stats.
type txCounters struct {
	frames, dropped, full, syscalls, errors atomic.Uint64
}

// newTxSock creates the transmitting socket on ifindex.
func newTxSock(ifindex int) (t *txSock, err error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, fmt.Errorf("socket(AF_PACKET): %w: %w", ErrNotSupported, err)
		}
		return nil, fmt.Errorf("socket(AF_PACKET): %w", err)
	}
	t = &txSock{fd: fd}
	defer func() {
		if err != nil {
			t.close()
			t = nil
		}
	}()
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		return t, fmt.Errorf("PACKET_QDISC_BYPASS: %w: %w", ErrNotSupported, err)
	}
	// Every frame in flight is an skb charged to the socket: room for a
	// few batches of them, at up to 4 KiB of truesize each.
	sndbuf := 4096 * 4 * mmsgBatch
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndbuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)
	}
	t.msgs = make([]unix.Mmsghdr, mmsgBatch)
	t.iovs = make([]unix.Iovec, mmsgBatch)
	for i := range t.msgs {
		t.msgs[i].Hdr.Iov = &t.iovs[i]
		t.msgs[i].Hdr.Iovlen = 1
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: 0, Ifindex: ifindex}); err != nil {
		return t, fmt.Errorf("bind TX socket to ifindex %d: %w", ifindex, err)
	}
	return t, nil
}

// close closes the socket.
func (t *txSock) close() error {
	if t.fd < 0 {
		return nil
	}
	err := unix.Close(t.fd)
	t.fd = -1
	return err
}

// Send implements l4.Port. It hands the frames to the kernel, which sends
// them to the driver directly (PACKET_QDISC_BYPASS), and returns how many
// it took: fewer than len(bufs) when a frame is empty or too long for the
// device (counted as Dropped), the device refused one, or the socket
// buffer stayed full (Full). When there is no room it waits for some, up
// to sendRounds times 1 ms, and Close cuts that wait short.
func (p *Port) Send(bufs []*l4.Buf) (int, error) {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if p.closed.Load() {
		return 0, l4.ErrPortClosed
	}
	return p.tx.send(bufs), nil
}

// send sends the frames with sendmmsg, up to mmsgBatch per call; the
// kernel copies each one into an skb (linear for frames shorter than a
// page) and gives it to the driver before the call returns.
func (t *txSock) send(bufs []*l4.Buf) int {
	var taken, dropped, full, syscalls, errs uint64
	waits := 0
	for i := 0; i < len(bufs); {
		n := 0
		for ; i < len(bufs) && n < len(t.msgs); i++ {
			b := bufs[i]
			if b.Len() == 0 {
				dropped++
				continue
			}
			t.iovs[n].Base = &b.Data()[0]
			t.iovs[n].SetLen(b.Len())
			n++
		}
		for k := 0; k < n; {
			syscalls++
			// msgs, iovs and the frames are Go memory the kernel reads
			// during the call only; the Go heap does not move.
			r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(t.fd), uintptr(unsafe.Pointer(&t.msgs[k])),
				uintptr(n-k), unix.MSG_DONTWAIT, 0, 0)
			switch {
			case e == 0:
				k += int(r)
				taken += uint64(r)
			case e == unix.EAGAIN && waits < sendRounds:
				// The socket buffer is full of frames in flight.
				waits++
				_, _ = unix.Poll(t.pollfds[:], sendWait)
				if t.pollfds[1].Revents != 0 {
					full += uint64(n - k)
					k = n
				}
			case e == unix.EAGAIN || e == unix.ENOBUFS:
				full++ // no room, or the device refused this one
				k++
			case e == unix.EMSGSIZE:
				dropped++ // longer than the device takes
				k++
			default:
				errs++
				full++
				k++
			}
		}
		for j := range n {
			t.iovs[j].Base = nil
		}
	}
	runtime.KeepAlive(bufs)
	t.count(taken, dropped, full, syscalls, errs)
	return int(taken)
}

func (t *txSock) count(taken, dropped, full, syscalls, errs uint64) {
	t.c.frames.Add(taken)
	if dropped+full+errs > 0 {
		t.c.dropped.Add(dropped)
		t.c.full.Add(full)
		t.c.errors.Add(errs)
	}
	t.c.syscalls.Add(syscalls)
}
