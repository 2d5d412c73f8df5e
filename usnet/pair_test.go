package usnet

// Two stacks in one process joined by a socketpair, with fake attachers in
// place of usnetd.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/testkit"
)

// waitClosed waits until the fake saw DeleteClient (the stack's teardown
// happens in the Close of its last socket, so it should already have).
func waitClosed(t *testing.T, f *fakeAttacher, name string) {
	t.Helper()
	if _, _, _, closed := f.snapshot(); closed != 1 {
		t.Errorf("%s: DeleteClient sent %d times, want 1", name, closed)
	}
}

func TestHTTP(t *testing.T) {
	a, fa, b, fb := stackPair(t)
	ln, err := a.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	if got := ln.Addr().(*net.TCPAddr).Port; got != 8080 {
		t.Errorf("listener port %d, want 8080", got)
	}
	_, _, active, _ := fa.snapshot()
	for _, want := range []wire.Match{listenMatch("198.18.0.1", 8080, 6), listenMatch("2001:db8::1", 8080, 6)} {
		if !containsMatch(active, want) {
			t.Errorf("rule %s not registered; have %v", want, active)
		}
	}

	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s from %s", r.URL.Path, r.RemoteAddr)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	tr := &http.Transport{DialContext: b.DialContext}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, url := range []string{"http://198.18.0.1:8080/v4", "http://[2001:db8::1]:8080/v6"} {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		host := "198.18.0.2:"
		if strings.Contains(url, "v6") {
			host = "[2001:db8::2]:"
		}
		if !strings.HasPrefix(string(body), "hello /"+url[len(url)-2:]+" from "+host) {
			t.Errorf("GET %s: %q", url, body)
		}
		// The client's port: outside the kernel's range.
		_, ps, _ := net.SplitHostPort(strings.TrimPrefix(string(body), "hello /"+url[len(url)-2:]+" from "))
		var port int
		fmt.Sscan(ps, &port)
		if port >= testRangeLo && port <= testRangeHi || port < lowestPort {
			t.Errorf("client port %d inside the kernel's range %d-%d", port, testRangeLo, testRangeHi)
		}
	}
	tr.CloseIdleConnections()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	_, removed, active, _ := fa.snapshot()
	if len(active) != 0 {
		t.Errorf("rules left after Close: %v", active)
	}
	if len(removed) != 2 {
		t.Errorf("RemoveMatch %d times, want 2", len(removed))
	}
	// Outgoing connections register nothing.
	if added, _, _, _ := fb.snapshot(); len(added) != 0 {
		t.Errorf("the client registered %v", added)
	}
	waitClosed(t, fa, "server")
	waitClosed(t, fb, "client")
}

func TestTCPEcho(t *testing.T) {
	const size = 10 << 20
	a, _, b, _ := stackPair(t)
	ln, err := a.Listen("tcp4", ":7")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	c, err := b.Dial("tcp", "198.18.0.1:7")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	go func() {
		c.Write(data)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	start := time.Now()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("echoed %d MB in %v", size>>20, time.Since(start))
	if len(got) != size || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("echo: got %d bytes, want %d identical ones", len(got), size)
	}
	c.Close()
	ln.Close()
}

