package afpacket

import (
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/firewall"
	l4 "github.com/usnetd/usnetd/switch"
)

// The benchmarks here run in a lab (lab_test.go) on a 1-queue veth pair,
// with 60-byte UDP frames (64 on the wire) sent as fast as the sender's
// TX path takes them. On a veth the receiving side's softirq (the packet
// tap's copy into the TPACKET_V3 ring, tc, the IP layer) runs on the
// sending CPU, in the sender's syscall: so the sender thread is pinned to
// CPU 0 and the receiver to CPU 1 (of 2), and the sender's CPU is what
// bounds the rate. Frames go to a MAC that is not the host's: the host's
// kernel drops them in ip_rcv (PACKET_OTHERHOST) instead of answering
// each with an ICMP error, as the firewall's TC hook would drop them in
// usnetd's afpacket mode (the port-tc mode attaches that hook itself).
// Only ratios measured in one run mean anything on this 2-core VM.

// benchDstMAC is the frames' destination: not the host's.
var benchDstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x99, 0x99}

// benchFrames returns 64 buffers holding the benchmark's 60-byte frame.
func benchFrames(b *testing.B, tl *testLab, src net.HardwareAddr) []*l4.Buf {
	frame := udpFrame(b, src, benchDstMAC, tl.peerIP, 9, tl.hostIP, 9, make([]byte, 18))
	if len(frame) != 60 {
		b.Fatalf("frame of %d bytes", len(frame))
	}
	bs := bufs(b, 64)
	for _, buf := range bs {
		buf.SetLen(copy(buf.Data(), frame))
	}
	return bs
}

// BenchmarkAFPacketReceive measures frames per second received from a veth
// through the port, against a bare TPACKET_V3 receive loop on the same
// kind of socket in the same run:
//
//   - bare: the ring's blocks are walked, their frames counted and the
//     blocks given back, nothing copied (poll when empty, as Recv);
//   - touch: as bare, but reading each frame's first and last bytes in
//     place, as a parser handed the ring's frame would at least do;
//   - port: Port.Recv, which copies every frame into an l4.Buf;
//   - port-tc: port, with the firewall's TC ingress hook attached (what
//     usnetd runs in afpacket mode; every frame here is dropped there).
//
// The sender is this package's Port.Send (default TX path) on the peer's
// end. loss-% is what the receiver missed (ring full: tp_drops);
// rx-cpu-ns/frame is the CPU time of the receiving thread per frame.
//
// Run: go test -run '^$' -bench BenchmarkAFPacketReceive -benchtime 1000000x ./backends/afpacket/
func BenchmarkAFPacketReceive(b *testing.B) {
	for _, mode := range []string{"bare", "touch", "port", "port-tc"} {
		b.Run(mode, func(b *testing.B) { benchReceive(b, mode) })
	}
}

func benchReceive(b *testing.B, mode string) {
	tl := newTestLab(b, 0)
	rx := tl.open(Options{})
	if mode == "port-tc" {
		var fw *firewall.Firewall
		err := tl.host.Do(func() (err error) {
			fw, err = firewall.Attach(firewall.Options{Interface: tl.veth.A.Name, Hook: firewall.HookTC,
				PinRoot: "/sys/fs/bpf/usnetd-bench-" + tl.lab.Name()})
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { fw.Close() }) // before the lab's cleanup: last in, first out
	}
	tx := tl.openPeer(Options{})
	txBufs := benchFrames(b, tl, tl.veth.B.MAC)
	s := rx.rx[0]
	rxBufs := bufs(b, 64)
	got, el, rxCPU := runReceiver(b, b.N, func(want int) {
		for sent := 0; sent < want; {
			n, err := tx.Send(txBufs[:min(len(txBufs), want-sent)])
			if err != nil {
				return
			}
			sent += n
		}
	}, func() int {
		if mode == "bare" || mode == "touch" {
			n := s.count(mode == "touch")
			if n == 0 {
				_, _ = unix.Poll(s.pollfds[:], pollTimeout)
			}
			return n
		}
		n, err := rx.Recv(0, rxBufs)
		if err != nil {
			b.Fatal(err)
		}
		return n
	})
	report(b, got, el, rxCPU)
	if b.N >= 100000 {
		st, ts := rx.Stats().Queues[0], tx.Stats().Tx
		b.Logf("%s: %d of %d frames in %.3fs; kernel: packets %d drops %d freeze %d; sender: syscalls %d full %d",
			mode, got, b.N, el.Seconds(), st.Packets, st.Drops, st.FreezeQueue, ts.Syscalls, ts.Full)
	}
}

// runReceiver starts send(want) on a thread pinned to CPU 0, runs
// receive on this goroutine's thread pinned to CPU 1 until want frames
// came or the sender is done and nothing came for three polls, and
// returns the frames received, the time until the last one, and the
// receiving thread's CPU time.
func runReceiver(b *testing.B, want int, send func(int), receive func() int) (int, time.Duration, time.Duration) {
	restore := pin(b, min(1, runtime.NumCPU()-1))
	defer restore()
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
		send(want)
	}()
	got, idle := 0, 0
	last := start
	for got < want {
		if n := receive(); n > 0 {
			got += n
			idle = 0
			last = time.Now()
			continue
		}
		select {
		case <-senderDone:
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
	return got, last.Sub(start), rxCPU
}

func report(b *testing.B, got int, el, rxCPU time.Duration) {
	if el > 0 {
		b.ReportMetric(float64(got)/el.Seconds()/1e6, "Mpps")
	}
	b.ReportMetric(100*float64(b.N-min(got, b.N))/float64(b.N), "loss-%")
	if got > 0 {
		b.ReportMetric(float64(rxCPU.Nanoseconds())/float64(got), "rx-cpu-ns/frame")
	}
}

// BenchmarkAFPacketSend compares the two transmit paths: a TPACKET_V2 TX
// ring kicked with one sendto per batch, and one sendmmsg per batch. The
// host's port sends b.N frames (60 or 1514 bytes) in batches of 64 from a thread
// pinned to CPU 0. The peer's kernel drops them in ip_rcv (they are not
// for its MAC), in the softirq that the veth runs on the sending CPU
// within the sender's syscalls: no receiving thread competes, and what the
// sender's CPU pays is the TX path plus a short receive path, the same
// for both methods. Mpps is frames per second that Send took;
// tx-cpu-ns/frame is the sending thread's CPU time per frame; delivered-%
// is the share of frames that the peer's veth end counted as received.
//
// Run: go test -run '^$' -bench BenchmarkAFPacketSend -benchtime 1000000x ./backends/afpacket/
func BenchmarkAFPacketSend(b *testing.B) {
	for _, size := range []int{60, 1514} {
		for _, method := range []string{"ring", "sendmmsg"} {
			b.Run(fmt.Sprintf("%s/%dB", method, size), func(b *testing.B) { benchSend(b, method, size) })
		}
	}
}

func benchSend(b *testing.B, method string, size int) {
	tl := newTestLab(b, 0)
	tx := tl.open(Options{})
	send, counters := func(bs []*l4.Buf) (int, error) { return tx.Send(bs) }, &tx.tx.c
	if method == "ring" {
		var r *txRing
		if err := tl.host.Do(func() (err error) { r, err = newTxRing(tl.veth.A.Index, 1024); return err }); err != nil {
			b.Fatal(err)
		}
		defer r.close()
		send, counters = func(bs []*l4.Buf) (int, error) { return r.send(bs), nil }, &r.c
	}
	txBufs := benchFrames(b, tl, tl.veth.A.MAC)
	if size > 60 {
		frame := udpFrame(b, tl.veth.A.MAC, benchDstMAC, tl.hostIP, 9, tl.peerIP, 9, make([]byte, size-42))
		for _, buf := range txBufs {
			buf.SetLen(copy(buf.Data(), frame))
		}
	}
	rxBefore := peerRxPackets(b, tl)
	restore := pin(b, 0)
	defer restore()
	cpu0 := threadCPU(b)
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; {
		n, err := send(txBufs[:min(len(txBufs), b.N-sent)])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	el := time.Since(start)
	b.StopTimer()
	cpu := threadCPU(b) - cpu0
	b.ReportMetric(float64(b.N)/el.Seconds()/1e6, "Mpps")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "tx-cpu-ns/frame")
	// The veth counts synchronously in the sender's syscall.
	delivered := peerRxPackets(b, tl) - rxBefore
	b.ReportMetric(100*float64(delivered)/float64(b.N), "delivered-%")
	b.ReportMetric(float64(counters.frames.Load())/float64(max(counters.syscalls.Load(), 1)), "frames/syscall")
	if b.N >= 100000 {
		b.Logf("%s: %d frames in %.3fs, %d delivered; full %d, errors %d", method, b.N, el.Seconds(), delivered,
			counters.full.Load(), counters.errors.Load())
	}
}

// peerRxPackets reads the receive counter of the peer's veth end.
func peerRxPackets(b *testing.B, tl *testLab) uint64 {
	l, err := tl.peer.Link(tl.veth.B.Name)
	if err != nil || l.Attrs().Statistics == nil {
		b.Fatalf("peer link statistics: %v", err)
	}
	return l.Attrs().Statistics.RxPackets
}

// BenchmarkAFPacketLatency measures the time from Send on the peer to
// Recv returning the frame on the host, one frame at a time, for several
// block timeouts: at a low rate a frame waits in its block until the
// timeout hands the block over. Reports the median and the 99th
// percentile in microseconds.
//
// Run: go test -run '^$' -bench BenchmarkAFPacketLatency -benchtime 2000x ./backends/afpacket/
func BenchmarkAFPacketLatency(b *testing.B) {
	for _, tov := range []time.Duration{time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond} {
		b.Run(fmt.Sprintf("timeout=%v", tov), func(b *testing.B) {
			tl := newTestLab(b, 0)
			rx := tl.open(Options{BlockTimeout: tov})
			tx := tl.openPeer(Options{})
			one := benchFrames(b, tl, tl.veth.B.MAC)[:1]
			rb := bufs(b, 8)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if n, err := tx.Send(one); n != 1 || err != nil {
					b.Fatalf("Send: %d, %v", n, err)
				}
				for {
					n, err := rx.Recv(0, rb)
					if err != nil {
						b.Fatal(err)
					}
					if n > 0 {
						break
					}
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
		})
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

// count is receive without the copy: it walks the blocks the kernel
// handed over, counts their frames (reading their first and last bytes in
// place if touch is set) and gives the blocks back. It is the baseline of
// BenchmarkAFPacketReceive.
func (s *rxSock) count(touch bool) int {
	n := 0
	var sum uint64
	for {
		if atomic.LoadUint32(s.status(s.blk))&unix.TP_STATUS_USER == 0 {
			break
		}
		b := s.block()
		k := ne.Uint32(b[blkNumPkts:])
		if touch {
			off := uint64(ne.Uint32(b[blkFirstPkt:]))
			for range k {
				if off+pktHdrLen > uint64(len(b)) {
					break
				}
				h := b[off:]
				start := off + uint64(ne.Uint16(h[pktMac:]))
				end := start + uint64(ne.Uint32(h[pktSnaplen:]))
				if end <= uint64(len(b)) && end > start+8 {
					sum += ne.Uint64(b[start:]) + uint64(b[end-1])
				}
				off += uint64(ne.Uint32(h[pktNextOffset:]))
			}
		}
		n += int(k)
		atomic.StoreUint32(s.status(s.blk), unix.TP_STATUS_KERNEL)
		s.blk = (s.blk + 1) % s.nblocks
	}
	sink += sum
	return n
}
