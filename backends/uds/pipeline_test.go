package uds

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/memory"
	l4 "github.com/usnetd/usnetd/switch"
)

var (
	macNIC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macRemote = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
)

// tcpFrame builds an Ethernet/IPv4/TCP frame with gopacket.
func tcpFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst string, sport, dport uint16) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true, Window: 1024}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload("hello")); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readTimeout reads one datagram from fd, waiting at most d.
func readTimeout(fd int, b []byte, d time.Duration) (int, error) {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, int(d/time.Millisecond)); err != nil || n == 0 {
		return 0, fmt.Errorf("nothing to read within %v (%v)", d, err)
	}
	return unix.Read(fd, b)
}

// TestInPipeline: a uds port as an endpoint of a switch domain with an
// in-memory NIC: frames flow both ways; the peer's close detaches it.
func TestInPipeline(t *testing.T) {
	sw := l4.NewSwitch(l4.NewTable())
	// What the endpoint may send from: the NIC's MAC and address.
	sw.SetLocal([]l4.MAC{l4.MAC(macNIC)}, []l4.Addr{l4.MustParseAddr("198.18.0.1")})
	pl, err := l4.NewPipeline(sw, l4.PipelineConfig{Buffers: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	nic := memory.New("eth0", l4.PortNIC, memory.Options{Keep: true})
	if _, err := pl.AddPort(nic); err != nil {
		t.Fatal(err)
	}
	gone := make(chan struct{})
	port, peer, err := NewPair(Options{Name: "endpoint 1", OnPeerClosed: func() { close(gone) }})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	owner, err := pl.AddPort(port)
	if err != nil {
		port.Close()
		t.Fatal(err)
	}
	local := l4.MustParseAddr("198.18.0.1")
	if err := sw.Table.Insert(l4.Rule{Key: l4.ListenKey(local, l4.ProtoTCP, 80), Owner: owner, Kind: l4.Registered}); err != nil {
		t.Fatal(err)
	}

	// NIC -> endpoint.
	in := tcpFrame(t, macRemote, macNIC, "198.18.1.2", "198.18.0.1", 40000, 80)
	nic.Inject(0, in)
	rb := make([]byte, 2048)
	n, err := readTimeout(int(peer.Fd()), rb, 2*time.Second)
	if err != nil || !bytes.Equal(rb[:n], in) {
		t.Fatalf("the endpoint read %d bytes, %v; want the injected frame", n, err)
	}

	// Endpoint -> NIC (the remote's MAC is not local: uplink).
	out := tcpFrame(t, macNIC, macRemote, "198.18.0.1", "198.18.1.2", 80, 40000)
	if _, err := peer.Write(out); err != nil {
		t.Fatal(err)
	}
	if !nic.WaitSent(1, 2*time.Second) || !bytes.Equal(nic.Sent()[0], out) {
		t.Fatal("the endpoint's frame did not leave through the NIC")
	}

	// The peer closes: noticed, and the owner detaches the port.
	peer.Close()
	select {
	case <-gone:
	case <-time.After(time.Second):
		t.Fatal("the peer's close was not reported within 1 s")
	}
	if err := pl.RemovePort(owner.Port); err != nil {
		t.Fatal(err)
	}
	if n := sw.Table.Len(); n != 0 {
		t.Errorf("%d rules left after RemovePort", n)
	}
}
