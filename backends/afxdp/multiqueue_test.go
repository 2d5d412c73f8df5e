package afxdp

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/usnetd/usnetd/internal/testkit"
)

// TestMultiQueue opens a port on both queues of a two-queue veth and sends
// datagrams of many flows from the peer. A veth delivers a frame on the RX
// queue numbered like the peer's TX queue, which the peer picks by flow
// hash, so the flows spread over both queues; each socket only ever sees
// its own queue's frames (the XDP program redirects by rx_queue_index and
// the kernel refuses a frame from another queue), so a frame received on
// queue q arrived on queue q.
//
// That holds with native XDP, where the veth's NAPI runs per RX queue. With
// generic XDP every frame showed up on queue 0 (the skb's recorded queue
// is not the peer's TX queue on that path), so only native mode asserts
// that both queues receive; generic mode checks that nothing is lost.
func TestMultiQueue(t *testing.T) {
	for _, m := range []struct {
		name  string
		flags link.XDPAttachFlags
	}{{"native", link.XDPDriverMode}, {"generic", link.XDPGenericMode}} {
		t.Run(m.name, func(t *testing.T) {
			tl := newTestLab(t, 2)
			p := tl.open(Options{XSKMap: tl.xsks})
			if p.RxQueues() != 2 {
				t.Fatalf("RxQueues() = %d, want 2 (all queues of the veth)", p.RxQueues())
			}
			tl.attach(m.flags)

			const flows, per = 32, 4
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
			// Receive on both queues at once, as the pipeline's RX workers do.
			var (
				wg     sync.WaitGroup
				mu     sync.Mutex
				counts [2]int
				total  int
				stop   = make(chan struct{})
			)
			for q := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
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
								mu.Lock()
								counts[q]++
								total++
								mu.Unlock()
							}
						}
					}
				}()
			}
			for i := range per {
				for _, c := range conns {
					if _, err := c.WriteTo(payloadOf(i), net.UDPAddrFromAddrPort(dst)); err != nil {
						t.Fatal(err)
					}
				}
			}
			deadline := time.Now().Add(hang)
			for {
				mu.Lock()
				n := total
				mu.Unlock()
				if n >= flows*per || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			close(stop)
			wg.Wait()
			t.Logf("%s XDP: queue 0 got %d, queue 1 got %d of %d datagrams (%d flows)", m.name, counts[0], counts[1], flows*per, flows)
			if total != flows*per {
				t.Fatalf("received %d of %d datagrams", total, flows*per)
			}
			if m.flags == link.XDPDriverMode && (counts[0] == 0 || counts[1] == 0) {
				t.Errorf("native XDP: all %d flows on one queue: %v", flows, counts)
			}
			for _, st := range p.Stats() {
				if st.RxDropped != 0 || st.RxRingFull != 0 {
					t.Errorf("queue %d dropped: %+v", st.Queue, st)
				}
			}
		})
	}
}

// TestRebind opens and closes a port on both queues 20 times, each time
// right after the last close (bind retries the EBUSY of the asynchronous
// teardown), and checks that no fd is left behind.
func TestRebind(t *testing.T) {
	tl := newTestLab(t, 2)
	tl.attach(0)
	p := tl.open(Options{XSKMap: tl.xsks}) // warms up lazily opened fds (netlink, ...)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	before := testkit.OpenFDs(t)
	busy := bindBusy.Load()
	start := time.Now()
	for i := range 20 {
		p, err := tl.tryOpen(Options{XSKMap: tl.xsks})
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if p.RxQueues() != 2 {
			t.Fatalf("cycle %d: %d queues", i, p.RxQueues())
		}
		if err := p.Close(); err != nil {
			t.Fatalf("cycle %d: Close: %v", i, err)
		}
	}
	t.Logf("20 open/close cycles of 2 queues in %v; bind met EBUSY and retried %d times",
		time.Since(start).Round(time.Millisecond), bindBusy.Load()-busy)
	if after := testkit.OpenFDs(t); after != before {
		t.Errorf("%d fds open before the cycles, %d after", before, after)
	}
}
