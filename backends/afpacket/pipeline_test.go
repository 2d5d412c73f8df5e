package afpacket

import (
	"bytes"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// TestPipeline runs the real l4 pipeline with the AF_PACKET port as its NIC
// and a memory endpoint that listens on a UDP port of the host's address:
// datagrams from the peer reach the endpoint, and a frame the endpoint
// sends reaches the peer's socket through the NIC port.
func TestPipeline(t *testing.T) {
	tl := newTestLab(t, 2)
	goroutines := runtime.NumGoroutine()
	var mac l4.MAC
	copy(mac[:], tl.veth.A.MAC)
	sw := l4.NewSwitch(l4.NewTable(), mac)
	sw.SetLocal([]l4.MAC{mac}, []l4.Addr{l4.AddrFromNetip(tl.hostIP)}) // what the endpoint may send from
	pl, err := l4.NewPipeline(sw, l4.PipelineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	nic := tl.open(Options{})
	if _, err := pl.AddPort(nic); err != nil {
		t.Fatal(err)
	}
	ep := memory.New("endpoint", l4.PortEndpoint, memory.Options{Keep: true, Poll: 5 * time.Millisecond})
	epID, err := pl.AddPort(ep)
	if err != nil {
		t.Fatal(err)
	}
	const port = 7777
	local := l4.AddrFromNetip(tl.hostIP)
	if err := sw.Table.Insert(l4.Rule{Key: l4.ListenKey(local, 17, port), Owner: epID, Kind: l4.Registered}); err != nil {
		t.Fatal(err)
	}

	// Peer → NIC port → pipeline → endpoint.
	conn, err := tl.peer.ListenPacket("udp4", netip.AddrPortFrom(tl.peerIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := netip.AddrPortFrom(tl.hostIP, port)
	const n = 10
	for i := range n {
		if _, err := conn.WriteTo(payloadOf(i), net.UDPAddrFromAddrPort(dst)); err != nil {
			t.Fatal(err)
		}
	}
	// The endpoint also gets the peer's ARP request (ARP is mirrored to
	// every port: unlike the AF_XDP lab, this one has no static neighbour
	// entry); count the datagrams.
	var got int
	deadline := time.Now().Add(hang)
	for got < n && time.Now().Before(deadline) {
		got = 0
		for _, f := range ep.Sent() {
			u, ok := testkit.ParseUDP(f)
			if !ok {
				continue
			}
			if u.Dst != dst {
				t.Fatalf("endpoint got a datagram that is not for %v: % x", dst, f)
			}
			if !bytes.Equal(u.Payload, payloadOf(got)) {
				t.Fatalf("datagram %d: %q", got, u.Payload)
			}
			got++
		}
		time.Sleep(time.Millisecond)
	}
	if got != n {
		t.Errorf("endpoint got %d datagrams for %v, want %d", got, dst, n)
	}

	// Endpoint → pipeline → NIC port → peer.
	from := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	for i := range n {
		f := udpFrame(t, tl.veth.A.MAC, tl.veth.B.MAC, tl.hostIP, port, tl.peerIP, from.Port(), payloadOf(100+i))
		if !ep.Inject(0, f) {
			t.Fatal("Inject refused")
		}
	}
	buf := make([]byte, 2048)
	for i := range n {
		_ = conn.SetReadDeadline(time.Now().Add(hang))
		k, addr, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("peer read %d: %v", i, err)
		}
		if !bytes.Equal(buf[:k], payloadOf(100+i)) || addr.(*net.UDPAddr).AddrPort() != dst {
			t.Errorf("peer got %q from %v", buf[:k], addr)
		}
	}

	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	if st := pl.Pool().Stats(); st.SharedFree != st.Bufs || st.DoubleFree != 0 {
		t.Errorf("after Close: %+v", st)
	}
	deadline = time.Now().Add(hang)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > goroutines {
		t.Errorf("%d goroutines after Close, %d before", g, goroutines)
	}
	t.Logf("NIC stats: %+v", nic.Stats())
}
