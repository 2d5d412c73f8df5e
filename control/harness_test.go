package control

// The test harness: a server over an in-memory NIC and kernel port, and
// rawClient, a second client of the protocol that is independent of
// control/client: plain system calls and hand-written JSON strings, as a
// client in another language would do it.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/sockdiag"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// syncBuffer collects the server's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	macNIC    = testkit.NICMAC
	macRemote = testkit.RemoteMAC
	localIP   = testkit.NICAddr.String()
)

// env is a running server with one interface "eth0": an in-memory NIC and
// an in-memory kernel port holding DEBUG_PORTS 22.
type env struct {
	t       testing.TB
	srv     *Server
	sw      *l4.Switch
	pl      *l4.Pipeline
	nic     *memory.Port
	kernel  l4.Owner
	dir     string
	path    string // socket path (or "@name")
	logs    *syncBuffer
	sockets atomic.Pointer[[]sockdiag.Socket] // the fake kernel inventory
	invErr  atomic.Pointer[error]             // or its error
}

func newEnv(t testing.TB, tune ...func(*ServerConfig)) *env {
	t.Helper()
	netlab.Require(t)
	e := &env{t: t, dir: t.TempDir(), logs: &syncBuffer{}}
	e.sockets.Store(&[]sockdiag.Socket{})
	d := testkit.NewDomain(t, testkit.DomainOptions{KernelPorts: []uint16{22}})
	e.sw, e.pl, e.nic, e.kernel = d.Switch, d.Pipeline, d.NIC, d.Kernel
	e.path = filepath.Join(e.dir, "usnetd.socket")
	cfg := ServerConfig{
		SocketPath: e.path,
		Interfaces: []Interface{{Name: "eth0", Pipeline: e.pl, Backend: "memory", Addrs: []netip.Addr{ip(localIP)}}},
		KernelPorts: func() ([]sockdiag.Socket, error) {
			if err := e.invErr.Load(); err != nil {
				return nil, *err
			}
			return *e.sockets.Load(), nil
		},
		Log:     zerolog.New(e.logs).Level(zerolog.InfoLevel),
		Version: "test",
	}
	for _, f := range tune {
		f(&cfg)
	}
	e.path = cfg.SocketPath
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	// Runs after Serve returned (cleanups run last-in first-out).
	t.Cleanup(func() {
		if !strings.HasPrefix(e.path, "@") {
			if _, err := os.Lstat(e.path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket file left behind: %v", err)
			}
			if _, err := os.Lstat(e.path + ".lock"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("lock file left behind: %v", err)
			}
		}
		if t.Failed() {
			t.Logf("server log:\n%s", e.logs)
		}
	})
	testkit.Serve(t, srv.Serve)
	return e
}

// setKernelSockets sets the fake kernel inventory.
func (e *env) setKernelSockets(ss ...sockdiag.Socket) { e.sockets.Store(&ss) }

// rules returns the rules of eth0's table.
func (e *env) rules() []l4.Rule { return e.sw.Table.Rules() }

// rawClient speaks the protocol with system calls and JSON written by
// hand, as the original's Rust clients did: bind a path (or an abstract
// name), sendto the server's path, recvmsg the answers.
type rawClient struct {
	t      testing.TB
	fd     int
	name   string // bound path, or "\x00..." for an abstract name
	server string
}

var rawSeq atomic.Uint64

// newRawClient binds a client socket: in dir, or abstract when dir is "".
func newRawClient(t testing.TB, server, dir string) *rawClient {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := rawSeq.Add(1)
	c := &rawClient{t: t, fd: fd, server: server}
	if dir == "" {
		c.name = fmt.Sprintf("\x00usnet-test-%d-%d", os.Getpid(), n)
	} else {
		c.name = filepath.Join(dir, fmt.Sprintf("usnet-client-%d-%d", os.Getpid(), n))
	}
	if err := c.bind(); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c
}

func (c *rawClient) bind() error {
	if strings.HasPrefix(c.name, "\x00") {
		return unix.Bind(c.fd, &unix.SockaddrUnix{Name: "@" + c.name[1:]})
	}
	return unix.Bind(c.fd, &unix.SockaddrUnix{Name: c.name})
}

// addr is how the server names this client in logs and QueryStatus.
func (c *rawClient) addr() string {
	if strings.HasPrefix(c.name, "\x00") {
		return "@" + c.name[1:]
	}
	return c.name
}

func serverSockaddr(server string) *unix.SockaddrUnix { return &unix.SockaddrUnix{Name: server} }

// send sends msg as it is.
func (c *rawClient) send(msg string) {
	c.t.Helper()
	if err := unix.Sendto(c.fd, []byte(msg), 0, serverSockaddr(c.server)); err != nil {
		c.t.Fatalf("sendto %s: %v", c.server, err)
	}
}