func TestUDPEcho(t *testing.T) {
	a, fa, b, fb := stackPair(t)
	srv, err := a.ListenPacket("udp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, active, _ := fa.snapshot(); !containsMatch(active, listenMatch("198.18.0.1", 7, 17)) || !containsMatch(active, listenMatch("2001:db8::1", 7, 17)) {
		t.Errorf("UDP port 7 not registered: %v", active)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, addr, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(bytes.ToUpper(buf[:n]), addr)
		}
	}()

	// A listening socket on port 0: the port is chosen and registered.
	// It also keeps b's stack up while the connected sockets come and go.
	pc, err := b.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}

	// A connected socket, IPv4 and IPv6.
	for _, dst := range []string{"198.18.0.1:7", "[2001:db8::1]:7"} {
		c, err := b.Dial("udp", dst)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		for i := range 5 {
			msg := fmt.Sprintf("ping %d to %s", i, dst)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if string(buf[:n]) != strings.ToUpper(msg) {
				t.Errorf("got %q", buf[:n])
			}
		}
		c.Close()
	}

	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	if port >= testRangeLo && port <= testRangeHi || port < lowestPort {
		t.Errorf("chosen port %d inside the kernel's range", port)
	}
	if _, _, active, _ := fb.snapshot(); !containsMatch(active, listenMatch("198.18.0.2", port, 17)) {
		t.Errorf("chosen port %d not registered: %v", port, active)
	}
	pc.SetDeadline(time.Now().Add(10 * time.Second))
	// A 16-byte IPv4 address, as net.ParseIP gives, works on a udp4 socket.
	if _, err := pc.WriteTo([]byte("hi"), &net.UDPAddr{IP: net.ParseIP("198.18.0.1"), Port: 7}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "HI" || from.(*net.UDPAddr).Port != 7 {
		t.Fatalf("ReadFrom: %q from %v, %v", buf[:n], from, err)
	}
	pc.Close()
	if _, _, active, _ := fb.snapshot(); len(active) != 0 {
		t.Errorf("rules left: %v", active)
	}
	srv.Close()
	<-done
	waitClosed(t, fa, "server")
	waitClosed(t, fb, "client")
}

// TestPortChoice: ports for dials and port-0 listeners lie outside the
// kernel's ip_local_port_range and clear of what usnetd reports in use.
func TestPortChoice(t *testing.T) {
	a, _, b, fb := stackPair(t)
	// Above the range only 64001..65535 are candidates; usnetd uses all
	// but 64100..64109 for TCP, and 1024..1999 below the range.
	var used wire.UsedPorts
	for p := 1024; p <= 65535; p++ {
		if (p >= 64100 && p < 64110) || (p >= testRangeLo && p <= testRangeHi) {
			continue
		}
		e := wire.PortEntry{Protocol: 6, Addr: netip.MustParseAddr("198.18.0.2"), Port: uint16(p)}
		if p%2 == 0 {
			used.Listening = append(used.Listening, e)
		} else {
			used.Connected = append(used.Connected, e)
		}
	}
	fb.mu.Lock()
	fb.used = used
	fb.mu.Unlock()
	ln, err := a.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	seen := map[int]bool{}
	var conns []net.Conn
	for range 10 {
		c, err := b.Dial("tcp", "198.18.0.1:80")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		p := c.LocalAddr().(*net.TCPAddr).Port
		if p < 64100 || p >= 64110 || seen[p] {
			t.Errorf("dial got local port %d, want a new one in 64100..64109", p)
		}
		seen[p] = true
	}
	// All free ports taken: the next dial fails cleanly.
	if c, err := b.Dial("tcp", "198.18.0.1:80"); !errors.Is(err, ErrNoPort) {
		t.Errorf("11th dial: %v, %v; want ErrNoPort", c, err)
		if c != nil {
			c.Close()
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in     string
		lo, hi uint16
		ok     bool
	}{
		{"32768\t60999\n", 32768, 60999, true},
		{"1024 65535", 1024, 65535, true},
		{"60999 32768", 0, 0, false},
		{"32768", 0, 0, false},
		{"a b", 0, 0, false},
	} {
		lo, hi, err := parsePortRange(tc.in)
		if (err == nil) != tc.ok || lo != tc.lo || hi != tc.hi {
			t.Errorf("parsePortRange(%q) = %d, %d, %v", tc.in, lo, hi, err)
		}
	}
	ps := candidatePorts(32768, 60999)
	if len(ps) != (65535-60999)+(32768-1024) {
		t.Errorf("%d candidates", len(ps))
	}
	for i, p := range ps {
		if p >= 32768 && p <= 60999 || p < 1024 {
			t.Fatalf("candidate %d inside the range", p)
		}
		if i < 65535-60999 && p <= 60999 {
			t.Fatalf("candidate %d below the range before all above it", p)
		}
	}
}

// TestTeardown: the last Close tears the stack down (DeleteClient) and
// leaves no goroutine and no descriptor behind; the next use makes a new
// stack.
func TestTeardown(t *testing.T) {
	cycle := func() {
		a, fa, b, fb := stackPair(t)
		ln, err := a.Listen("tcp", ":9")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := a.ListenPacket("udp", ":9")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err == nil {
				io.Copy(c, c)
				c.Close()
			}
		}()
		c, err := b.Dial("tcp", "198.18.0.1:9")
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		c.Close()
		ln.Close()
		if _, _, _, closed := fa.snapshot(); closed != 0 {
			t.Error("torn down while a socket is open")
		}
		pc.Close()
		waitClosed(t, fa, "a")
		waitClosed(t, fb, "b")
		if a.st != nil || b.st != nil {
			t.Error("stack still set after the last Close")
		}
	}
	cycle() // warm up: package-level state of gVisor and the runtime
	runtime.GC()
	g0, fd0 := runtime.NumGoroutine(), testkit.OpenFDs(t)
	cycle()
	var g, fd int
	for range 200 { // goroutines that were told to stop may take a moment
		if g, fd = runtime.NumGoroutine(), testkit.OpenFDs(t); g <= g0 && fd <= fd0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if g > g0 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after teardown, %d before:\n%s", g, g0, buf[:runtime.Stack(buf, true)])
	}
	if fd > fd0 {
		t.Errorf("%d descriptors after teardown, %d before", fd, fd0)
	}

	// A new stack after the teardown: the fake hands out a new channel.
	a, fa, b, _ := stackPair(t)
	ln, err := a.Listen("tcp", ":9")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	waitClosed(t, fa, "a")
	if _, err := b.Dial("tcp", "198.18.0.1:9"); err == nil {
		t.Error("dial to a closed stack succeeded")
	}
}

