package usnet

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// BenchmarkUsnetTCP measures TCP goodput from one stack to another over a
// socketpair, with this package's link endpoint and with gVisor's
// link/fdbased, and, as the baseline of the same run, over a kernel TCP
// connection on the loopback interface. usnet-shm-pumped runs the same
// stacks on shared-memory channels whose usnetd-side ports are joined by
// two pump goroutines (a hop more than the direct socketpair: a stand-in
// for usnetd). One op is 64 KiB written.
//
//	go test -run '^$' -bench BenchmarkUsnetTCP -benchtime 2000x -count 3 ./usnet/
func BenchmarkUsnetTCP(b *testing.B) {
	b.Run("usnet", func(b *testing.B) { benchUsnet(b, false) })
	b.Run("usnet-fdbased", func(b *testing.B) { benchUsnet(b, true) })
	b.Run("usnet-shm-pumped", func(b *testing.B) {
		a, c := shmStackPair(b)
		ln, err := a.Listen("tcp", ":5001")
		if err != nil {
			b.Fatal(err)
		}
		benchTransfer(b, ln, func() (net.Conn, error) { return c.Dial("tcp", "198.18.0.1:5001") })
		ln.Close()
	})
	b.Run("kernel-loopback", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		benchTransfer(b, ln, func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) })
	})
}

func benchUsnet(b *testing.B, fdbased bool) {
	a, _, c, _ := stackPair(b)
	a.fdbased, c.fdbased = fdbased, fdbased
	ln, err := a.Listen("tcp", ":5001")
	if err != nil {
		b.Fatal(err)
	}
	benchTransfer(b, ln, func() (net.Conn, error) {
		conn, err := c.Dial("tcp", "198.18.0.1:5001")
		if err == nil && !fdbased {
			// Report what the endpoints dropped or waited for, after the run.
			la, lc := a.st.link, c.st.link
			b.Cleanup(func() {
				b.Logf("sender: %s; receiver: %s", lc.stats.String(), la.stats.String())
			})
		}
		return conn, err
	})
	ln.Close()
}

// benchTransfer writes b.N chunks from a dialled connection to an accepted
// one and reports the goodput.
func benchTransfer(b *testing.B, ln net.Listener, dial func() (net.Conn, error)) {
	const chunk = 64 << 10
	got := make(chan int64, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, s)
		s.Close()
		got <- n
	}()
	c, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	n := <-got
	el := time.Since(start)
	b.StopTimer()
	c.Close()
	if n != int64(b.N)*chunk {
		b.Fatalf("received %d bytes, want %d", n, int64(b.N)*chunk)
	}
	b.ReportMetric(float64(n)/1e6/el.Seconds(), "MB/s")
}

// BenchmarkChannelPoll measures what Config.ChannelPoll buys: TCP goodput
// between two stacks on shared-memory channels (usnet-shm-pumped of
// BenchmarkUsnetTCP) with the receivers polling their rings for 0 (sleep
// at once), 10, 50 and 200 µs before they sleep, and the process's CPU
// time per wall time (cpu-%: 100 is one core) that the polling costs.
// DefaultChannelPoll was chosen from it (BENCHMARKS.md).
//
//	go test -run '^$' -bench BenchmarkChannelPoll -benchtime 2000x -count 3 ./usnet/
func BenchmarkChannelPoll(b *testing.B) {
	for _, poll := range []time.Duration{-1, 10 * time.Microsecond, 50 * time.Microsecond, 200 * time.Microsecond} {
		name := "off"
		if poll > 0 {
			name = poll.String()
		}
		b.Run(name, func(b *testing.B) {
			a, c := shmStackPair(b)
			a.ChannelPoll, c.ChannelPoll = poll, poll
			ln, err := a.Listen("tcp", ":5001")
			if err != nil {
				b.Fatal(err)
			}
			var ru0, ru1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			start := time.Now()
			benchTransfer(b, ln, func() (net.Conn, error) { return c.Dial("tcp", "198.18.0.1:5001") })
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano() + ru1.Stime.Nano() - ru0.Stime.Nano())
			b.ReportMetric(100*cpu.Seconds()/time.Since(start).Seconds(), "cpu-%")
			ln.Close()
		})
	}
}
