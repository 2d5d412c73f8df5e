package afxdp

import (
	"bytes"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// deliverSG plays the kernel's multi-buffer receive: the frame goes into
// as many fill-ring chunks as it needs, each at the headroom, and every
// descriptor but the last carries XDP_PKT_CONTD. publish false leaves the
// RX producer where it was (the kernel has not flushed yet).
func (k *kernelRecv) deliverSG(t *testing.T, frame []byte, publish bool) {
	t.Helper()
	s := k.s
	per := int(s.frame) - unix.XDP_PACKET_HEADROOM
	for off := 0; off < len(frame); off += per {
		if k.fillCons == atomic.LoadUint32(s.fill.producer) {
			t.Fatal("fake kernel: fill ring empty")
		}
		base := s.fill.addrs[k.fillCons&s.fill.mask]
		k.fillCons++
		addr := base + unix.XDP_PACKET_HEADROOM
		c := copy(s.umem[addr:addr+uint64(per)], frame[off:])
		var opts uint32
		if off+c < len(frame) {
			opts = unix.XDP_PKT_CONTD
		}
		s.rx.descs[k.rx&s.rx.mask] = unix.XDPDesc{Addr: addr, Len: uint32(c), Options: opts}
		k.rx++
	}
	if publish {
		atomic.StoreUint32(s.rx.producer, k.rx)
	}
}

func jumbo(n int, seed byte) []byte {
	f := make([]byte, n)
	for i := range f {
		f[i] = seed + byte(i*7)
	}
	return f
}

// TestReceiveMultiBuffer: a 9,018-byte frame in six chunks arrives as one
// buffer; a run whose last chunk is not published yet waits; a frame
// longer than the buffer is dropped whole and its chunks recycled.
func TestReceiveMultiBuffer(t *testing.T) {
	s := fakeXSK(t, 32, 0)
	s.sg = true
	k := &kernelRecv{s: s}
	pool, err := l4.NewBufPool(8, 9088)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]*l4.Buf, 4)
	pool.NewCache().GetBatch(bs)

	big, small := jumbo(9018, 1), []byte("a small frame between two jumbo ones")
	k.deliverSG(t, big, true)
	k.deliverSG(t, small, true)
	k.deliverSG(t, big[:5000], false) // three chunks, only two published:
	atomic.StoreUint32(s.rx.producer, k.rx-1)
	n := s.receive(bs)
	if n != 2 || !bytes.Equal(bs[0].Bytes(), big) || !bytes.Equal(bs[1].Bytes(), small) {
		t.Fatalf("receive = %d (%d, %d bytes), want the jumbo frame and the small one", n, bs[0].Len(), bs[1].Len())
	}
	if len(s.spare) != 7 {
		t.Fatalf("%d chunks recycled, want 7 (the cut-off run stays in the ring)", len(s.spare))
	}
	atomic.StoreUint32(s.rx.producer, k.rx)
	if n := s.receive(bs); n != 1 || !bytes.Equal(bs[0].Bytes(), big[:5000]) {
		t.Fatalf("after the rest was published: %d frames, %d bytes", n, bs[0].Len())
	}
	k.flush()

	// Longer than the buffer: dropped, counted once, chunks back.
	short, err := l4.NewBufPool(2, 4096)
	if err != nil {
		t.Fatal(err)
	}
	sb := make([]*l4.Buf, 1)
	short.NewCache().GetBatch(sb)
	spare, prod := len(s.spare), atomic.LoadUint32(s.fill.producer)
	k.deliverSG(t, big, true)
	if n := s.receive(sb); n != 0 || s.c.rxOversize.Load() != 1 {
		t.Fatalf("oversize: n %d, counted %d", n, s.c.rxOversize.Load())
	}
	if back := len(s.spare) - spare + int(atomic.LoadUint32(s.fill.producer)-prod); back != 6 {
		t.Errorf("%d of the oversize frame's 6 chunks recycled", back)
	}
}

