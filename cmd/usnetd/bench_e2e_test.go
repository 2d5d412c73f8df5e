package main

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/afpacket"
	"github.com/usnetd/usnetd/backends/afxdp"
	"github.com/usnetd/usnetd/backends/uds"
	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/firewall"
	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
	l4 "github.com/usnetd/usnetd/switch"
)

// End-to-end benchmarks in the netns lab. Each runs its variants in one
// benchmark run, so their ratio means something on this shared 2-core VM;
// the absolute numbers do not.

// BenchmarkE2EKernelTCP: TCP goodput of a kernel-to-kernel transfer
// (iperf3, peer → host, 2 s per iteration) without usnetd and through
// usnetd (the XDP classifier passes the DEBUG_PORTS flow to the kernel; the
// TCX learner sees the host's ACKs), for every backend: afxdp with the XDP
// program in native and in generic mode, afpacket (TCX ingress program),
// macvtap (the kernel's frames switched in userspace).
//
//	go test -run '^$' -bench BenchmarkE2EKernelTCP -benchtime 3x ./cmd/usnetd
func BenchmarkE2EKernelTCP(b *testing.B) {
	netlab.RequireTool(b, "iperf3", "iperf3")
	for _, mode := range []string{"direct", "afxdp-native", "afxdp-generic", "afpacket", "macvtap"} {
		b.Run(mode, func(b *testing.B) {
			l := newE2ELab(b, 1)
			h := l.HostIP.String()
			debug := fmt.Sprintf("DEBUG_PORTS=%s:TCP:5201", l.Ifname)
			switch mode {
			case "afxdp-native":
				l.Start(debug, "BACKEND=afxdp", "XDP_MODE=native")
			case "afxdp-generic":
				l.Start(debug, "BACKEND=afxdp", "XDP_MODE=generic")
			case "afpacket", "macvtap":
				l.Start(debug, "BACKEND="+mode)
			}
			srv := l.Host.Command(context.Background(), "iperf3", "-s", "-B", h, "-p", "5201")
			if err := srv.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
			time.Sleep(300 * time.Millisecond) // iperf3 -s has no readiness signal
			var bits float64
			b.ResetTimer()
			for range b.N {
				out, err := l.Peer.Command(context.Background(), "iperf3", "-c", h, "-p", "5201", "-t", "2", "-J").Output()
				if err != nil {
					b.Fatalf("iperf3 -c: %v\n%s", err, out)
				}
				var res struct {
					End struct {
						SumReceived struct {
							BitsPerSecond float64 `json:"bits_per_second"`
						} `json:"sum_received"`
					} `json:"end"`
				}
				if err := json.Unmarshal(out, &res); err != nil {
					b.Fatal(err)
				}
				bits += res.End.SumReceived.BitsPerSecond
			}
			b.ReportMetric(bits/float64(b.N)/1e9, "Gbit/s")
		})
	}
}

// BenchmarkE2EEndpointReceive: 64-byte frames from the peer (an AF_XDP
// sender in copy mode, pinned to CPU 0) reaching, on the host:
//
//   - bare-afxdp: an AF_XDP receive loop on the host's veth behind usnetd's
//     own XDP program (afxdp.Port.Recv, no switching): the baseline of
//     BACKEND=afxdp;
//   - bare-afpacket: a TPACKET_V3 receive loop (afpacket.Port.Recv), the
//     baseline of the other backends;
//   - usnetd-BACKEND: an endpoint attached to the real usnetd with that
//     backend through the control socket, reading its channel in batches
//     (backends/uds);
//   - usnetd-BACKEND-shm: the same on a shared-memory channel (RequestSHM,
//     backends/shm/ring), polling the ring 50 µs before it sleeps.
//
// Mpps counts frames that arrived where they should; loss-% the rest.
//
//	go test -run '^$' -bench BenchmarkE2EEndpointReceive -benchtime 500000x ./cmd/usnetd
func BenchmarkE2EEndpointReceive(b *testing.B) {
	for _, mode := range []string{"bare-afxdp", "usnetd-afxdp", "usnetd-afxdp-shm", "bare-afpacket", "usnetd-afpacket", "usnetd-afpacket-shm", "usnetd-macvtap"} {
		b.Run(mode, func(b *testing.B) { benchEndpointReceive(b, mode) })
	}
}

