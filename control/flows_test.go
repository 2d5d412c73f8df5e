package control

import (
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// tcpFlagsFrame builds an Ethernet/IPv4/TCP frame with the flags of flags
// ("S", "F", "R", "A" letters).
func tcpFlagsFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst string, sport, dport uint16, flags string) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Window: 1024}
	for _, c := range flags {
		switch c {
		case 'S':
			tcp.SYN = true
		case 'F':
			tcp.FIN = true
		case 'R':
			tcp.RST = true
		case 'A':
			tcp.ACK = true
		}
	}
	if err := tcp.SetNetworkLayerForChecksum(ip4); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip4, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// drain reads and counts the frames that reach a channel, until the test
// ends.
func drain(t *testing.T, ch *os.File) *atomic.Int64 {
	var n atomic.Int64
	fd, err := unix.Dup(int(ch.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer unix.Close(fd)
		b := make([]byte, 2048)
		for {
			select {
			case <-stop:
				return
			default:
			}
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if k, _ := unix.Poll(p, 50); k == 0 {
				continue
			}
			if p[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 && p[0].Revents&unix.POLLIN == 0 {
				return
			}
			if _, err := unix.Read(fd, b); err == nil {
				n.Add(1)
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return &n
}

// TestConnectionsEndWithTheirFlows is the original client library's
// outgoing connections: 5,000 connects over one client's life, each an
// AddMatch with the full 5-tuple and never a RemoveMatch, at most 100
// open at a time, each ended the way TCP ends (a third each by the peer's
// RST, the client's RST, a FIN each way). Every AddMatch is accepted under the default
// rule limit (1,024): the rules end with their flows. A flow that goes
// quiet without FIN or RST ends after FlowIdle; a listening rule and a
// live connection stay.
func TestConnectionsEndWithTheirFlows(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) {
		c.CheckInterval = 5 * time.Millisecond
		c.FlowLinger = 100 * time.Millisecond
		c.FlowIdle = 3 * time.Second
	})
	c := newRawClient(t, e.path, e.dir)
	ch := c.requestUDS("eth0", os.Getpid())
	got := drain(t, ch)
	const remote = "198.18.1.2"
	if a := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); a != "OK" {
		t.Fatal(a)
	}
	end := func(i int) {
		port := uint16(20000 + i)
		switch i % 3 {
		case 0: // the peer resets
			e.nic.Inject(0, tcpFlagsFrame(t, macRemote, macNIC, remote, localIP, 80, port, "RA"))
			return
		case 1: // the client resets
			if _, err := ch.Write(tcpFlagsFrame(t, macNIC, macRemote, localIP, remote, port, 80, "R")); err != nil {
				t.Fatal(err)
			}
			return
		}
		if _, err := ch.Write(tcpFlagsFrame(t, macNIC, macRemote, localIP, remote, port, 80, "FA")); err != nil {
			t.Fatal(err)
		}
		e.nic.Inject(0, tcpFlagsFrame(t, macRemote, macNIC, remote, localIP, 80, port, "FA"))
	}
	const connects, open = 5000, 100
	refused := 0
	for i := range connects {
		if a := c.ask(matchJSON("AddMatch", localIP, 20000+i, remote, 80, 6)); a != "OK" {
			refused++
			if refused < 5 {
				t.Errorf("connect #%d: AddMatch answered %q", i+1, a)
			}
		}
		// The peer's SYN-ACK reaches the client.
		e.nic.Inject(0, tcpFlagsFrame(t, macRemote, macNIC, remote, localIP, 80, uint16(20000+i), "SA"))
		if i >= open {
			end(i - open)
		}
	}
	if refused > 0 {
		t.Fatalf("%d of %d connects refused", refused, connects)
	}
	// A live connection that keeps talking, and the last ones, ended.
	live := l4.FlowKey(l4.MustParseAddr(localIP), 20000+connects-1, l4.MustParseAddr(remote), 80, l4.ProtoTCP)
	for i := connects - open; i < connects-1; i++ {
		end(i)
	}
	rulesOf := func() (n int) {
		for _, r := range e.rules() {
			if r.Owner.Kind == l4.PortEndpoint && r.Kind == l4.Registered {
				n++
			}
		}
		return n
	}
	// A RST forged by someone off the path ends no connection that still
	// carries frames.
	e.nic.Inject(0, tcpFlagsFrame(t, macRemote, macNIC, remote, localIP, 80, live.LocalPort, "R"))
	deadline := time.Now().Add(10 * time.Second)
	for rulesOf() != 2 && time.Now().Before(deadline) {
		e.nic.Inject(0, tcpFlagsFrame(t, macRemote, macNIC, remote, localIP, 80, live.LocalPort, "A"))
		time.Sleep(20 * time.Millisecond)
	}
	for range 10 { // FlowLinger (100 ms) twice over, with traffic
		e.nic.Inject(0, tcpFlagsFrame(t, macRemote, macNIC, remote, localIP, 80, live.LocalPort, "A"))
		time.Sleep(20 * time.Millisecond)
	}
	if n := rulesOf(); n != 2 {
		t.Fatalf("%d registered rules left, want the listening one and the live connection's", n)
	}
	if _, ok := e.sw.Table.Get(live); !ok {
		t.Fatal("the live connection's rule went")
	}
	if got.Load() < connects {
		t.Errorf("the client got %d frames, want at least the %d SYN-ACKs", got.Load(), connects)
	}
	// The live connection goes quiet: its rule ends after FlowIdle.
	deadline = time.Now().Add(10 * time.Second)
	for rulesOf() != 1 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok := e.sw.Table.Get(live); ok {
		t.Fatal("the idle connection's rule stayed")
	}
	// The listening rule stays and still works; RemoveMatch of an ended
	// connection's rule is a no-op, and the port can be registered again.
	if a := c.ask(matchJSON("AddMatch", localIP, 20000, remote, 80, 6)); a != "OK" {
		t.Errorf("AddMatch of an ended connection's tuple again: %q", a)
	}
	if a := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); a != "ER" {
		t.Errorf("the listening rule went: AddMatch again answered %q", a)
	}
}
