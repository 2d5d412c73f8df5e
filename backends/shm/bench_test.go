package shm

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/uds"
	l4 "github.com/usnetd/usnetd/switch"
)

// BenchmarkChannel measures 64-byte frames per second through one channel
// in memory, a producer goroutine and a consumer goroutine, batches of 64,
// every frame delivered (a short send is retried), for both channel kinds
// in the same run:
//
//   - to-endpoint/uds: usnetd's uds port (sendmmsg) to a uds port over the
//     endpoint's end (recvmmsg, waiting in the netpoller);
//   - to-endpoint/shm: usnetd's shm port (copy into the ring) to
//     ring.Endpoint (Wait, polling 50 µs before it sleeps, then Recv);
//   - from-endpoint/uds and from-endpoint/shm: the other way, into usnetd's
//     port through WaitRx and Recv as the pipeline's worker calls them;
//   - same-goroutine/uds and same-goroutine/shm: one goroutine sends a
//     batch from usnetd's port and receives it on the endpoint's side: no
//     scheduling between cores, only the cost per frame (what a loaded
//     machine distorts least).
//
// Only ratios within one run mean anything on a shared machine.
func BenchmarkChannel(b *testing.B) {
	const size, batch = 64, 64
	pool, err := l4.NewBufPool(8*batch, 0)
	if err != nil {
		b.Fatal(err)
	}
	bufsOf := func(n int) ([]*l4.Buf, func()) {
		c := pool.NewCache()
		bufs := make([]*l4.Buf, n)
		c.GetBatch(bufs)
		for _, x := range bufs {
			x.SetLen(size)
		}
		return bufs, func() { c.ReleaseBatch(bufs); c.Flush() }
	}
	report := func(b *testing.B, start time.Time) {
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds()/1e6, "Mpps")
	}
	// send pushes b.N frames through send, retrying what did not fit.
	send := func(b *testing.B, send func(k int) (int, error)) {
		for left := b.N; left > 0; {
			n, err := send(min(left, batch))
			if err != nil {
				b.Fatal(err)
			}
			if n == 0 {
				runtime.Gosched()
			}
			left -= n
		}
	}
	udsPair := func(b *testing.B) (*uds.Port, *uds.Port) {
		tx, peer, err := uds.NewPair(uds.Options{})
		if err != nil {
			b.Fatal(err)
		}
		fd, err := unix.Dup(int(peer.Fd()))
		peer.Close()
		if err != nil {
			b.Fatal(err)
		}
		rx, err := uds.New(fd, uds.Options{})
		if err != nil {
			b.Fatal(err)
		}
		return tx, rx
	}
	// portRecv drains b.N frames from an l4.Port as the pipeline does.
	portRecv := func(b *testing.B, p interface {
		l4.Port
		l4.RxWaiter
	}, done chan<- struct{}) {
		defer close(done)
		bufs, free := bufsOf(batch)
		defer free()
		for got := 0; got < b.N; {
			if ok, err := p.WaitRx(0, nil); err != nil {
				b.Error(err)
				return
			} else if !ok {
				continue
			}
			n, err := p.Recv(0, bufs)
			if err != nil {
				b.Error(err)
				return
			}
			got += n
		}
	}
	b.Run("to-endpoint/uds", func(b *testing.B) {
		tx, rx := udsPair(b)
		defer tx.Close()
		defer rx.Close()
		done := make(chan struct{})
		go portRecv(b, rx, done)
		out, free := bufsOf(batch)
		defer free()
		b.ResetTimer()
		start := time.Now()
		send(b, func(k int) (int, error) { return tx.Send(out[:k]) })
		<-done
		report(b, start)
	})
	b.Run("to-endpoint/shm", func(b *testing.B) {
		p, ep := newChannel(b, Options{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			in := make([][]byte, batch)
			for i := range in {
				in[i] = make([]byte, 2048)
			}
			lens := make([]int, batch)
			for got := 0; got < b.N; {
				if err := ep.Wait(50*time.Microsecond, time.Second); err != nil {
					b.Error(err)
					return
				}
				n, err := ep.Recv(in, lens)
				if err != nil {
					b.Error(err)
					return
				}
				got += n
			}
		}()
		out, free := bufsOf(batch)
		defer free()
		b.ResetTimer()
		start := time.Now()
		send(b, func(k int) (int, error) { return p.Send(out[:k]) })
		<-done
		report(b, start)
		b.ReportMetric(float64(p.Stats().Wakeups)/float64(b.N)*1e3, "wakeups/kframe")
	})
	b.Run("from-endpoint/uds", func(b *testing.B) {
		usnetd, ep := udsPair(b)
		defer usnetd.Close()
		defer ep.Close()
		done := make(chan struct{})
		go portRecv(b, usnetd, done)
		out, free := bufsOf(batch)
		defer free()
		b.ResetTimer()
		start := time.Now()
		send(b, func(k int) (int, error) { return ep.Send(out[:k]) })
		<-done
		report(b, start)
	})
	b.Run("from-endpoint/shm", func(b *testing.B) {
		p, ep := newChannel(b, Options{})
		done := make(chan struct{})
		go portRecv(b, p, done)
		out := make([][]byte, batch)
		for i := range out {
			out[i] = make([]byte, size)
		}
		b.ResetTimer()
		start := time.Now()
		send(b, func(k int) (int, error) { return ep.Send(out[:k]) })
		<-done
		report(b, start)
	})
	b.Run("same-goroutine/uds", func(b *testing.B) {
		tx, rx := udsPair(b)
		defer tx.Close()
		defer rx.Close()
		out, free := bufsOf(batch)
		defer free()
		in, free2 := bufsOf(batch)
		defer free2()
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
		report(b, start)
	})
	b.Run("same-goroutine/shm", func(b *testing.B) {
		p, ep := newChannel(b, Options{})
		out, free := bufsOf(batch)
		defer free()
		in := make([][]byte, batch)
		for i := range in {
			in[i] = make([]byte, 2048)
		}
		lens := make([]int, batch)
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i += batch {
			if n, err := p.Send(out); n != batch || err != nil {
				b.Fatal(n, err)
			}
			for got := 0; got < batch; {
				n, err := ep.Recv(in, lens)
				if err != nil {
					b.Fatal(err)
				}
				got += n
			}
		}
		report(b, start)
	})
}
