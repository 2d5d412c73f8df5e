package afpacket

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// The lab of these tests: namespace "host" holds the NIC (veth end eth0)
// and the port; namespace "peer" holds the other end, where ordinary
// sockets send and receive. No firewall runs here: the host's kernel sees
// every frame too (and answers ARP, so the peer needs no static neighbour
// entry); these tests are about moving frames, the firewall's own tests
// about what the kernel may see.

// hang bounds waits that only detect a hang; nothing asserts a speed.
const hang = 10 * time.Second

type testLab struct {
	t              testing.TB
	lab            *netlab.Lab
	host, peer     *netlab.NS
	veth           *netlab.Veth
	hostIP, peerIP netip.Addr
}

// newTestLab builds the two namespaces and the veth pair with queues
// queues (0: the kernel's default of one), and addresses.
func newTestLab(t testing.TB, queues int) *testLab {
	t.Helper()
	p, err := netlab.NewPair(t, netlab.PairOpts{Veth: netlab.VethOpts{Queues: queues}})
	if err != nil {
		t.Fatal(err)
	}
	return &testLab{t: t, lab: p.Lab, host: p.Host, peer: p.Peer, veth: p.Veth, hostIP: p.HostIP, peerIP: p.PeerIP}
}

// open opens a port on the host's eth0 inside the host namespace.
func (tl *testLab) open(opt Options) *Port {
	tl.t.Helper()
	p, err := tl.tryOpen(opt)
	if err != nil {
		tl.t.Fatal(err)
	}
	tl.t.Cleanup(func() { p.Close() })
	return p
}

func (tl *testLab) tryOpen(opt Options) (*Port, error) {
	if opt.Interface == "" {
		opt.Interface = tl.veth.A.Name
	}
	var p *Port
	err := tl.host.Do(func() (err error) {
		p, err = Open(opt)
		return err
	})
	return p, err
}

// openPeer opens a port on the peer's end, for tests that send raw frames
// from there.
func (tl *testLab) openPeer(opt Options) *Port {
	tl.t.Helper()
	opt.Interface = tl.veth.B.Name
	var p *Port
	err := tl.peer.Do(func() (err error) {
		p, err = Open(opt)
		return err
	})
	if err != nil {
		tl.t.Fatal(err)
	}
	tl.t.Cleanup(func() { p.Close() })
	return p
}

// udpFrame builds an Ethernet/IPv4/UDP frame with correct checksums.
func udpFrame(t testing.TB, src, dst net.HardwareAddr, sip netip.Addr, sport uint16, dip netip.Addr, dport uint16, payload []byte) []byte {
	t.Helper()
	return testkit.UDP(t, src, dst, netip.AddrPortFrom(sip, sport), netip.AddrPortFrom(dip, dport), payload)
}

// parsedUDP is what a test wants to know about a received frame.
type parsedUDP = testkit.UDPInfo

// bufs returns n buffers of a fresh pool.
func bufs(t testing.TB, n int) []*l4.Buf {
	t.Helper()
	pool, err := l4.NewBufPool(n, 0)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]*l4.Buf, n)
	if got := pool.NewCache().GetBatch(bs); got != n {
		t.Fatalf("got %d of %d buffers", got, n)
	}
	return bs
}

func payloadOf(i int) []byte { return []byte(fmt.Sprintf("afpacket test datagram %04d", i)) }

// received is a UDP datagram and the worker that got it.
type received struct {
	parsedUDP
	queue int
}

// recvUDP reads every worker of p (one goroutine each) until it has want
// UDP datagrams to dst (other frames are skipped) or hang passes, then
// stops the readers and returns what they got.
func recvUDP(t testing.TB, p *Port, dst netip.AddrPort, want int) []received {
	t.Helper()
	got := make(chan received, want+1024)
	stop := make(chan struct{})
	done := make(chan struct{})
	for q := range p.RxQueues() {
		go func() {
			defer func() { done <- struct{}{} }()
			bs := bufs(t, 64)
			for {
				select {
				case <-stop:
					return
				default:
				}
				n, err := p.Recv(q, bs)
				if err != nil {
					t.Errorf("Recv(%d): %v", q, err)
					return
				}
				for _, b := range bs[:n] {
					if u, ok := testkit.ParseUDP(b.Bytes()); ok && u.Dst == dst {
						got <- received{u, q}
					}
				}
			}
		}()
	}
	var out []received
	deadline := time.After(hang)
loop:
	for len(out) < want {
		select {
		case r := <-got:
			out = append(out, r)
		case <-deadline:
			break loop
		}
	}
	close(stop)
	for range p.RxQueues() {
		<-done
	}
	// Whatever came after want (duplicates, say) counts too.
	for {
		select {
		case r := <-got:
			out = append(out, r)
		default:
			return out
		}
	}
}