// TestSendMultiBuffer: a jumbo frame goes out as a run of chunks, all but
// the last flagged XDP_PKT_CONTD; it waits whole when the ring has too few
// slots for it; one longer than MaxChunks chunks is refused.
func TestSendMultiBuffer(t *testing.T) {
	s := fakeXSK(t, 4, 8)
	s.sg, s.maxTx = true, MaxChunks*2048
	p := &Port{socks: []*xsk{s}, txs: s, efd: -1}
	pool, err := l4.NewBufPool(4, 40000)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]*l4.Buf, 3)
	pool.NewCache().GetBatch(bs)
	big := jumbo(9018, 3)
	bs[0].SetLen(copy(bs[0].Data(), big))
	bs[1].SetLen(copy(bs[1].Data(), big[:7000]))      // 4 chunks: 5 + 4 > 8 ring slots
	bs[2].SetLen(copy(bs[2].Data(), jumbo(33000, 5))) // 17 chunks: refused
	n, err := p.Send(bs[:1])
	if err != nil || n != 1 {
		t.Fatalf("Send = %d, %v", n, err)
	}
	var got []byte
	for i := range 5 {
		d := s.tx.descs[i]
		if cont := d.Options&unix.XDP_PKT_CONTD != 0; cont != (i < 4) {
			t.Errorf("descriptor %d: options %#x", i, d.Options)
		}
		got = append(got, s.umem[d.Addr:d.Addr+uint64(d.Len)]...)
	}
	if !bytes.Equal(got, big) {
		t.Fatalf("the chunks hold %d bytes that differ from the frame", len(got))
	}
	if n, _ := p.Send(bs[1:3]); n != 0 || s.c.txDropped.Load() != 0 || s.c.txFull.Load() != 2 {
		t.Fatalf("Send without room = %d, dropped %d, full %d", n, s.c.txDropped.Load(), s.c.txFull.Load())
	}
	if n, _ := p.Send(bs[2:3]); n != 0 || s.c.txDropped.Load() != 1 {
		t.Fatalf("Send of %d bytes = %d, dropped %d; want it refused", bs[2].Len(), n, s.c.txDropped.Load())
	}
	if s.tx.local != 5 {
		t.Fatalf("TX producer %d: part of a frame was queued", s.tx.local)
	}
}

// TestJumboVeth: on a veth pair at MTU 9000, in native and in generic XDP
// mode, 8,972-byte UDP datagrams (9,018-byte frames, six chunks each)
// reach the port whole, and frames of that size that the port sends reach
// a socket in the peer namespace.
func TestJumboVeth(t *testing.T) {
	for _, mode := range []struct {
		name  string
		flags link.XDPAttachFlags
	}{{"native", link.XDPDriverMode}, {"generic", link.XDPGenericMode}} {
		t.Run(mode.name, func(t *testing.T) {
			tl := newTestLabMTU(t, 0, 9000)
			p := tl.open(Options{XSKMap: tl.xsks, MaxFrame: 9018})
			tl.attach(mode.flags)
			if !p.MultiBuffer() || p.MaxFrame() != 9018 {
				t.Fatalf("MultiBuffer %v, MaxFrame %d", p.MultiBuffer(), p.MaxFrame())
			}
			conn, err := tl.peer.ListenPacket("udp4", netip.AddrPortFrom(tl.peerIP, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			dst := netip.AddrPortFrom(tl.hostIP, 7777)
			const n = 5
			for i := range n {
				if _, err := conn.WriteTo(jumbo(8972, byte(i)), net.UDPAddrFromAddrPort(dst)); err != nil {
					t.Fatal(err)
				}
			}
			got := recvUDPBig(t, p, dst, n)
			if len(got) != n {
				t.Fatalf("received %d of %d datagrams of 8,972 bytes; stats %+v", len(got), n, p.Stats())
			}
			for i, u := range got {
				if !bytes.Equal(u.Payload, jumbo(8972, byte(i))) {
					t.Errorf("datagram %d: %d bytes, not what was sent", i, len(u.Payload))
				}
			}
			from := conn.LocalAddr().(*net.UDPAddr).AddrPort()
			pool, err := l4.NewBufPool(n, 9088)
			if err != nil {
				t.Fatal(err)
			}
			bs := make([]*l4.Buf, n)
			pool.NewCache().GetBatch(bs)
			for i, b := range bs {
				f := udpFrame(t, tl.veth.A.MAC, tl.veth.B.MAC, tl.hostIP, 7777, tl.peerIP, from.Port(), jumbo(8972, byte(100+i)))
				b.SetLen(copy(b.Data(), f))
			}
			if sent, err := p.Send(bs); err != nil || sent != n {
				t.Fatalf("Send: %d of %d, %v; stats %+v", sent, n, err, p.Stats())
			}
			buf := make([]byte, 65536)
			for i := range n {
				_ = conn.SetReadDeadline(time.Now().Add(hang))
				k, _, err := conn.ReadFrom(buf)
				if err != nil {
					t.Fatalf("peer read %d: %v; stats %+v", i, err, p.Stats())
				}
				if !bytes.Equal(buf[:k], jumbo(8972, byte(100+i))) {
					t.Errorf("peer datagram %d: %d bytes, not what was sent", i, k)
				}
			}
		})
	}
}

// recvUDPBig is recvUDP with buffers for jumbo frames.
func recvUDPBig(t *testing.T, p *Port, dst netip.AddrPort, want int) []parsedUDP {
	t.Helper()
	pool, err := l4.NewBufPool(64, 9088)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]*l4.Buf, 16)
	pool.NewCache().GetBatch(bs)
	var got []parsedUDP
	deadline := time.Now().Add(hang)
	for len(got) < want && time.Now().Before(deadline) {
		n, err := p.Recv(0, bs)
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		for _, b := range bs[:n] {
			if u, ok := testkit.ParseUDP(b.Bytes()); ok && u.Dst == dst {
				u.Payload = bytes.Clone(u.Payload)
				got = append(got, u)
			}
		}
	}
	return got
}
