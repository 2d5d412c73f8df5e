package usnet

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/testkit"
)

// openPair opens a Stack on each Config of a stackPair and counts the
// calls of each Config's Attach.
func openPair(t *testing.T) (sa *Stack, fa *fakeAttacher, sb *Stack, fb *fakeAttacher, attaches *atomic.Int64) {
	t.Helper()
	a, fa, b, fb := stackPair(t)
	attaches = new(atomic.Int64)
	for _, c := range []*Config{a, b} {
		inner := c.Attach
		c.Attach = func(p string) (Attacher, error) {
			attaches.Add(1)
			return inner(p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if sa, err = Open(ctx, a); err != nil {
		t.Fatal(err)
	}
	if sb, err = Open(ctx, b); err != nil {
		sa.Close()
		t.Fatal(err)
	}
	return sa, fa, sb, fb, attaches
}

// echo serves ln: each connection gets back what it sends.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(c, c)
			c.Close()
		}()
	}
}

// TestStackLifetime: 200 connections dialled one after the other through
// one Stack attach once (one Attach, one RequestUDS, no DeleteClient until
// Close); Close detaches and leaves no goroutine and no descriptor.
func TestStackLifetime(t *testing.T) {
	cycle := func(dials int) {
		sa, fa, sb, fb, attaches := openPair(t)
		ln, err := sa.Listen("tcp", ":7")
		if err != nil {
			t.Fatal(err)
		}
		go echo(ln)
		buf := make([]byte, 5)
		for i := range dials {
			c, err := sb.Dial("tcp", "198.18.0.1:7")
			if err != nil {
				t.Fatalf("dial %d: %v", i, err)
			}
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
				t.Fatalf("echo %d: %q, %v", i, buf, err)
			}
			c.Close()
		}
		fb.mu.Lock()
		uds, closed := fb.uds, fb.closed
		fb.mu.Unlock()
		if n := attaches.Load(); n != 2 || uds != 1 || closed != 0 {
			t.Errorf("after %d dials: %d attaches of both stacks (want 2), %d RequestUDS of the dialling stack (want 1), %d DeleteClient (want 0)", dials, n, uds, closed)
		}
		// A connection and the listener still open: Close closes them.
		c, err := sb.Dial("tcp", "198.18.0.1:7")
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(buf); err == nil {
			t.Error("a connection read after its Stack's Close")
		}
		if _, err := sb.Dial("tcp", "198.18.0.1:7"); !errors.Is(err, net.ErrClosed) {
			t.Errorf("dial after Close: %v, want net.ErrClosed", err)
		}
		if err := sb.Close(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("second Close: %v, want net.ErrClosed", err)
		}
		if err := sa.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("accept after the Stack's Close: %v, want net.ErrClosed", err)
		}
		waitClosed(t, fa, "a")
		waitClosed(t, fb, "b")
	}
	cycle(1) // warm up: package-level state of gVisor and the runtime
	runtime.GC()
	g0, fd0 := runtime.NumGoroutine(), testkit.OpenFDs(t)
	cycle(200)
	var g, fd int
	for range 200 { // goroutines that were told to stop may take a moment
		if g, fd = runtime.NumGoroutine(), testkit.OpenFDs(t); g <= g0 && fd <= fd0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if g > g0 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", g, g0, buf[:runtime.Stack(buf, true)])
	}
	if fd > fd0 {
		t.Errorf("%d descriptors after Close, %d before", fd, fd0)
	}
}

// TestOpenCanceled: Open with a context that is done attaches nothing.
func TestOpenCanceled(t *testing.T) {
	a, fa, _, _ := stackPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Open(ctx, a); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open: %v, want context.Canceled", err)
	}
	if fa.uds != 0 {
		t.Error("Open with a canceled context requested a channel")
	}
}

// TestStackWithConfig: a Stack opened on a Config is its own stack; the
// Config's methods keep theirs (made and torn down per use).
func TestStackWithConfig(t *testing.T) {
	a, fa, b, _ := stackPair(t)
	ln, err := a.Listen("tcp", ":7") // a's shared stack
	if err != nil {
		t.Fatal(err)
	}
	go echo(ln)
	sb, err := Open(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	if b.st != nil {
		t.Error("Open set the Config's shared stack")
	}
	c, err := sb.DialTCP(context.Background(), "tcp", "198.18.0.1:7")
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	ln.Close()
	// The echo goroutine closes its connection, the last socket of a's
	// stack, when it reads the EOF.
	waitFor(t, "DeleteClient of the Config's stack after its last socket", func() bool {
		_, _, _, closed := fa.snapshot()
		return closed == 1
	})
}

// TestStackCloseDuringDial: Close ends a dial that waits for a peer that
// does not answer (its SYN-ACKs held back); the dial fails with
// net.ErrClosed and the stack goes with it.
func TestStackCloseDuringDial(t *testing.T) {
	sa, sb, r := relayedPair(t)
	ln, err := sb.Listen("tcp4", ":7100")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// One connection first, so that a knows b's MAC (ARP answered).
	c, err := sa.Dial("tcp4", "198.18.0.2:7100")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	before := len(r.snapshot(func(s seg) bool { return s.fromA && s.flags&tcpSYN != 0 }))
	r.gate(true)
	defer r.gate(false)
	dialed := make(chan error, 1)
	go func() {
		c, err := sa.Dial("tcp4", "198.18.0.2:7100")
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	// The SYN is out: the dial waits for the answer that the relay holds.
	waitFor(t, "the SYN", func() bool {
		return len(r.snapshot(func(s seg) bool { return s.fromA && s.flags&tcpSYN != 0 })) > before
	})
	if err := sa.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-dialed:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("dial when the Stack closed: %v, want net.ErrClosed", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the dial did not end with the Stack's Close")
	}
	waitFor(t, "the stack's teardown", func() bool {
		sa.n.cfg.mu.Lock()
		defer sa.n.cfg.mu.Unlock()
		return sa.n.refs == 0
	})
}
