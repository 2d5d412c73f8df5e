package afxdp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// recvUDP receives on queue q until it has want UDP datagrams to dst (other
// frames, e.g. IPv6 neighbour discovery, are skipped) or hang passes.
func recvUDP(t *testing.T, p *Port, q int, dst netip.AddrPort, want int) []parsedUDP {
	t.Helper()
	bs := bufs(t, 64)
	var got []parsedUDP
	deadline := time.Now().Add(hang)
	for len(got) < want && time.Now().Before(deadline) {
		n, err := p.Recv(q, bs)
		if err != nil {
			t.Fatalf("Recv(%d): %v", q, err)
		}
		for _, b := range bs[:n] {
			if u, ok := testkit.ParseUDP(b.Bytes()); ok && u.Dst == dst {
				got = append(got, u)
			}
		}
	}
	return got
}

func TestSingleQueue(t *testing.T) {
	tl := newTestLab(t, 0)
	var log bytes.Buffer
	p := tl.open(Options{XSKMap: tl.xsks, Logger: zerolog.New(&log)})
	tl.attach(0)
	if !strings.Contains(log.String(), `"mode":"copy"`) || !strings.Contains(log.String(), `"queue_count_from":"ethtool channels"`) {
		t.Errorf("open log line: %s", log.String())
	}
	if p.RxQueues() != 1 || p.Kind() != l4.PortNIC || p.Name() != "eth0" {
		t.Fatalf("RxQueues %d, Kind %v, Name %q", p.RxQueues(), p.Kind(), p.Name())
	}
	if m := p.Mode(); m != "copy" {
		t.Errorf("Mode() = %q on veth, want copy", m)
	}
	t.Logf("mode %s, tx queue %d", p.Mode(), p.TxQueue())

	// Peer → port: datagrams from a socket in the peer namespace.
	const port = 7777
	conn, err := tl.peer.ListenPacket("udp4", netip.AddrPortFrom(tl.peerIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := netip.AddrPortFrom(tl.hostIP, port)
	const n = 20
	for i := range n {
		if _, err := conn.WriteTo(payloadOf(i), net.UDPAddrFromAddrPort(dst)); err != nil {
			t.Fatal(err)
		}
	}
	got := recvUDP(t, p, 0, dst, n)
	if len(got) != n {
		t.Fatalf("received %d of %d datagrams", len(got), n)
	}
	from := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	for i, u := range got {
		if !bytes.Equal(u.Payload, payloadOf(i)) {
			t.Errorf("datagram %d: payload %q, want %q", i, u.Payload, payloadOf(i))
		}
		if u.Src.Port() != from.Port() || u.Src.Addr() != tl.peerIP {
			t.Errorf("datagram %d from %v, want %v", i, u.Src, from)
		}
		if !bytes.Equal(u.DstMAC, tl.veth.A.MAC) || !bytes.Equal(u.SrcMAC, tl.veth.B.MAC) {
			t.Errorf("datagram %d: MACs %v → %v", i, u.SrcMAC, u.DstMAC)
		}
	}

	// Port → peer: hand-built frames to the peer's MAC and address.
	bs := bufs(t, n)
	for i, b := range bs {
		f := udpFrame(t, tl.veth.A.MAC, tl.veth.B.MAC, tl.hostIP, port, tl.peerIP, from.Port(), payloadOf(100+i))
		b.SetLen(copy(b.Data(), f))
	}
	sent, err := p.Send(bs)
	if err != nil || sent != n {
		t.Fatalf("Send: %d of %d, %v", sent, n, err)
	}
	buf := make([]byte, 2048)
	for i := range n {
		_ = conn.SetReadDeadline(time.Now().Add(hang))
		k, addr, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("peer read %d: %v", i, err)
		}
		if !bytes.Equal(buf[:k], payloadOf(100+i)) {
			t.Errorf("peer got %q, want %q", buf[:k], payloadOf(100+i))
		}
		if a := addr.(*net.UDPAddr).AddrPort(); a != dst {
			t.Errorf("peer got a datagram from %v, want %v", a, dst)
		}
	}

	st := p.Stats()
	if len(st) != 1 || st[0].RxFrames < n || st[0].TxFrames != n || st[0].ZeroCopy {
		t.Errorf("Stats: %+v", st)
	}
	t.Logf("stats: %+v", st[0])
}

// Recv must come back from its poll when the port is closed.
func TestCloseWakesRecv(t *testing.T) {
	tl := newTestLab(t, 0)
	p := tl.open(Options{XSKMap: tl.xsks})
	done := make(chan error, 1)
	go func() {
		bs := bufs(t, 8)
		for {
			if _, err := p.Recv(0, bs); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, l4.ErrPortClosed) {
			t.Fatalf("Recv after Close: %v", err)
		}
	case <-time.After(hang):
		t.Fatal("Recv did not return after Close")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := p.Send(bufs(t, 1)); !errors.Is(err, l4.ErrPortClosed) {
		t.Errorf("Send after Close: %v", err)
	}
	if p.QueueFDs() != nil {
		t.Error("QueueFDs after Close")
	}
	if st := p.Stats(); len(st) != 1 {
		t.Errorf("Stats after Close: %+v", st)
	}
}

func TestOpenErrors(t *testing.T) {
	tl := newTestLab(t, 2)
	if _, err := tl.tryOpen(Options{Interface: "nosuch0"}); !errors.Is(err, ErrNoInterface) {
		t.Errorf("missing interface: %v", err)
	}
	if _, err := tl.tryOpen(Options{Queues: 3}); !errors.Is(err, ErrQueueRange) {
		t.Errorf("3 queues of 2: %v", err)
	}
	if _, err := tl.tryOpen(Options{FrameSize: 3000}); !errors.Is(err, ErrOptions) {
		t.Errorf("frame size 3000: %v", err)
	}
	if _, err := tl.tryOpen(Options{RingSize: 1000}); !errors.Is(err, ErrOptions) {
		t.Errorf("ring size 1000: %v", err)
	}
	// The host's eth0 is not in the root namespace: Open there must not
	// find it (unless the root namespace happens to have an eth0).
	if _, err := net.InterfaceByName("eth0"); err != nil {
		if _, err := Open(Options{Interface: "eth0"}); !errors.Is(err, ErrNoInterface) {
			t.Errorf("eth0 outside the lab: %v", err)
		}
	}
	// A queue held by another socket: EBUSY, retried, then ErrQueueBusy.
	p := tl.open(Options{Queues: 1})
	if _, err := tl.tryOpen(Options{Queues: 1}); !errors.Is(err, ErrQueueBusy) || !errors.Is(err, unix.EBUSY) {
		t.Errorf("queue 0 twice: %v", err)
	}
	p.Close()
	p2 := tl.open(Options{Queues: 2, ForceCopy: true})
	if p2.RxQueues() != 2 || p2.Mode() != "copy" {
		t.Errorf("2 queues: %d, mode %s", p2.RxQueues(), p2.Mode())
	}
	if _, err := p2.Recv(2, bufs(t, 1)); !errors.Is(err, ErrQueueRange) {
		t.Errorf("Recv(2): %v", err)
	}
	if fds := p2.QueueFDs(); len(fds) != 2 || fds[0] == fds[1] {
		t.Errorf("QueueFDs: %v", fds)
	}
}
