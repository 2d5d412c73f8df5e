package client_test

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control"
	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/sockdiag"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// startServer runs a usnetd control server over an in-memory NIC "eth0".
func startServer(t *testing.T, path string, tune ...func(*control.ServerConfig)) (*control.Server, *l4.Table) {
	t.Helper()
	netlab.Require(t)
	d := testkit.NewDomain(t, testkit.DomainOptions{})
	cfg := control.ServerConfig{
		SocketPath:  path,
		Interfaces:  []control.Interface{{Name: "eth0", Pipeline: d.Pipeline, Backend: "memory", Addrs: []netip.Addr{testkit.NICAddr}}},
		KernelPorts: func() ([]sockdiag.Socket, error) { return nil, nil },
		Log:         zerolog.Nop(),
		Version:     "test",
	}
	for _, f := range tune {
		f(&cfg)
	}
	srv, err := control.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Serve(t, srv.Serve)
	return srv, d.Switch.Table
}

func u16(v uint16) *uint16 { return &v }

var m8080 = wire.Match{DstAddr: netip.MustParseAddr("198.18.0.1"), DstPort: u16(8080), Protocol: 6}

func TestClient(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "usnetd.socket")
	srv, table := startServer(t, path)
	for _, abstract := range []bool{false, true} {
		c, err := client.Dial(client.Options{SocketPath: path, Dir: dir, Abstract: abstract})
		if err != nil {
			t.Fatal(err)
		}
		if abstract != strings.HasPrefix(c.LocalAddr(), "@") {
			t.Errorf("LocalAddr %q", c.LocalAddr())
		}
		if err := c.AddMatch(m8080); !errors.Is(err, client.ErrRefused) {
			t.Errorf("AddMatch before RequestUDS: %v, want ErrRefused", err)
		}
		if _, err := c.RequestUDS("eth9"); !errors.Is(err, client.ErrRefused) {
			t.Errorf("RequestUDS eth9: %v, want ErrRefused", err)
		}
		ch, err := c.RequestUDS("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.AddMatch(m8080); err != nil {
			t.Fatal(err)
		}
		if err := c.AddMatch(m8080); !errors.Is(err, client.ErrRefused) {
			t.Errorf("AddMatch twice: %v, want ErrRefused", err)
		}
		up, err := c.QueryUsedPorts()
		if err != nil || len(up.Listening) != 1 || up.Listening[0].Port != 8080 {
			t.Errorf("QueryUsedPorts = %+v, %v", up, err)
		}
		st, err := c.QueryStatus()
		if err != nil || len(st.Endpoints) != 1 || st.Endpoints[0].Address != c.LocalAddr() || st.Version != "test" {
			t.Errorf("QueryStatus = %+v, %v", st, err)
		}
		if err := c.RemoveMatch(m8080); err != nil {
			t.Fatal(err)
		}
		if _, err := c.QueryStatus(); err != nil { // the RemoveMatch was handled before
			t.Fatal(err)
		}
		if table.Len() != 0 {
			t.Errorf("rules after RemoveMatch: %v", table.Rules())
		}
		if err := c.AddMatch(m8080); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := c.QueryStatus(); !errors.Is(err, client.ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for len(srv.Status().Endpoints) != 0 || table.Len() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("Close left the endpoint: %+v", srv.Status().Endpoints)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := ch.Write([]byte("x")); err == nil {
			t.Error("the channel works after Close")
		}
		ch.Close()
		if !abstract {
			if left, _ := filepath.Glob(filepath.Join(dir, "usnet-client-*")); len(left) != 0 {
				t.Errorf("socket files left: %v", left)
			}
		}
	}
}

