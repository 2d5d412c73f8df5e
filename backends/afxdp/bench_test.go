package afxdp

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkAFXDPReceive measures frames per second received from a veth
// through the port, against a bare AF_XDP receive loop on the same kind of
// socket in the same run:
//
//   - bare: the socket's RX ring is read and its frames go straight back
//     to the fill ring, counted, never copied (poll when empty, as Recv);
//   - touch: as bare, but reading each frame's first and last bytes in
//     place, as a parser handed the UMEM frame (zero-copy handover) would
//     at least do; the frame was just written by the kernel on the
//     sender's core, so this is where its cache misses show;
//   - port: Port.Recv, which copies every frame into an l4.Buf.
//
// The sender is an AF_XDP socket in copy mode on the peer end of the veth
// (this package's Port.Send), pushing b.N 60-byte UDP frames (64 on the
// wire) as fast as its TX ring takes them. On a 2-core machine the sender
// thread is pinned to CPU 0 and the receiver to CPU 1; the veth's NAPI
// (the XDP program and the kernel's copy into the UMEM) runs in softirq on
// the sender's CPU, which is what bounds the rate. Frames the receiver
// misses (ring full, fill ring empty) show up as loss-%. Since the sender
// bounds the rate, rx-cpu-ns/frame (CPU time of the receiving thread, user
// and system, per frame received) shows what receiving costs: poll
// wake-ups, ring work and, for port, the copy.
//
// Run: go test -run '^$' -bench BenchmarkAFXDPReceive -benchtime 1000000x ./backends/afxdp/
func BenchmarkAFXDPReceive(b *testing.B) {
	for _, mode := range []string{"bare", "touch", "port"} {
		b.Run(mode, func(b *testing.B) { benchReceive(b, mode) })
	}
}

func benchReceive(b *testing.B, mode string) {
	tl := newTestLab(b, 0)
	rx := tl.open(Options{XSKMap: tl.xsks})
	tl.attach(0)
	var tx *Port
	err := tl.peer.Do(func() (err error) {
		tx, err = Open(Options{Interface: tl.veth.B.Name, ForceCopy: true})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	defer tx.Close()

	frame := udpFrame(b, tl.veth.B.MAC, tl.veth.A.MAC, tl.peerIP, 9, tl.hostIP, 9, make([]byte, 18))
	if len(frame) != 60 {
		b.Fatalf("frame of %d bytes", len(frame))
	}
	txBufs := bufs(b, 64)
	for _, buf := range txBufs {
		buf.SetLen(copy(buf.Data(), frame))
	}
	ncpu := runtime.NumCPU()
	restore := pin(b, min(1, ncpu-1))
	defer restore()

	want := b.N
	senderDone := make(chan struct{})
	cpu0 := threadCPU(b)
	b.ResetTimer()
	start := time.Now()
	go func() {
		defer close(senderDone)
		runtime.LockOSThread() // never unlocked: the pinned thread dies with the goroutine
		var set unix.CPUSet
		set.Set(0)
		_ = unix.SchedSetaffinity(0, &set)
		for sent := 0; sent < want; {
			n, err := tx.Send(txBufs[:min(len(txBufs), want-sent)])
			if err != nil {
				return
			}
			sent += n
		}
	}()

	s := rx.socks[0]
	rxBufs := bufs(b, 64)
	got, idle := 0, 0
	last := start
	for got < want {
		var n int
		if mode != "port" {
			n = s.count(uint32(len(rxBufs)), mode == "touch")
			if n == 0 {
				_, _ = unix.Poll(s.pollfds[:], pollTimeout)
			}
		} else {
			n, err = rx.Recv(0, rxBufs)
			if err != nil {
				b.Fatal(err)
			}
		}
		if n > 0 {
			got += n
			idle = 0
			last = time.Now()
			continue
		}
		select {
		case <-senderDone:
			// The sender is done and nothing came for a poll interval:
			// the rest was lost.
			if idle++; idle >= 3 {
				goto done
			}
		default:
		}
	}
done:
	b.StopTimer()
	rxCPU := threadCPU(b) - cpu0
	<-senderDone
	el := last.Sub(start).Seconds()
	if el > 0 {
		b.ReportMetric(float64(got)/el/1e6, "Mpps")
	}
	b.ReportMetric(100*float64(want-min(got, want))/float64(want), "loss-%")
	if got > 0 {
		b.ReportMetric(float64(rxCPU.Nanoseconds())/float64(got), "rx-cpu-ns/frame")
	}
	if b.N >= 100000 {
		st, ts := rx.Stats()[0], tx.Stats()[0]
		var hostDrops, peerDrops uint64
		if l, err := tl.host.Link(tl.veth.A.Name); err == nil && l.Attrs().Statistics != nil {
			hostDrops = l.Attrs().Statistics.RxDropped
		}
		if l, err := tl.peer.Link(tl.veth.B.Name); err == nil && l.Attrs().Statistics != nil {
			peerDrops = l.Attrs().Statistics.TxDropped
		}
		b.Logf("%s: %d of %d frames in %.3fs; XSK: rx_dropped %d rx_ring_full %d fill_empty %d; "+
			"sender: kicks %d errors %d; veth drops: host rx %d, peer tx %d",
			mode, got, want, el, st.RxDropped, st.RxRingFull, st.RxFillRingEmptyDescs,
			ts.TxWakeups, ts.TxErrors, hostDrops, peerDrops)
	}
}

// threadCPU returns the CPU time (user and system) of the calling thread.
func threadCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pin locks the calling goroutine to its thread and the thread to cpu; the
// returned func restores the thread's CPU set and unlocks it.
func pin(b *testing.B, cpu int) func() {
	runtime.LockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		b.Fatal(err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		b.Fatal(err)
	}
	return func() {
		_ = unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	}
}

// sink keeps the compiler from dropping the reads of touch.
var sink uint64

// count is receive without the copy: it counts the frames and recycles
// them, reading their bytes in place if touch is set. It is the baseline of
// BenchmarkAFXDPReceive.
func (s *xsk) count(max uint32, touch bool) int {
	n := s.rx.avail(max)
	if n == 0 {
		s.refill()
		return 0
	}
	var sum uint64
	for i := range n {
		d := &s.rx.descs[(s.rx.local+i)&s.rx.mask]
		if touch && d.Len >= 8 && d.Addr+uint64(d.Len) <= uint64(len(s.umem)) {
			f := s.umem[d.Addr : d.Addr+uint64(d.Len)]
			sum += binary.LittleEndian.Uint64(f) + uint64(f[len(f)-1])
		}
		s.spare = append(s.spare, d.Addr&^(s.frame-1))
	}
	sink += sum
	s.rx.release(n)
	s.refill()
	return int(n)
}
