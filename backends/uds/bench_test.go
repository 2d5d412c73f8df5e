package uds

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// BenchmarkUDSChannel measures 64-byte frames per second through a Unix
// datagram socket pair, one core writing and one reading:
//
//   - socketpair-read-write: the baseline, a raw socketpair (same 4 MiB
//     buffers) with one write() and one read() per frame, blocking;
//   - port-pair: a Port from NewPair sending batches of 64 with sendmmsg
//     into a Port made with New on the other end, receiving batches with
//     recvmmsg. The sender retries what EAGAIN dropped, so every frame
//     arrives and the two numbers count the same thing;
//   - same-goroutine/...: both again, but one goroutine writes 64 frames
//     and then reads them: no cross-core wake-ups, so what is left is the
//     cost per frame in the kernel and the system calls that batching
//     saves.
//
// Only ratios within one run mean anything on a shared machine.
func BenchmarkUDSChannel(b *testing.B) {
	const size, batch = 64, 64
	b.Run("socketpair-read-write", func(b *testing.B) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		for _, fd := range fds {
			if err := setBuffers(fd, DefaultBufferSize); err != nil {
				b.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			rb := make([]byte, 2048)
			for range b.N {
				if _, err := unix.Read(fds[1], rb); err != nil {
					b.Error(err)
					return
				}
			}
		}()
		f := make([]byte, size)
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			if _, err := unix.Write(fds[0], f); err != nil {
				b.Fatal(err)
			}
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds()/1e6, "Mpps")
	})
	b.Run("port-pair", func(b *testing.B) {
		tx, peer, err := NewPair(Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer tx.Close()
		fd, err := unix.Dup(int(peer.Fd()))
		peer.Close()
		if err != nil {
			b.Fatal(err)
		}
		rx, err := New(fd, Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer rx.Close()
		pool, err := l4.NewBufPool(4*batch, 0)
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := pool.NewCache()
			bufs := make([]*l4.Buf, batch)
			c.GetBatch(bufs)
			defer c.ReleaseBatch(bufs)
			for got := 0; got < b.N; {
				n, err := rx.Recv(0, bufs)
				if err != nil {
					b.Error(err)
					return
				}
				got += n
			}
		}()
		c := pool.NewCache()
		bufs := make([]*l4.Buf, batch)
		c.GetBatch(bufs)
		defer c.ReleaseBatch(bufs)
		for _, x := range bufs {
			x.SetLen(size)
		}
		retries := 0
		b.ResetTimer()
		start := time.Now()
		for left := b.N; left > 0; {
			k := min(left, batch)
			n, err := tx.Send(bufs[:k])
			if err != nil {
				b.Fatal(err)
			}
			if n < k {
				retries++
				runtime.Gosched()
			}
			left -= n
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds()/1e6, "Mpps")
		b.ReportMetric(float64(retries)/float64(b.N)*batch, "short-sends/batch")
	})
	b.Run("same-goroutine/socketpair-read-write", func(b *testing.B) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		for _, fd := range fds {
			if err := setBuffers(fd, DefaultBufferSize); err != nil {
				b.Fatal(err)
			}
		}
		f, rb := make([]byte, size), make([]byte, 2048)
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i += batch {
			for range batch {
				if _, err := unix.Write(fds[0], f); err != nil {
					b.Fatal(err)
				}
			}
			for range batch {
				if _, err := unix.Read(fds[1], rb); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds()/1e6, "Mpps")
	})
	b.Run("same-goroutine/port-pair", func(b *testing.B) {
		tx, peer, err := NewPair(Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer tx.Close()
		fd, err := unix.Dup(int(peer.Fd()))
		peer.Close()
		if err != nil {
			b.Fatal(err)
		}
		rx, err := New(fd, Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer rx.Close()
		pool, err := l4.NewBufPool(4*batch, 0)
		if err != nil {
			b.Fatal(err)
		}
		c := pool.NewCache()
		out, in := make([]*l4.Buf, batch), make([]*l4.Buf, batch)
		c.GetBatch(out)
		c.GetBatch(in)
		defer c.ReleaseBatch(out)
		defer c.ReleaseBatch(in)
		for _, x := range out {
			x.SetLen(size)
		}
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i += batch {
			if n, err := tx.Send(out); n != batch || err != nil {
				b.Fatal(n, err)
			}
			for got := 0; got < batch; {
				n, err := rx.Recv(0, in)
				if err != nil {
					b.Fatal(err)
				}
				got += n
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds()/1e6, "Mpps")
	})
}
