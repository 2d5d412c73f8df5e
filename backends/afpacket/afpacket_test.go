package afpacket

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/rs/zerolog"

	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// Datagrams from the peer's socket reach the port; frames the port sends
// reach the peer's socket.
func TestSingleWorker(t *testing.T) {
	tl := newTestLab(t, 0)
	var log bytes.Buffer
	p := tl.open(Options{Logger: zerolog.New(&log)})
	if !strings.Contains(log.String(), `"workers":1`) || !strings.Contains(log.String(), `"block_timeout":1`) {
		t.Errorf("open log line: %s", log.String())
	}
	if p.RxQueues() != 1 || p.Kind() != l4.PortNIC || p.Name() != "eth0" || p.BlockTimeout() != time.Millisecond {
		t.Fatalf("RxQueues %d, Kind %v, Name %q, BlockTimeout %v", p.RxQueues(), p.Kind(), p.Name(), p.BlockTimeout())
	}

	// Peer → port.
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
	got := recvUDP(t, p, dst, n)
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
	if len(st.Queues) != 1 || st.Queues[0].RxFrames < n || st.Tx.Frames != n || st.Tx.Full+st.Tx.Dropped+st.Tx.Errors != 0 {
		t.Errorf("Stats: %+v", st)
	}
	if q := st.Queues[0]; q.Packets < q.RxFrames || q.Drops != 0 || q.RxBlocks == 0 {
		t.Errorf("kernel stats: %+v", q)
	}
	t.Logf("stats: %+v", st)
}