func TestLoopbackRefused(t *testing.T) {
	t.Setenv("USNET_LOOPBACK", "")
	a, _, _, _ := stackPair(t)
	if _, err := a.Dial("tcp", "127.0.0.1:80"); !errors.Is(err, ErrLoopback) {
		t.Errorf("dial loopback: %v", err)
	}
	if a.st != nil {
		t.Error("a stack was made for a loopback dial")
	}
}

func TestLoopbackMirror(t *testing.T) {
	a, _, b, _ := stackPair(t)
	a.Loopback = true
	ln, err := a.Listen("tcp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "via %s", c.LocalAddr())
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		dial func(ctx context.Context, network, address string) (net.Conn, error)
		addr string
	}{
		{(&net.Dialer{}).DialContext, "127.0.0.1"}, // a local program, through the kernel
		{b.DialContext, "198.18.0.1"},              // the other stack
	} {
		c, err := tc.dial(context.Background(), "tcp", net.JoinHostPort(tc.addr, fmt.Sprint(port)))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if want := fmt.Sprintf("via %s:%d", tc.addr, port); string(got) != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}

	pc, err := a.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	kc, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", pc.LocalAddr().(*net.UDPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	kc.Write([]byte("local"))
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "local" {
		t.Fatalf("ReadFrom: %q %v", buf[:n], err)
	}
	if _, err := pc.WriteTo([]byte("back"), from); err != nil {
		t.Fatal(err)
	}
	kc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err = kc.Read(buf)
	if err != nil || string(buf[:n]) != "back" {
		t.Fatalf("kernel read: %q %v", buf[:n], err)
	}
	pc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := pc.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadFrom past the deadline: %v", err)
	}
}

// TestHTTPConcurrent: many short connections at once, each with a port of
// its own chosen concurrently.
func TestHTTPConcurrent(t *testing.T) {
	a, _, b, _ := stackPair(t)
	ln, err := a.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RemoteAddr)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	// Keeps b's stack up between the short connections.
	keep, err := b.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()

	tr := &http.Transport{DialContext: b.DialContext, DisableKeepAlives: true}
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	const workers, each = 8, 25
	errs := make(chan error, workers)
	ports := make(chan string, workers*each)
	for range workers {
		go func() {
			for range each {
				resp, err := client.Get("http://198.18.0.1/")
				if err != nil {
					errs <- err
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					errs <- err
					return
				}
				ports <- string(body)
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(ports)
	n := 0
	for range ports {
		n++
	}
	if n != workers*each {
		t.Errorf("%d answers, want %d", n, workers*each)
	}
}
