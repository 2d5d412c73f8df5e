package shm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usnetd/usnetd/backends/shm/ring"
	l4 "github.com/usnetd/usnetd/switch"
)

func newPool(t testing.TB, size int) *l4.BufPool {
	t.Helper()
	p, err := l4.NewBufPool(1024, size)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func getBufs(t testing.TB, pool *l4.BufPool, n int) ([]*l4.Buf, *l4.BufCache) {
	t.Helper()
	c := pool.NewCache()
	bufs := make([]*l4.Buf, n)
	if got := c.GetBatch(bufs); got != n {
		t.Fatalf("GetBatch = %d, want %d", got, n)
	}
	return bufs, c
}

func frame(i, n int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, n)
	copy(b, fmt.Sprintf("frame-%d", i))
	return b
}

// newChannel makes a port and the endpoint over its handoff.
func newChannel(t testing.TB, opt Options) (*Port, *ring.Endpoint) {
	t.Helper()
	p, h, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	m, w, err := ring.Files(h.Mem, h.Wake)
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	ep, err := ring.OpenEndpoint(m, w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); ep.Close() })
	return p, ep
}

func TestBothWays(t *testing.T) {
	for _, mtu := range []int{1500, 9000} {
		t.Run(fmt.Sprint(mtu), func(t *testing.T) {
			fc := mtu + 18
			p, ep := newChannel(t, Options{FrameCap: fc, MTU: mtu})
			if ep.MTU() != mtu || ep.FrameCap() != fc {
				t.Fatalf("endpoint sees MTU %d, capacity %d", ep.MTU(), ep.FrameCap())
			}
			pool := newPool(t, fc)
			bufs, c := getBufs(t, pool, 8)
			defer c.ReleaseBatch(bufs)
			sizes := []int{60, fc, 1, 1000, fc - 1, 64, 14, 9}
			for i, b := range bufs {
				copy(b.Data(), frame(i, sizes[i]))
				b.SetLen(sizes[i])
			}
			if n, err := p.Send(bufs); n != 8 || err != nil {
				t.Fatalf("Send = %d, %v", n, err)
			}
			in := make([][]byte, 16)
			for i := range in {
				in[i] = make([]byte, fc)
			}
			lens := make([]int, 16)
			if err := ep.Wait(0, time.Second); err != nil {
				t.Fatal(err)
			}
			n, err := ep.Recv(in, lens)
			if n != 8 || err != nil {
				t.Fatalf("endpoint Recv = %d, %v", n, err)
			}
			for i := range n {
				if !bytes.Equal(in[i][:lens[i]], frame(i, sizes[i])) {
					t.Fatalf("frame %d differs", i)
				}
			}
			// And back.
			out := make([][]byte, 8)
			for i := range out {
				out[i] = frame(i+100, sizes[i])
			}
			if n, err := ep.Send(out); n != 8 || err != nil {
				t.Fatalf("endpoint Send = %d, %v", n, err)
			}
			if ok, err := p.WaitRx(0, nil); !ok || err != nil {
				t.Fatalf("WaitRx = %v, %v", ok, err)
			}
			if n, err := p.Recv(0, bufs); n != 8 || err != nil {
				t.Fatalf("Recv = %d, %v", n, err)
			}
			for i, b := range bufs {
				if !bytes.Equal(b.Bytes(), out[i]) {
					t.Fatalf("frame %d back differs", i)
				}
			}
			st := p.Stats()
			if st.RxFrames != 8 || st.TxFrames != 8 || st.RxBadLen != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestRingFullAndTooBig: a ring that the endpoint does not drain drops
// what does not fit, counted; frames longer than a slot are dropped.
func TestRingFullAndTooBig(t *testing.T) {
	p, _ := newChannel(t, Options{Slots: 4, FrameCap: 100})
	pool := newPool(t, 2048)
	bufs, c := getBufs(t, pool, 6)
	defer c.ReleaseBatch(bufs)
	for i, b := range bufs {
		b.SetLen(50)
		if i == 0 {
			b.SetLen(200)
		}
	}
	n, err := p.Send(bufs)
	if n != 4 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	st := p.Stats()
	if st.TxTooBig != 1 || st.TxRingFull != 1 || st.TxFrames != 4 {
		t.Fatalf("stats %+v", st)
	}
}

// TestWakeups: an endpoint asleep in Wait is woken by one wake-up; a busy
// one (not waiting) gets none.
func TestWakeups(t *testing.T) {
	p, ep := newChannel(t, Options{})
	pool := newPool(t, 0)
	bufs, c := getBufs(t, pool, 1)
	defer c.ReleaseBatch(bufs)
	bufs[0].SetLen(60)
	in := [][]byte{make([]byte, 2048)}
	lens := []int{0}
	// An endpoint asleep gets one wake-up per Send that finds it asleep;
	// one that is not yet asleep gets none (it sees the frame itself).
	attempts := 0
	for ; attempts < 50 && p.Stats().Wakeups == 0; attempts++ {
		done := make(chan error)
		go func() { done <- ep.Wait(0, 5*time.Second) }()
		time.Sleep(10 * time.Millisecond)
		if n, err := p.Send(bufs); n != 1 || err != nil {
			t.Fatal(n, err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n, _ := ep.Recv(in, lens); n != 1 {
			t.Fatalf("Recv after Wait: %d frames", n)
		}
	}
	if w := p.Stats().Wakeups; w != 1 {
		t.Fatalf("%d wake-ups after %d sleeps", w, attempts)
	}
	// Busy endpoint: frames go without wake-ups.
	before := p.Stats().Wakeups
	for range 100 {
		if _, err := p.Send(bufs); err != nil {
			t.Fatal(err)
		}
		for {
			if n, _ := ep.Recv(in, lens); n == 0 {
				break
			}
		}
	}
	if w := p.Stats().Wakeups - before; w != 0 {
		t.Fatalf("%d wake-ups to a busy endpoint", w)
	}
}

// TestPeerClosed: when the endpoint closes its end, WaitRx and Send say
// ErrPortClosed and OnPeerClosed runs once.
func TestPeerClosed(t *testing.T) {
	var calls atomic.Int32
	p, ep := newChannel(t, Options{OnPeerClosed: func() { calls.Add(1) }})
	res := make(chan error, 1)
	go func() {
		for {
			if _, err := p.WaitRx(0, nil); err != nil {
				res <- err
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond)
	ep.Close()
	select {
	case err := <-res:
		if !errors.Is(err, l4.ErrPortClosed) {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("WaitRx did not notice the closed endpoint")
	}
	<-p.PeerClosed()
	if calls.Load() != 1 {
		t.Fatalf("OnPeerClosed ran %d times", calls.Load())
	}
}

// TestCloseWakesWaiters: Close makes a waiting WaitRx, and a waiting
// Recv, return at once.
func TestCloseWakesWaiters(t *testing.T) {
	for _, recv := range []bool{false, true} {
		p, _ := newChannel(t, Options{Idle: time.Hour})
		pool := newPool(t, 0)
		bufs, c := getBufs(t, pool, 4)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				var err error
				if recv {
					_, err = p.Recv(0, bufs)
				} else {
					_, err = p.WaitRx(0, nil)
				}
				if err != nil {
					return
				}
			}
		}()
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		p.Close()
		<-done
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Close took %v to wake the waiter (recv %v)", d, recv)
		}
		c.ReleaseBatch(bufs)
	}
}

// TestHostileEndpoint: an endpoint writing garbage over its rings, its
// slots and the header while usnetd's port sends and receives gets only
// counted drops; usnetd's port never panics, never hands out a frame
// longer than a buffer, and after the scribbling stops the channel works.
func TestHostileEndpoint(t *testing.T) {
	p, h, err := New(Options{Slots: 16, FrameCap: 200, Idle: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	defer h.Close()
	mem, err := ring.Map(int(h.Mem.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Unmap()
	b := mem.Bytes()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		x := uint32(1)
		for !stop.Load() {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			off := int(x%uint32(len(b)-4)) &^ 3
			if x&1 == 0 {
				off = 64 + int(x>>8)%448&^3 // the indices and flags
			}
			binary.LittleEndian.PutUint32(b[off:], x>>3)
		}
	}()
	pool := newPool(t, 150) // shorter than a slot: long frames are drops
	bufs, c := getBufs(t, pool, 16)
	defer c.ReleaseBatch(bufs)
	out, oc := getBufs(t, pool, 16)
	defer oc.ReleaseBatch(out)
	for _, o := range out {
		o.SetLen(100)
	}
	end := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(end) {
		if _, err := p.WaitRx(0, nil); err != nil {
			t.Fatal(err)
		}
		n, err := p.Recv(0, bufs)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range bufs[:n] {
			if x.Len() < 1 || x.Len() > 150 {
				t.Fatalf("a frame of %d bytes", x.Len())
			}
		}
		if _, err := p.Send(out); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	st := p.Stats()
	t.Logf("under attack: %+v", st)
	if st.RxBadIndex+st.RxBadLen+st.TxBadIndex == 0 {
		t.Fatal("no bad index or length counted under a scribbling endpoint")
	}
	runtime.KeepAlive(mem)
}

func TestNoLeaks(t *testing.T) {
	fds := func() int {
		es, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(es)
	}
	newChannel(t, Options{}) // warm up
	f0, g0 := fds(), runtime.NumGoroutine()
	for range 1000 {
		p, h, err := New(Options{FrameCap: 9018, MTU: 9000})
		if err != nil {
			t.Fatal(err)
		}
		m, w, err := ring.Files(h.Mem, h.Wake)
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		ep, err := ring.OpenEndpoint(m, w)
		if err != nil {
			t.Fatal(err)
		}
		ep.Close()
		p.Close()
	}
	time.Sleep(50 * time.Millisecond)
	if f := fds(); f > f0 {
		t.Errorf("%d descriptors after 1,000 channels, %d before", f, f0)
	}
	if g := runtime.NumGoroutine(); g > g0+2 {
		t.Errorf("%d goroutines after 1,000 channels, %d before", g, g0)
	}
}

// TestRecvPolls: an idle Recv returns (no frames) after Options.Poll, not
// Options.Idle, so that the worker notices a stop.
func TestRecvPolls(t *testing.T) {
	p, _ := newChannel(t, Options{Poll: 20 * time.Millisecond, Idle: time.Hour})
	pool := newPool(t, 0)
	bufs, c := getBufs(t, pool, 4)
	defer c.ReleaseBatch(bufs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if n, err := p.Recv(0, bufs); n != 0 || err != nil {
			t.Errorf("Recv = %d, %v", n, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.Close()
		<-done
		t.Fatal("an idle Recv did not return within its poll interval")
	}
}