// The fanout group spreads flows over the workers; every datagram reaches
// exactly one worker, and all datagrams of a flow the same one.
func TestFanout(t *testing.T) {
	const queues = 4
	tl := newTestLab(t, queues)
	p := tl.open(Options{})
	if p.RxQueues() != queues {
		t.Fatalf("%d workers on a veth with %d queues, want as many", p.RxQueues(), queues)
	}
	const flows, per = 32, 8
	dst := netip.AddrPortFrom(tl.hostIP, 7777)
	var conns []net.PacketConn
	for range flows {
		c, err := tl.peer.ListenPacket("udp4", netip.AddrPortFrom(tl.peerIP, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for i := range per {
		for _, c := range conns {
			if _, err := c.WriteTo(payloadOf(i), net.UDPAddrFromAddrPort(dst)); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := recvUDP(t, p, dst, flows*per)
	if len(got) != flows*per {
		t.Fatalf("received %d datagrams, want %d (duplicates or losses)", len(got), flows*per)
	}
	worker := map[uint16]int{} // source port → worker
	count := map[uint16]int{}
	used := map[int]bool{}
	for _, r := range got {
		sp := r.Src.Port()
		if w, ok := worker[sp]; ok && w != r.queue {
			t.Errorf("flow from port %d on workers %d and %d", sp, w, r.queue)
		}
		worker[sp] = r.queue
		count[sp]++
		used[r.queue] = true
	}
	for sp, n := range count {
		if n != per {
			t.Errorf("flow from port %d: %d datagrams, want %d", sp, n, per)
		}
	}
	if len(used) < 2 {
		t.Errorf("%d flows all on worker(s) %v: not spread", flows, used)
	}
	t.Logf("%d flows over workers: %v; stats %+v", flows, used, p.Stats().Queues)
}

// Neither the frames the port sends nor those the host's kernel sends come
// back through Recv.
func TestIgnoreOutgoing(t *testing.T) {
	tl := newTestLab(t, 0)
	p := tl.open(Options{})
	// A peer socket that the port's frames and the host's own datagrams go to.
	conn, err := tl.peer.ListenPacket("udp4", netip.AddrPortFrom(tl.peerIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	const n = 10
	bs := bufs(t, n)
	for i, b := range bs {
		b.SetLen(copy(b.Data(), udpFrame(t, tl.veth.A.MAC, tl.veth.B.MAC, tl.hostIP, 5000, tl.peerIP, to.Port(), payloadOf(i))))
	}
	if sent, err := p.Send(bs); sent != n || err != nil {
		t.Fatalf("Send: %d, %v", sent, err)
	}
	hc, err := tl.host.ListenPacket("udp4", netip.AddrPortFrom(tl.hostIP, 5001).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	for i := range n {
		if _, err := hc.WriteTo(payloadOf(i), net.UDPAddrFromAddrPort(to)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2048)
	for i := range 2 * n {
		_ = conn.SetReadDeadline(time.Now().Add(hang))
		if _, _, err := conn.ReadFrom(buf); err != nil {
			t.Fatalf("peer read %d: %v", i, err)
		}
	}
	// Both kinds reached the peer; none may show up here. A marker from
	// the peer tells when everything before it was read.
	marker := netip.AddrPortFrom(tl.hostIP, 6000)
	if _, err := conn.WriteTo([]byte("marker"), net.UDPAddrFromAddrPort(marker)); err != nil {
		t.Fatal(err)
	}
	rb := bufs(t, 64)
	deadline := time.Now().Add(hang)
	for seen := false; !seen && time.Now().Before(deadline); {
		k, err := p.Recv(0, rb)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range rb[:k] {
			u, ok := testkit.ParseUDP(b.Bytes())
			switch {
			case !ok:
			case u.Dst == marker:
				seen = true
			case u.Dst == to:
				t.Errorf("Recv got an outgoing frame: %v → %v %q", u.Src, u.Dst, u.Payload)
			}
		}
	}
}

// A VLAN tag that the kernel took out of the frame (into the skb) before
// the taps is back in the frame that Recv returns.
func TestVLANTagRestored(t *testing.T) {
	tl := newTestLab(t, 0)
	p := tl.open(Options{})
	peer := tl.openPeer(Options{})
	f := udpFrame(t, tl.veth.B.MAC, tl.veth.A.MAC, tl.peerIP, 5000, tl.hostIP, 7000, []byte("tagged"))
	tagged := append(append(append([]byte{}, f[:12]...), 0x81, 0x00, 0x20, 0x2a), f[12:]...) // PCP 1, VID 42
	b := bufs(t, 1)
	b[0].SetLen(copy(b[0].Data(), tagged))
	if n, err := peer.Send(b); n != 1 || err != nil {
		t.Fatalf("peer Send: %d, %v", n, err)
	}
	got := recvUDP(t, p, netip.AddrPortFrom(tl.hostIP, 7000), 1)
	if len(got) != 1 || got[0].VLAN != 42 || string(got[0].Payload) != "tagged" {
		t.Fatalf("got %+v", got)
	}
	rb := bufs(t, 1)
	_ = rb
	if st := p.Stats().Queues[0]; st.RxVLAN != 1 {
		t.Errorf("RxVLAN %d, want 1", st.RxVLAN)
	}
}

// Recv must come back from its poll when the port is closed, and
// everything after Close says so.
func TestCloseWakesRecv(t *testing.T) {
	tl := newTestLab(t, 0)
	p := tl.open(Options{})
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
	if st := p.Stats(); len(st.Queues) != 1 {
		t.Errorf("Stats after Close: %+v", st)
	}
}

func TestOpenErrors(t *testing.T) {
	tl := newTestLab(t, 2)
	for _, c := range []struct {
		opt  Options
		want error
	}{
		{Options{Interface: "nosuch0"}, ErrNoInterface},
		{Options{Workers: -1}, ErrOptions},
		{Options{Workers: 1000}, ErrOptions},
		{Options{BlockSize: 3 << 12}, ErrOptions},
		{Options{BlockSize: 4096}, ErrOptions},
		{Options{Blocks: 1}, ErrOptions},
		{Options{BlockTimeout: 500 * time.Microsecond}, ErrOptions},
		{Options{BlockTimeout: 1500 * time.Microsecond}, ErrOptions},
	} {
		if _, err := tl.tryOpen(c.opt); !errors.Is(err, c.want) {
			t.Errorf("%+v: %v, want %v", c.opt, err, c.want)
		}
	}
	if _, err := net.InterfaceByName("eth0"); err != nil {
		if _, err := Open(Options{Interface: "eth0"}); !errors.Is(err, ErrNoInterface) {
			t.Errorf("eth0 outside the lab: %v", err)
		}
	}
	// Two ports on one interface are two fanout groups: both get every
	// frame (unlike AF_XDP, nothing is exclusive here).
	p1 := tl.open(Options{})
	p2 := tl.open(Options{Workers: 3})
	if p1.RxQueues() != 2 || p2.RxQueues() != 3 || p1.FanoutID() == p2.FanoutID() {
		t.Errorf("workers %d and %d, fanout groups %d and %d", p1.RxQueues(), p2.RxQueues(), p1.FanoutID(), p2.FanoutID())
	}
	if _, err := p1.Recv(2, bufs(t, 1)); !errors.Is(err, ErrQueueRange) {
		t.Errorf("Recv(2): %v", err)
	}
}

// Frames with a checksum left to offload (the peer's kernel sends them so
// over veth) are counted, and passed on as they are.
func TestChecksumPartialCounted(t *testing.T) {
	tl := newTestLab(t, 0)
	p := tl.open(Options{})
	// A TCP SYN from the peer's kernel (the host answers with RST; that
	// does not matter here).
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if c, err := tl.peer.Dial(ctx, "tcp4", netip.AddrPortFrom(tl.hostIP, 9).String()); err == nil {
			c.Close()
		}
	}()
	rb := bufs(t, 64)
	deadline := time.Now().Add(hang)
	for time.Now().Before(deadline) {
		n, err := p.Recv(0, rb)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range rb[:n] {
			pkt := gopacket.NewPacket(b.Bytes(), layers.LayerTypeEthernet, gopacket.Default)
			if tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && tcp.SYN && !tcp.ACK {
				t.Logf("SYN, stats %+v", p.Stats().Queues[0])
				return
			}
		}
	}
	t.Fatal("no SYN seen")
}