func benchEndpointReceive(b *testing.B, mode string) {
	l := newE2ELab(b, 1)
	pool, err := l4.NewBufPool(4096, 0)
	if err != nil {
		b.Fatal(err)
	}
	cache := pool.NewCache()
	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		b.Fatal(err)
	}
	pk, err := l.Peer.Link("eth0")
	if err != nil {
		b.Fatal(err)
	}
	frame := frame4UDP(pk.Attrs().HardwareAddr, lk.Attrs().HardwareAddr, l.PeerIP.As4(), 9000, l.HostIP.As4(), 7000)

	// The receiver: count frames in batches until want arrived or the
	// sender is done and nothing more comes.
	var recv func(bufs []*l4.Buf) (int, error)
	switch mode {
	case "bare-afpacket":
		var port *afpacket.Port
		if err := l.Host.Do(func() (err error) {
			port, err = afpacket.Open(afpacket.Options{Interface: l.Ifname, Workers: 1})
			return err
		}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { port.Close() })
		recv = func(bufs []*l4.Buf) (int, error) { return port.Recv(0, bufs) }
	case "bare-afxdp":
		var fw *firewall.Firewall
		var port *afxdp.Port
		err := l.Host.Do(func() (err error) {
			if fw, err = firewall.Attach(firewall.Options{Interface: l.Ifname}); err != nil {
				return err
			}
			port, err = afxdp.Open(afxdp.Options{Interface: l.Ifname, XSKMap: fw.XSKMap()})
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { port.Close(); fw.Close() })
		recv = func(bufs []*l4.Buf) (int, error) { return port.Recv(0, bufs) }
	case "usnetd-afxdp-shm", "usnetd-afpacket-shm":
		l.Start("BACKEND=" + strings.TrimSuffix(strings.TrimPrefix(mode, "usnetd-"), "-shm"))
		c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		ep, err := c.RequestSHM(l.Ifname)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ep.Close() })
		port := uint16(7000)
		if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &port, Protocol: 17}); err != nil {
			b.Fatal(err)
		}
		var data [64][]byte
		var lens [64]int
		recv = func(bufs []*l4.Buf) (int, error) {
			for i, x := range bufs {
				data[i] = x.Data()
			}
			n, err := ep.Recv(data[:len(bufs)], lens[:len(bufs)])
			if n > 0 || err != nil {
				return n, err
			}
			if err := ep.Wait(50*time.Microsecond, 100*time.Millisecond); err != nil {
				return 0, err
			}
			return ep.Recv(data[:len(bufs)], lens[:len(bufs)])
		}
	default: // usnetd-BACKEND
		l.Start("BACKEND=" + strings.TrimPrefix(mode, "usnetd-"))
		c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		ch, err := c.RequestUDS(l.Ifname)
		if err != nil {
			b.Fatal(err)
		}
		port := uint16(7000)
		if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &port, Protocol: 17}); err != nil {
			b.Fatal(err)
		}
		fd, err := unix.Dup(int(ch.Fd()))
		ch.Close()
		if err != nil {
			b.Fatal(err)
		}
		up, err := uds.New(fd, uds.Options{Name: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { up.Close() })
		recv = func(bufs []*l4.Buf) (int, error) { return up.Recv(0, bufs) }
	}

	var tx *afxdp.Port
	if err := l.Peer.Do(func() (err error) {
		tx, err = afxdp.Open(afxdp.Options{Interface: "eth0", ForceCopy: true})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tx.Close() })
	txBufs := make([]*l4.Buf, 64)
	if cache.GetBatch(txBufs) != len(txBufs) {
		b.Fatal("no buffers")
	}
	for _, buf := range txBufs {
		buf.SetLen(copy(buf.Data(), frame))
	}
	rxBufs := make([]*l4.Buf, 64)
	if cache.GetBatch(rxBufs) != len(rxBufs) {
		b.Fatal("no buffers")
	}

	want := b.N
	sent := make(chan int, 1)
	b.ResetTimer()
	start := time.Now()
	go func() {
		runtime.LockOSThread() // the pinned thread dies with the goroutine
		var set unix.CPUSet
		set.Set(0)
		_ = unix.SchedSetaffinity(0, &set)
		n := 0
		for n < want {
			k, _ := tx.Send(txBufs[:min(len(txBufs), want-n)])
			n += k
		}
		sent <- n
	}()
	got, quiet := 0, 0
	last := start
	var senderDone bool
	for got < want && quiet < 20 {
		k, err := recv(rxBufs)
		if err != nil {
			b.Fatal(err)
		}
		got += k
		if k > 0 {
			last = time.Now()
		}
		if !senderDone {
			select {
			case <-sent:
				senderDone = true
			default:
			}
		}
		if k == 0 && senderDone {
			quiet++ // each empty Recv waited up to its poll interval
		}
	}
	el := last.Sub(start) // up to the last frame: the quiet polls at the end do not count
	b.StopTimer()
	b.ReportMetric(float64(got)/el.Seconds()/1e6, "Mpps")
	b.ReportMetric(max(0, 100*float64(want-got)/float64(want)), "loss-%") // a stray ARP or NDP frame may count too
}

// frame4UDP is a 60-byte Ethernet/IPv4/UDP frame.
func frame4UDP(src, dst []byte, sip [4]byte, sport uint16, dip [4]byte, dport uint16) []byte {
	f := make([]byte, 60)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	ip[2], ip[3] = 0, 46
	copy(ip[12:16], sip[:])
	copy(ip[16:20], dip[:])
	c := e2e.IPChecksum(ip)
	ip[10], ip[11] = byte(c>>8), byte(c)
	u := f[34:42]
	u[0], u[1], u[2], u[3] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	u[4], u[5] = 0, 26
	return f
}
