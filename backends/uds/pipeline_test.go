package uds

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

var (
	macNIC    = testkit.NICMAC
	macRemote = testkit.RemoteMAC
)

// tcpFrame builds an Ethernet/IPv4/TCP SYN with gopacket.
func tcpFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst string, sport, dport uint16) []byte {
	t.Helper()
	return testkit.TCP(t, srcMAC, dstMAC, testkit.AddrPort(src, sport), testkit.AddrPort(dst, dport), testkit.SYN, []byte("hello"))
}

// readTimeout reads one datagram from fd, waiting at most d.
func readTimeout(fd int, b []byte, d time.Duration) (int, error) {
	if ok, err := testkit.WaitReadable(fd, d); !ok {
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

// threads returns the number of OS threads of this process.
func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: in /proc/self/status")
	return 0
}

// TestManyIdleChannels attaches 1,000 channels that never send nor read:
// they cost no thread and hold no buffer, while one channel next to them
// sends to the NIC and another gets the NIC's frames.
func TestManyIdleChannels(t *testing.T) {
	const channels = 1000
	sw := l4.NewSwitch(l4.NewTable())
	// What the channels may send from: the NIC's MAC and address.
	sw.SetLocal([]l4.MAC{l4.MAC(macNIC)}, []l4.Addr{l4.MustParseAddr("198.18.0.1")})
	pl, err := l4.NewPipeline(sw, l4.PipelineConfig{Buffers: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	nic := memory.New("eth0", l4.PortNIC, memory.Options{})
	if _, err := pl.AddPort(nic); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	before := threads(t)
	var peers []*os.File
	var owners []l4.Owner
	defer func() {
		for _, p := range peers {
			p.Close()
		}
	}()
	for i := range channels {
		port, peer, err := NewPair(Options{Name: fmt.Sprintf("endpoint %d", i), BufferSize: 256 << 10})
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, peer)
		o, err := pl.AddPort(port)
		if err != nil {
			port.Close()
			t.Fatal(err)
		}
		owners = append(owners, o)
	}
	// Traffic next to them: the first channel sends to the NIC, the NIC
	// sends to the second.
	local := l4.MustParseAddr("198.18.0.1")
	if err := sw.Table.Insert(l4.Rule{Key: l4.ListenKey(local, l4.ProtoTCP, 80), Owner: owners[1], Kind: l4.Registered}); err != nil {
		t.Fatal(err)
	}
	out := tcpFrame(t, macNIC, macRemote, "198.18.0.1", "198.18.1.2", 8081, 40000) // not a privileged port: the channel has no CAP_NET_BIND_SERVICE policy
	in := tcpFrame(t, macRemote, macNIC, "198.18.1.2", "198.18.0.1", 40000, 80)
	const frames = 2000
	rb := make([]byte, 2048)
	for i := range frames {
		if _, err := peers[0].Write(out); err != nil {
			t.Fatal(err)
		}
		nic.Inject(0, in)
		if _, err := readTimeout(int(peers[1].Fd()), rb, 2*time.Second); err != nil {
			t.Fatalf("frame %d from the NIC: %v", i, err)
		}
	}
	if !nic.WaitSent(frames, 5*time.Second) {
		t.Fatalf("the NIC sent %d of %d frames of the sending channel", nic.SentCount(), frames)
	}
	time.Sleep(300 * time.Millisecond) // every worker went back to waiting
	after := threads(t)
	t.Logf("threads: %d before, %d with %d channels", before, after, channels)
	if after > before+16 {
		t.Errorf("threads grew from %d to %d with %d channels", before, after, channels)
	}
	st := pl.Stats().Pool
	// The NIC's worker keeps a batch and a cache; idle channels none.
	if held := st.Bufs - st.SharedFree; held > 64+2*l4.BufCacheBatch {
		t.Errorf("%d of %d buffers held with %d idle channels", held, st.Bufs, channels)
	}
	for _, p := range pl.Stats().Ports {
		if p.Drops[l4.DropNoBuffer] != 0 {
			t.Errorf("port %s: %d no_buffer", p.Name, p.Drops[l4.DropNoBuffer])
		}
	}
}