// TestRequestChannel: RequestChannel gets a shared-memory channel from a
// usnetd that has them, and falls back to a Unix datagram channel from one
// that answers RequestSHM with ER (the feature off, as in a usnetd
// without it); either way the endpoint and its rules work.
func TestRequestChannel(t *testing.T) {
	for _, noSHM := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "usnetd.socket")
		srv, table := startServer(t, path, func(c *control.ServerConfig) { c.NoSHM = noSHM })
		c, err := client.Dial(client.Options{SocketPath: path, Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		ch, err := c.RequestChannel("eth0")
		if err != nil {
			t.Fatalf("noSHM %v: %v", noSHM, err)
		}
		want := "shm"
		if noSHM {
			want = "uds"
		}
		if ch.Kind() != want || (ch.SHM == nil) == (ch.UDS == nil) {
			t.Fatalf("noSHM %v: a %s channel (%+v), want %s", noSHM, ch.Kind(), ch, want)
		}
		if err := c.AddMatch(m8080); err != nil {
			t.Fatal(err)
		}
		st := srv.Status()
		if len(st.Endpoints) != 1 || len(st.Endpoints[0].ChannelKinds) != 1 || st.Endpoints[0].ChannelKinds[0] != want || table.Len() != 1 {
			t.Fatalf("noSHM %v: status %+v", noSHM, st.Endpoints)
		}
		if _, err := c.RequestChannel("eth9"); !errors.Is(err, client.ErrRefused) {
			t.Errorf("RequestChannel eth9: %v, want ErrRefused", err)
		}
		ch.Close()
		c.Close()
	}
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := client.Dial(client.Options{SocketPath: filepath.Join(dir, "none.socket"), Dir: dir})
	if !errors.Is(err, client.ErrNotRunning) || !strings.Contains(err.Error(), "no socket") {
		t.Errorf("no socket: %v", err)
	}
	stale := filepath.Join(dir, "stale.socket")
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: stale}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if _, err := client.Dial(client.Options{SocketPath: stale, Dir: dir}); !errors.Is(err, client.ErrNotRunning) || !strings.Contains(err.Error(), "stale") {
		t.Errorf("stale socket: %v", err)
	}
	if _, err := client.Dial(client.Options{SocketPath: "@usnetd-nobody-here-" + t.Name(), Abstract: true}); !errors.Is(err, client.ErrNotRunning) {
		t.Errorf("abstract, nobody there: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "usnet-client-*")); len(left) != 0 {
		t.Errorf("failed dials left socket files: %v", left)
	}
}

// fakeServer is a bound socket that plays usnetd by hand.
func fakeServer(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestTimeoutAndStaleAnswers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mute.socket")
	srv := fakeServer(t, path)
	c, err := client.Dial(client.Options{SocketPath: path, Dir: dir, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := c.QueryStatus(); !errors.Is(err, client.ErrTimeout) {
		t.Errorf("QueryStatus from a mute server: %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Errorf("timed out after %v, want about 200 ms", d)
	}
	// The late answer to that request, then the right one: the client must
	// not take the late one.
	buf := make([]byte, 100)
	n, from, err := unix.Recvfrom(srv, buf, 0)
	if err != nil || string(buf[:n]) != `"QueryStatus"` {
		t.Fatalf("fake server got %q, %v", buf[:n], err)
	}
	if err := unix.Sendto(srv, []byte("ER"), 0, from); err != nil {
		t.Fatal(err)
	}
	go func() {
		n, from, err := unix.Recvfrom(srv, buf, 0)
		if err == nil && string(buf[:n]) == `"QueryUsedPorts"` {
			unix.Sendto(srv, []byte(`{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},22]],"connected":[]}}`), 0, from)
		}
	}()
	time.Sleep(50 * time.Millisecond) // the late "ER" is queued
	up, err := c.QueryUsedPorts()
	if err != nil || len(up.Listening) != 1 {
		t.Errorf("QueryUsedPorts after a late answer: %+v, %v", up, err)
	}
}

// TestOnlyServerMayAnswer: a third process cannot inject answers: the
// client's socket is connected to the server.
func TestOnlyServerMayAnswer(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.socket")
	fakeServer(t, path)
	c, err := client.Dial(client.Options{SocketPath: path, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(fd)
	err = unix.Sendto(fd, []byte("OK"), 0, &unix.SockaddrUnix{Name: c.LocalAddr()})
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("a stranger's send to the client: %v, want EPERM", err)
	}
}

func TestNoLeaks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "usnetd.socket")
	startServer(t, path)
	fds := func() int { return testkit.OpenFDs(t) }
	c, _ := client.Dial(client.Options{SocketPath: path, Dir: dir})
	c.QueryStatus()
	c.Close()
	before := fds()
	for range 100 {
		c, err := client.Dial(client.Options{SocketPath: path, Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		ch, err := c.RequestUDS("eth0")
		if err != nil {
			t.Fatal(err)
		}
		ch.Close()
		c.Close()
	}
	deadline := time.Now().Add(2 * time.Second)
	for fds() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := fds(); n > before {
		t.Errorf("%d descriptors open, %d before", n, before)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "usnet-client-*"))
	if len(left) != 0 {
		t.Errorf("socket files left: %v", left)
	}
}
