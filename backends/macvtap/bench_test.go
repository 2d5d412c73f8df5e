package macvtap

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/netlab"
	l4 "github.com/usnetd/usnetd/switch"
)

// BenchmarkKernelTCP measures kernel-to-kernel TCP goodput between the
// lab's host and peer namespaces, in the same run:
//
//   - direct: over the veth, without usnetd;
//   - macvtap/q=N: the host's NIC claimed by this package with N queues,
//     the NIC's and the kernel's ports switched by the real l4 pipeline
//     in this process (the daemon's data path), the host's connections
//     learned by the switch.
//
// Each runs one and four parallel TCP connections, opened by the host,
// in both directions: send (the host writes, the peer reads) and recv (the
// peer writes, the host reads). An op is 64 KiB delivered; the time runs
// until the reader has every byte. Gbit/s is goodput (TCP payload);
// ring-drops/op counts the frames the pipeline dropped because the ring to
// the slower port was full (pipeline rings of 1024 slots by default, of
// 4096 in the ring=4096 variants: each RX worker has its own ring into
// each port, so more queues also mean more ring slots).
//
// Run: go test -run '^$' -bench BenchmarkKernelTCP -benchtime 20000x ./backends/macvtap/
func BenchmarkKernelTCP(b *testing.B) {
	type variant struct{ queues, ring int }
	for _, dir := range []string{"send", "recv"} {
		for _, streams := range []int{1, 4} {
			for _, v := range []variant{{0, 0}, {1, 0}, {2, 0}, {4, 0}, {1, 4096}, {4, 4096}} {
				name := "direct"
				if v.queues > 0 {
					name = "macvtap/q=" + strconv.Itoa(v.queues)
				}
				if v.ring > 0 {
					name += "/ring=" + strconv.Itoa(v.ring)
				}
				b.Run(fmt.Sprintf("%s/streams=%d/%s", dir, streams, name), func(b *testing.B) {
					benchKernelTCP(b, v.queues, v.ring, streams, dir == "send")
				})
			}
		}
	}
}

const chunk = 64 << 10

func benchKernelTCP(b *testing.B, queues, ring, streams int, send bool) {
	tl := newTestLab(b, max(queues, 1))
	tl.ringSize = ring
	var p *l4.Pipeline
	if queues > 0 {
		c := tl.open(Options{Queues: queues})
		p, _ = tl.pipeline(c)
	}
	var got atomic.Int64
	ln, err := tl.peer.Listen("tcp", netip.AddrPortFrom(tl.peerIP, 5201).String())
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	// The peer: with send, a sink that counts; otherwise it reads how
	// many bytes to write, and writes them.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if send {
					n, _ := io.Copy(io.Discard, c)
					got.Add(n)
					return
				}
				var hdr [8]byte
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				_, _ = io.CopyN(c, zeros{}, int64(binary.BigEndian.Uint64(hdr[:])))
			}()
		}
	}()
	conns := make([]net.Conn, streams)
	for i := range conns {
		err := tl.host.Do(func() (err error) {
			conns[i], err = net.DialTimeout("tcp", netip.AddrPortFrom(tl.peerIP, 5201).String(), hang)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		defer conns[i].Close()
	}
	share := make([]int64, streams)
	for i := range b.N {
		share[i%streams] += chunk
	}
	total := int64(b.N) * chunk
	b.SetBytes(chunk)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			if send {
				_, _ = io.CopyN(c, zeros{}, share[i])
				_ = c.(*net.TCPConn).CloseWrite()
				return
			}
			var hdr [8]byte
			binary.BigEndian.PutUint64(hdr[:], uint64(share[i]))
			if _, err := c.Write(hdr[:]); err != nil {
				b.Error(err)
				return
			}
			n, _ := io.CopyN(io.Discard, c, share[i])
			got.Add(n)
		})
	}
	wg.Wait()
	deadline := time.Now().Add(time.Minute)
	for got.Load() < total && time.Now().Before(deadline) {
		time.Sleep(100 * time.Microsecond)
	}
	el := time.Since(start)
	b.StopTimer()
	if got.Load() != total {
		b.Fatalf("%d of %d bytes arrived", got.Load(), total)
	}
	b.ReportMetric(float64(total)*8/el.Seconds()/1e9, "Gbit/s")
	if p != nil {
		st := p.Stats()
		b.ReportMetric(float64(st.Drops[l4.DropRingFull])/float64(b.N), "ring-drops/op")
	}
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// BenchmarkKernelTCPIperf3 is BenchmarkKernelTCP's cross-check with
// Debian's iperf3 (skipped where it is not installed): one run of
// iperfSeconds per op, host as client, peer as server, goodput as the
// receiver reports it.
//
// Run: go test -run '^$' -bench BenchmarkKernelTCPIperf3 -benchtime 1x ./backends/macvtap/
func BenchmarkKernelTCPIperf3(b *testing.B) {
	netlab.RequireTool(b, "iperf3", "iperf3")
	type variant struct{ queues, ring int }
	for _, reverse := range []bool{false, true} {
		for _, streams := range []int{1, 4} {
			for _, v := range []variant{{0, 0}, {1, 0}, {4, 0}, {1, 4096}} {
				name := "direct"
				if v.queues > 0 {
					name = "macvtap/q=" + strconv.Itoa(v.queues)
				}
				if v.ring > 0 {
					name += "/ring=" + strconv.Itoa(v.ring)
				}
				dir := map[bool]string{false: "send", true: "recv"}[reverse]
				b.Run(fmt.Sprintf("%s/streams=%d/%s", dir, streams, name), func(b *testing.B) {
					benchIperf3(b, v.queues, v.ring, streams, reverse)
				})
			}
		}
	}
}

const iperfSeconds = 3

func benchIperf3(b *testing.B, queues, ring, streams int, reverse bool) {
	tl := newTestLab(b, max(queues, 1))
	tl.ringSize = ring
	if queues > 0 {
		c := tl.open(Options{Queues: queues})
		tl.pipeline(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := tl.peer.Command(ctx, "iperf3", "-s", "-B", tl.peerIP.String())
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cancel(); _ = srv.Wait() }()
	time.Sleep(300 * time.Millisecond) // the server binds
	var sum float64
	for range b.N {
		args := []string{"-c", tl.peerIP.String(), "-t", strconv.Itoa(iperfSeconds), "-P", strconv.Itoa(streams), "-J"}
		if reverse {
			args = append(args, "-R")
		}
		out, err := tl.host.Command(ctx, "iperf3", args...).Output()
		if err != nil {
			b.Fatalf("iperf3 %v: %v\n%s", args, err, out)
		}
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			b.Fatalf("iperf3 output: %v\n%s", err, out)
		}
		sum += res.End.SumReceived.BitsPerSecond
	}
	b.ReportMetric(sum/float64(b.N)/1e9, "Gbit/s")
}