// recv returns the next answer and any descriptors it carries; ok is
// false when none came within d.
func (c *rawClient) recv(d time.Duration) (data []byte, fds []int, ok bool) {
	c.t.Helper()
	ready, err := testkit.WaitReadable(c.fd, d)
	if err != nil {
		c.t.Fatal(err)
	}
	if !ready {
		return nil, nil, false
	}
	buf := make([]byte, wire.MaxAnswerSize+1)
	oob := make([]byte, unix.CmsgSpace(4*8))
	k, oobn, _, _, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		c.t.Fatal(err)
	}
	cms, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		c.t.Fatal(err)
	}
	for i := range cms {
		if f, err := unix.ParseUnixRights(&cms[i]); err == nil {
			fds = append(fds, f...)
		}
	}
	return buf[:k], fds, true
}

// ask sends msg and returns the answer, failing the test if none comes.
func (c *rawClient) ask(msg string) string {
	c.t.Helper()
	c.send(msg)
	data, fds, ok := c.recv(3 * time.Second)
	if !ok {
		c.t.Fatalf("no answer to %s", msg)
	}
	for _, fd := range fds {
		unix.Close(fd)
		c.t.Errorf("unexpected descriptor with the answer to %s", msg)
	}
	return string(data)
}

// noAnswer checks that nothing comes within d.
func (c *rawClient) noAnswer(d time.Duration, after string) {
	c.t.Helper()
	if data, fds, ok := c.recv(d); ok {
		for _, fd := range fds {
			unix.Close(fd)
		}
		c.t.Errorf("unexpected answer %q after %s", data, after)
	}
}

// requestUDS asks for a channel on iface with pid and returns it.
func (c *rawClient) requestUDS(iface string, pid int) *os.File {
	c.t.Helper()
	c.send(`{"RequestUDS":["` + iface + `",` + strconv.Itoa(pid) + `]}`)
	data, fds, ok := c.recv(3 * time.Second)
	if !ok || string(data) != "$" || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		c.t.Fatalf("RequestUDS: answer %q with %d fds (ok %v), want \"$\" with one", data, len(fds), ok)
	}
	f := os.NewFile(uintptr(fds[0]), "channel")
	c.t.Cleanup(func() { f.Close() })
	return f
}

func (c *rawClient) close() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
		if !strings.HasPrefix(c.name, "\x00") {
			os.Remove(c.name)
		}
	}
}

// addMatchJSON writes an AddMatch (or RemoveMatch with verb) by hand.
func matchJSON(verb, dst string, dport int, src string, sport int, proto int) string {
	fam := func(a string) string {
		if strings.Contains(a, ":") {
			return `{"Ipv6":"` + a + `"}`
		}
		return `{"Ipv4":"` + a + `"}`
	}
	opt := func(v int) string {
		if v < 0 {
			return "null"
		}
		return strconv.Itoa(v)
	}
	s := "null"
	if src != "" {
		s = fam(src)
	}
	return `{"` + verb + `":{"dst_addr":` + fam(dst) + `,"dst_port":` + opt(dport) + `,"src_addr":` + s +
		`,"src_port":` + opt(sport) + `,"protocol":` + strconv.Itoa(proto) + `}}`
}

// tcpFrame builds an Ethernet/IPv4/TCP segment (ACK) with gopacket.
func tcpFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst string, sport, dport uint16) []byte {
	t.Helper()
	return testkit.TCP(t, srcMAC, dstMAC, testkit.AddrPort(src, sport), testkit.AddrPort(dst, dport), testkit.ACK, []byte("data"))
}

// readFrame reads one datagram from a channel end within d.
func readFrame(t testing.TB, f *os.File, d time.Duration) ([]byte, bool) {
	t.Helper()
	if ready, _ := testkit.WaitReadable(int(f.Fd()), d); !ready {
		return nil, false
	}
	b := make([]byte, 4096)
	n, err := unix.Read(int(f.Fd()), b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n], true
}

// settledGoroutines waits until the number of goroutines is at most n and
// returns it.
func settledGoroutines(n int) int {
	deadline := time.Now().Add(2 * time.Second)
	for {
		g := runtime.NumGoroutine()
		if g <= n || time.Now().After(deadline) {
			return g
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sendAs sends msg with explicit credentials naming uid (root may name any
// uid in SCM_CREDENTIALS): a client of another user without a second
// process.
func (c *rawClient) sendAs(msg string, uid uint32) {
	c.t.Helper()
	oob := unix.UnixCredentials(&unix.Ucred{Pid: int32(os.Getpid()), Uid: uid, Gid: uint32(os.Getgid())})
	if err := unix.Sendmsg(c.fd, []byte(msg), oob, serverSockaddr(c.server), 0); err != nil {
		c.t.Fatalf("sendmsg %s: %v", c.server, err)
	}
}

// askAs is ask with the credentials of uid.
func (c *rawClient) askAs(msg string, uid uint32) (string, []int) {
	c.t.Helper()
	c.sendAs(msg, uid)
	data, fds, ok := c.recv(3 * time.Second)
	if !ok {
		c.t.Fatalf("no answer to %s", msg)
	}
	for _, fd := range fds {
		f := os.NewFile(uintptr(fd), "channel")
		c.t.Cleanup(func() { f.Close() })
	}
	return string(data), fds
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }
