package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/afxdp"
	"github.com/usnetd/usnetd/backends/uds"
	"github.com/usnetd/usnetd/internal/e2e"
	l4 "github.com/usnetd/usnetd/switch"
)

// Benchmarks of the resource bounds: what an endpoint that reads gets from
// the peer next to 999 idle channels, and next to a fragment flood, each
// beside the same run without them.

// BenchmarkE2EIdleChannels: frames per second that one reading endpoint
// receives from the peer (60-byte UDP, AF_XDP sender in the peer), with
// no other channel and with 999 idle channels of two users attached
// (reported: usnetd's threads and RSS, and the attach latency, p99 and of
// the 1,000th channel).
//
//	go test -run '^$' -bench BenchmarkE2EIdleChannels -benchtime 300000x ./cmd/usnetd
func BenchmarkE2EIdleChannels(b *testing.B) {
	for _, backend := range e2e.Backends {
		for _, idle := range []int{0, 999} {
			b.Run(fmt.Sprintf("%s/idle=%d", backend, idle), func(b *testing.B) {
				benchReader(b, backend, manyChannelsEnv, func(l *e2eLab, reader *ctlClient, dir string) func() {
					if idle == 0 {
						return nil
					}
					lat := idleAttach(b, l, dir, reader, 50, 20, 1)
					return func() {
						b.ReportMetric(float64(p99(lat).Microseconds())/1000, "attach-p99-ms")
						b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "attach-last-ms")
					}
				}, nil)
			})
		}
	}
}

// BenchmarkE2EFragFlood: frames per second that one reading endpoint
// receives from the peer with and without a flood of later IPv4 fragments
// (8 source addresses, distinct datagrams, never a first fragment) from
// the peer at the same time: 20,480 a second, ten times what the store
// holds (MEMORY_LIMIT=64MiB: 2 MiB, 1,024 fragments) every half second.
//
//	go test -run '^$' -bench BenchmarkE2EFragFlood -benchtime 300000x ./cmd/usnetd
func BenchmarkE2EFragFlood(b *testing.B) {
	for _, backend := range e2e.Backends {
		for _, flood := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/flood=%v", backend, flood), func(b *testing.B) {
				var during func(l *e2eLab) func() (int, time.Duration)
				if flood {
					during = func(l *e2eLab) func() (int, time.Duration) {
						stop := make(chan struct{})
						start := time.Now()
						done := fragFlood(b, l, stop, 20480)
						return func() (int, time.Duration) { close(stop); return done(), time.Since(start) }
					}
				}
				benchReader(b, backend, fragEnv, nil, during)
			})
		}
	}
}

// benchReader starts usnetd with env, attaches a reading endpoint for UDP
// port 7000, runs setup (which may attach more and returns a reporter),
// starts during (if any) and then measures how fast the endpoint receives
// b.N frames that an AF_XDP socket in the peer sends.
func benchReader(b *testing.B, backend string, env []string, setup func(*e2eLab, *ctlClient, string) func(),
	during func(*e2eLab) func() (int, time.Duration)) {
	l := newE2ELab(b, 2)
	l.Backend = backend
	if dir := os.Getenv("USNETD_BENCH_PROFILE_DIR"); dir != "" {
		// USNETD_BENCH_PROFILE_DIR=DIR: usnetd writes its CPU profile there.
		env = append(slices.Clone(env), daemonProfileEnv+"="+filepath.Join(dir, strings.ReplaceAll(b.Name(), "/", "_")+".pprof"))
	}
	u := l.Start(env...)
	pid := u.Cmd.Process.Pid
	dir := b.TempDir()
	reader := newCtlClient(b, l.Sock, dir, 0)
	ch := reader.channel(l.Ifname)
	reader.addUDP(l.HostIP.String(), 7000)
	fd, err := unix.Dup(int(ch.Fd()))
	if err != nil {
		b.Fatal(err)
	}
	up, err := uds.New(fd, uds.Options{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { up.Close() })
	var report func()
	if setup != nil {
		report = setup(l, reader, dir)
	}
	pool, err := l4.NewBufPool(4096, 0)
	if err != nil {
		b.Fatal(err)
	}
	cache := pool.NewCache()
	var tx *afxdp.Port
	if err := l.Peer.Do(func() (err error) {
		tx, err = afxdp.Open(afxdp.Options{Interface: "eth0", ForceCopy: true})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tx.Close() })
	peerMAC, hostMAC := l.macs(b)
	frame := frame4UDP(peerMAC, hostMAC, l.PeerIP.As4(), 9000, l.HostIP.As4(), 7000)
	txBufs := make([]*l4.Buf, 64)
	rxBufs := make([]*l4.Buf, 64)
	if cache.GetBatch(txBufs) != 64 || cache.GetBatch(rxBufs) != 64 {
		b.Fatal("no buffers")
	}
	for _, buf := range txBufs {
		buf.SetLen(copy(buf.Data(), frame))
	}
	var stopDuring func() (int, time.Duration)
	if during != nil {
		stopDuring = during(l)
		time.Sleep(200 * time.Millisecond) // the flood is on
	}
	want := b.N
	sent := make(chan int, 1)
	b.ResetTimer()
	start := time.Now()
	go func() {
		runtime.LockOSThread()
		n := 0
		for n < want {
			k, _ := tx.Send(txBufs[:min(len(txBufs), want-n)])
			n += k
		}
		sent <- n
	}()
	got, quiet := 0, 0
	last := start
	senderDone := false
	for got < want && quiet < 20 {
		k, err := up.Recv(0, rxBufs)
		if err != nil {
			b.Fatal(err)
		}
		for _, buf := range rxBufs[:k] {
			if f := buf.Bytes(); len(f) >= 38 && f[23] == 17 && f[36] == 7000>>8 && f[37] == 7000&0xff {
				got++
			}
		}
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
			quiet++
		}
	}
	el := last.Sub(start)
	b.StopTimer()
	flooded, floodTime := 0, time.Duration(0)
	if stopDuring != nil {
		flooded, floodTime = stopDuring()
	}
	st := procStatus(b, pid)
	b.ReportMetric(float64(got)/el.Seconds()/1e6, "Mpps")
	b.ReportMetric(max(0, 100*float64(want-got)/float64(want)), "loss-%")
	b.ReportMetric(float64(st["Threads"]), "threads")
	b.ReportMetric(float64(st["VmRSS"])/1024, "RSS-MiB")
	if flooded > 0 {
		b.ReportMetric(float64(flooded)/floodTime.Seconds()/1e3, "flood-kpps")
	}
	if report != nil {
		report()
	}
	u.Stop(b)
}
