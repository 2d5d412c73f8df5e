package afpacket

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// txRing is the transmit path that BenchmarkAFPacketSend measured against
// sendmmsg, and that lost (doc.go): a TPACKET_V2 TX ring on a socket set
// up as the port's TX socket (protocol 0, PACKET_QDISC_BYPASS), kicked
// with one sendto per batch. It lives here so that the comparison stays
// reproducible; the port does not use it.
//
// The ring is nframes frames of txFrameSize bytes, each struct
// tpacket2_hdr (tp_status at 0, tp_len at 4) and the frame at txDataOff.
// We fill frames in order from head and mark them TP_STATUS_SEND_REQUEST;
// sendto (MSG_DONTWAIT) sends every requested frame before it returns; a
// frame stays the kernel's (TP_STATUS_SENDING) until its skb is freed. The
// kernel builds the skb from the ring's pages: only the Ethernet header is
// copied into the linear part, the rest are page fragments.
type txRing struct {
	fd      int
	ring    []byte
	nframes uint32
	head    uint32
	pollfds [1]unix.PollFd
	c       txCounters
}

const (
	txFrameSize = 2048
	txDataOff   = 32 // TPACKET_ALIGN(sizeof(struct tpacket2_hdr))
	maxTxLen    = txFrameSize - txDataOff
)

func newTxRing(ifindex, frames int) (t *txRing, err error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	t = &txRing{fd: fd, nframes: uint32(frames)}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	for _, o := range []struct{ level, opt, v int }{
		{unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1},
		{unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2},
		// A frame the kernel cannot send is skipped and given back,
		// instead of stopping the ring.
		{unix.SOL_PACKET, unix.PACKET_LOSS, 1},
		{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4096 * frames},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return t, fmt.Errorf("setsockopt %d: %w", o.opt, err)
		}
	}
	size := frames * txFrameSize
	block := min(size, 64<<10)
	req := unix.TpacketReq{Block_size: uint32(block), Block_nr: uint32(size / block), Frame_size: txFrameSize, Frame_nr: uint32(frames)}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_TX_RING, &req); err != nil {
		return t, fmt.Errorf("PACKET_TX_RING %+v: %w", req, err)
	}
	if t.ring, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return t, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		return t, err
	}
	t.pollfds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
	return t, nil
}

func (t *txRing) close() error {
	var errs []error
	if t.ring != nil {
		errs = append(errs, unix.Munmap(t.ring))
		t.ring = nil
	}
	if t.fd >= 0 {
		errs = append(errs, unix.Close(t.fd))
		t.fd = -1
	}
	return errors.Join(errs...)
}

func (t *txRing) frameStatus(i uint32) *uint32 {
	return (*uint32)(unsafe.Pointer(&t.ring[uint64(i)*txFrameSize]))
}

// send is Port.Send's counterpart: copy into the ring, one kick per round,
// wait up to sendRounds times for frames in flight to come back.
func (t *txRing) send(bufs []*l4.Buf) int {
	var taken, dropped, syscalls, errs uint64
	i := 0
	for round := 0; i < len(bufs) && round <= sendRounds; round++ {
		if round > 0 {
			// POLLOUT on a TX ring: the frame at the kernel's head is free.
			_, _ = unix.Poll(t.pollfds[:], sendWait)
		}
		queued := uint64(0)
		for ; i < len(bufs); i++ {
			l := bufs[i].Len()
			if l == 0 || l > maxTxLen {
				dropped++
				continue
			}
			st := t.frameStatus(t.head)
			if s := atomic.LoadUint32(st); s != unix.TP_STATUS_AVAILABLE && s != unix.TP_STATUS_WRONG_FORMAT {
				break // in flight: the ring is full
			}
			f := t.ring[uint64(t.head)*txFrameSize : uint64(t.head+1)*txFrameSize]
			copy(f[txDataOff:], bufs[i].Bytes())
			ne.PutUint32(f[4:], uint32(l)) // tp_len
			atomic.StoreUint32(st, unix.TP_STATUS_SEND_REQUEST)
			if t.head++; t.head == t.nframes {
				t.head = 0
			}
			queued++
		}
		if queued == 0 {
			continue
		}
		taken += queued
		syscalls++
		if _, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(t.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0); e != 0 && e != unix.EAGAIN && e != unix.ENOBUFS {
			errs++
		}
	}
	t.c.frames.Add(taken)
	t.c.dropped.Add(dropped)
	t.c.full.Add(uint64(len(bufs) - i))
	t.c.syscalls.Add(syscalls)
	t.c.errors.Add(errs)
	return int(taken)
}

// The benchmark's alternative delivers what it sends, in order.
func TestTxRingDelivers(t *testing.T) {
	tl := newTestLab(t, 0)
	var r *txRing
	if err := tl.host.Do(func() (err error) { r, err = newTxRing(tl.veth.A.Index, 64); return err }); err != nil {
		t.Fatal(err)
	}
	defer r.close()
	conn, err := tl.peer.ListenPacket("udp4", netip.AddrPortFrom(tl.peerIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	const n = 200 // more than the ring holds: frames come back after the kick
	sent := 0
	for sent < n {
		bs := bufs(t, 50)
		for i, b := range bs {
			b.SetLen(copy(b.Data(), udpFrame(t, tl.veth.A.MAC, tl.veth.B.MAC, tl.hostIP, 5000, tl.peerIP, to.Port(), payloadOf(sent+i))))
		}
		k := r.send(bs)
		if k != len(bs) {
			t.Fatalf("send: %d of %d (%+v)", k, len(bs), r.c.full.Load())
		}
		sent += k
	}
	buf := make([]byte, 2048)
	for i := range n {
		_ = conn.SetReadDeadline(time.Now().Add(hang))
		k, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("peer read %d: %v", i, err)
		}
		if string(buf[:k]) != string(payloadOf(i)) {
			t.Fatalf("datagram %d: %q", i, buf[:k])
		}
	}
}
