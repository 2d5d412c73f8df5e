package uds

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

func newBufs(t testing.TB, pool *l4.BufPool, n int) ([]*l4.Buf, *l4.BufCache) {
	t.Helper()
	c := pool.NewCache()
	bufs := make([]*l4.Buf, n)
	if got := c.GetBatch(bufs); got != n {
		t.Fatalf("GetBatch = %d, want %d", got, n)
	}
	return bufs, c
}

func newPool(t testing.TB, size int) *l4.BufPool {
	t.Helper()
	p, err := l4.NewBufPool(1024, size)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func frame(i, n int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, n)
	copy(b, fmt.Sprintf("frame-%d", i))
	return b
}

func newPair(t testing.TB, opt Options) (*Port, *os.File) {
	t.Helper()
	p, peer, err := NewPair(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); peer.Close() })
	return p, peer
}

func TestRoundTrip(t *testing.T) {
	p, peer := newPair(t, Options{Name: "ep"})
	if !p.Probing() {
		t.Error("sock_diag probing not available")
	}
	if p.Name() != "ep" || p.Kind() != l4.PortEndpoint || p.RxQueues() != 1 {
		t.Errorf("Name/Kind/RxQueues = %q %v %d", p.Name(), p.Kind(), p.RxQueues())
	}
	// Both ends have the big buffers (forced past the sysctl limits: root).
	var own int
	_ = p.rc.Control(func(fd uintptr) { own = int(fd) })
	for _, fd := range []int{own, int(peer.Fd())} {
		if os.Geteuid() != 0 {
			break
		}
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
		if err != nil || v < DefaultBufferSize {
			t.Errorf("SO_SNDBUF of fd %d = %d (%v), want >= %d", fd, v, err, DefaultBufferSize)
		}
		v, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		if err != nil || v < DefaultBufferSize {
			t.Errorf("SO_RCVBUF of fd %d = %d (%v), want >= %d", fd, v, err, DefaultBufferSize)
		}
	}
	pool := newPool(t, 0)
	bufs, cache := newBufs(t, pool, 16)
	defer cache.ReleaseBatch(bufs)

	// peer -> port, in order, one frame per datagram.
	for i := range 10 {
		if _, err := peer.Write(frame(i, 60+i)); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for got < 10 {
		n, err := p.Recv(0, bufs)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bufs[:n] {
			if want := frame(got, 60+got); !bytes.Equal(b.Bytes(), want) {
				t.Fatalf("frame %d: got %q", got, b.Bytes())
			}
			got++
		}
	}
	// port -> peer, as a batch.
	for i, b := range bufs[:5] {
		b.SetLen(copy(b.Data(), frame(i, 100)))
	}
	if n, err := p.Send(bufs[:5]); n != 5 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	rb := make([]byte, 4096)
	for i := range 5 {
		n, err := peer.Read(rb)
		if err != nil || !bytes.Equal(rb[:n], frame(i, 100)) {
			t.Fatalf("peer read %d: %q, %v", i, rb[:n], err)
		}
	}
	if st := p.Stats(); st.RxFrames != 10 || st.TxFrames != 5 || st.TxDropped != 0 || st.RxTooBig != 0 {
		t.Errorf("Stats = %+v", st)
	}
	if _, err := p.Recv(1, bufs); !errors.Is(err, l4.ErrPortClosed) {
		t.Errorf("Recv on queue 1: %v, want ErrPortClosed", err)
	}
}

// TestTooBig: a datagram longer than a buffer is dropped and counted, never
// delivered cut short; the frames around it arrive.
func TestTooBig(t *testing.T) {
	p, peer := newPair(t, Options{})
	pool := newPool(t, 256)
	bufs, cache := newBufs(t, pool, 8)
	defer cache.ReleaseBatch(bufs)
	for _, f := range [][]byte{frame(1, 100), frame(2, 1000), frame(3, 256), frame(4, 257), frame(5, 60)} {
		if _, err := peer.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	var lens []int
	for len(lens) < 3 {
		n, err := p.Recv(0, bufs)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bufs[:n] {
			lens = append(lens, b.Len())
			if b.Bytes()[len("frame-")] == '2' || b.Bytes()[len("frame-")] == '4' {
				t.Errorf("a too big frame came through: %q", b.Bytes()[:8])
			}
		}
	}
	if fmt.Sprint(lens) != "[100 256 60]" {
		t.Errorf("lengths %v, want [100 256 60]", lens)
	}
	if st := p.Stats(); st.RxTooBig != 2 || st.RxFrames != 3 {
		t.Errorf("Stats = %+v, want 2 too big, 3 frames", st)
	}
}

// TestSendFullDrops: a peer that does not read makes Send drop, not block.
func TestSendFullDrops(t *testing.T) {
	p, _ := newPair(t, Options{BufferSize: 16 << 10})
	pool := newPool(t, 0)
	bufs, cache := newBufs(t, pool, 64)
	defer cache.ReleaseBatch(bufs)
	for _, b := range bufs {
		b.SetLen(1000)
	}
	total, sent := 0, 0
	start := time.Now()
	for range 20 {
		n, err := p.Send(bufs)
		if err != nil {
			t.Fatal(err)
		}
		total += len(bufs)
		sent += n
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("Send took %v: it must not wait", time.Since(start))
	}
	if sent == 0 || sent == total {
		t.Errorf("sent %d of %d, want some but not all", sent, total)
	}
	if st := p.Stats(); st.TxDropped != uint64(total-sent) || st.TxFrames != uint64(sent) {
		t.Errorf("Stats = %+v, want %d dropped, %d sent", st, total-sent, sent)
	}
}

// TestPeerCloseNoticedByRecv: the peer closing is noticed by an idle Recv
// within a probe interval, reported once, and Recv says ErrPortClosed.
func TestPeerCloseNoticedByRecv(t *testing.T) {
	var calls atomic.Int32
	p, peer := newPair(t, Options{OnPeerClosed: func() { calls.Add(1) }})
	pool := newPool(t, 0)
	bufs, cache := newBufs(t, pool, 4)
	defer cache.ReleaseBatch(bufs)
	// A frame queued before the close is still delivered.
	if _, err := peer.Write(frame(1, 60)); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	start := time.Now()
	got := 0
	for {
		n, err := p.Recv(0, bufs)
		got += n
		if errors.Is(err, l4.ErrPortClosed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatal("the peer's close was not noticed within 2 s")
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("noticed after %v, want < 1 s", d)
	}
	if got != 1 {
		t.Errorf("got %d frames, want the 1 queued before the close", got)
	}
	select {
	case <-p.PeerClosed():
	default:
		t.Error("PeerClosed not closed")
	}
	if _, err := p.Recv(0, bufs); !errors.Is(err, l4.ErrPortClosed) {
		t.Errorf("Recv after: %v", err)
	}
	if calls.Load() != 1 {
		t.Errorf("OnPeerClosed called %d times, want 1", calls.Load())
	}
}

func TestPeerCloseNoticedBySend(t *testing.T) {
	var calls atomic.Int32
	p, peer := newPair(t, Options{OnPeerClosed: func() { calls.Add(1) }})
	pool := newPool(t, 0)
	bufs, cache := newBufs(t, pool, 4)
	defer cache.ReleaseBatch(bufs)
	peer.Close()
	for _, b := range bufs {
		b.SetLen(60)
	}
	if n, err := p.Send(bufs); n != 0 || !errors.Is(err, l4.ErrPortClosed) {
		t.Errorf("Send to a closed peer = %d, %v; want 0, ErrPortClosed", n, err)
	}
	if _, err := p.Send(bufs); !errors.Is(err, l4.ErrPortClosed) {
		t.Errorf("second Send: %v", err)
	}
	if calls.Load() != 1 {
		t.Errorf("OnPeerClosed called %d times", calls.Load())
	}
}

// TestPeerInFlight: a peer end on its way to a client (in an SCM_RIGHTS
// message not yet received) is alive; once the receiver closes it, gone.
func TestPeerInFlight(t *testing.T) {
	p, peer := newPair(t, Options{ProbeInterval: time.Millisecond, Poll: 5 * time.Millisecond})
	carrier, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(carrier[0])
	defer unix.Close(carrier[1])
	if err := unix.Sendmsg(carrier[0], []byte("$"), unix.UnixRights(int(peer.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	pool := newPool(t, 0)
	bufs, cache := newBufs(t, pool, 4)
	defer cache.ReleaseBatch(bufs)
	for range 5 {
		if _, err := p.Recv(0, bufs); err != nil {
			t.Fatalf("Recv with the peer in flight: %v", err)
		}
	}
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(carrier[1], make([]byte, 1), oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatal(fds, err)
	}
	if _, err := p.Recv(0, bufs); err != nil {
		t.Fatalf("Recv with the peer received: %v", err)
	}
	unix.Close(fds[0])
	deadline := time.Now().Add(time.Second)
	for {
		_, err := p.Recv(0, bufs)
		if errors.Is(err, l4.ErrPortClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("closed peer not noticed")
		}
	}
}

func TestCloseWakesRecv(t *testing.T) {
	p, _ := newPair(t, Options{})
	pool := newPool(t, 0)
	bufs, cache := newBufs(t, pool, 4)
	defer cache.ReleaseBatch(bufs)
	errc := make(chan error, 1)
	entered := make(chan struct{})
	go func() {
		close(entered)
		for {
			_, err := p.Recv(0, bufs)
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	<-entered
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	p.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, l4.ErrPortClosed) {
			t.Errorf("Recv after Close: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Close did not wake Recv")
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("Close took %v to wake Recv", d)
	}
	if _, err := p.Send(bufs); !errors.Is(err, l4.ErrPortClosed) {
		t.Errorf("Send after Close: %v", err)
	}
	p.Close() // idempotent
}

// TestNew: a port over the peer end (as a client of usnetd would make)
// talks to the NewPair port and notices its close.
func TestNew(t *testing.T) {
	a, peer := newPair(t, Options{})
	fd, err := unix.Dup(int(peer.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	peer.Close()
	b, err := New(fd, Options{Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.Probing() {
		t.Error("New found no peer to probe")
	}
	pool := newPool(t, 0)
	bufs, cache := newBufs(t, pool, 8)
	defer cache.ReleaseBatch(bufs)
	bufs[0].SetLen(copy(bufs[0].Data(), frame(7, 80)))
	if n, err := a.Send(bufs[:1]); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	n, err := b.Recv(0, bufs[1:])
	if n != 1 || err != nil || !bytes.Equal(bufs[1].Bytes(), frame(7, 80)) {
		t.Fatalf("b.Recv = %d, %v", n, err)
	}
	a.Close()
	deadline := time.Now().Add(time.Second)
	for {
		_, err := b.Recv(0, bufs)
		if errors.Is(err, l4.ErrPortClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b did not notice a's close")
		}
	}
}

// TestNoLeaks: ports made and closed leave no descriptor and no goroutine.
func TestNoLeaks(t *testing.T) {
	runtime.GC()
	fds, gs := testkit.OpenFDs(t), runtime.NumGoroutine()
	for range 200 {
		p, peer, err := NewPair(Options{})
		if err != nil {
			t.Fatal(err)
		}
		peer.Close()
		p.Close()
	}
	if n := testkit.OpenFDs(t); n != fds {
		t.Errorf("%d descriptors open, %d before", n, fds)
	}
	if g := runtime.NumGoroutine(); g > gs {
		t.Errorf("%d goroutines, %d before", g, gs)
	}
}

// TestNoAllocations: WaitRx, Recv and Send of a batch allocate nothing (the
// netpoller's callbacks are made once per port).
func TestNoAllocations(t *testing.T) {
	p, peer := newPair(t, Options{Name: "ep"})
	pool := newPool(t, 0)
	bufs, cache := newBufs(t, pool, 8)
	defer cache.ReleaseBatch(bufs)
	f := frame(1, 60)
	rb := make([]byte, 2048)
	pfd := int(peer.Fd())
	step := func() {
		for range 8 {
			if _, err := unix.Write(pfd, f); err != nil {
				t.Fatal(err)
			}
		}
		if ok, err := p.WaitRx(0, nil); !ok || err != nil {
			t.Fatalf("WaitRx: %v %v", ok, err)
		}
		n, err := p.Recv(0, bufs)
		if err != nil || n != 8 {
			t.Fatalf("Recv: %d %v", n, err)
		}
		if k, err := p.Send(bufs[:n]); k != n || err != nil {
			t.Fatalf("Send: %d %v", k, err)
		}
		for range n {
			if _, err := unix.Read(pfd, rb); err != nil {
				t.Fatal(err)
			}
		}
	}
	step()
	if a := testing.AllocsPerRun(200, step); a != 0 {
		t.Fatalf("%.1f allocations per batch", a)
	}
}
