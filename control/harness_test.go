package control

// The test harness: a server over an in-memory NIC and kernel port, and
// rawClient, a second client of the protocol that is independent of
// control/client: plain system calls and hand-written JSON strings, as a
// client in another language would do it.

import (
	"bytes"
	"context"
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

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/sockdiag"
	l4 "github.com/usnetd/usnetd/switch"
)

// requirePrivileged fails (under CI=true) or skips a test that needs root.
func requirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root, and CI=true: failing instead of skipping")
	}
	t.Skip("needs root")
}

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
	macNIC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macRemote = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	localIP   = "198.18.0.1"
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
	served  chan error
}

func newEnv(t testing.TB, tune ...func(*ServerConfig)) *env {
	t.Helper()
	requirePrivileged(t)
	e := &env{t: t, dir: t.TempDir(), logs: &syncBuffer{}, served: make(chan error, 1)}
	e.sockets.Store(&[]sockdiag.Socket{})
	e.sw = l4.NewSwitch(l4.NewTable(), l4.MAC(macNIC))
	e.sw.SetLocal([]l4.MAC{l4.MAC(macNIC)}, []l4.Addr{l4.MustParseAddr(localIP)})
	pl, err := l4.NewPipeline(e.sw, l4.PipelineConfig{Buffers: 2048})
	if err != nil {
		t.Fatal(err)
	}
	e.pl = pl
	t.Cleanup(func() { pl.Close() })
	e.nic = memory.New("eth0", l4.PortNIC, memory.Options{Keep: true})
	if _, err := pl.AddPort(e.nic); err != nil {
		t.Fatal(err)
	}
	if e.kernel, err = pl.AddPort(memory.New("eth0-kernel", l4.PortKernel, memory.Options{})); err != nil {
		t.Fatal(err)
	}
	if err := e.sw.Table.Insert(l4.Rule{Key: l4.ListenKey(l4.MustParseAddr(localIP), l4.ProtoTCP, 22),
		Owner: e.kernel, Kind: l4.Registered, Sticky: true}); err != nil {
		t.Fatal(err)
	}
	e.path = filepath.Join(e.dir, "usnetd.socket")
	cfg := ServerConfig{
		SocketPath: e.path,
		Interfaces: []Interface{{Name: "eth0", Pipeline: pl, Backend: "memory", Addrs: []netip.Addr{ip(localIP)}}},
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
	ctx, cancel := context.WithCancel(context.Background())
	go func() { e.served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-e.served:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
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
	return e
}

// setKernelSockets sets the fake kernel inventory.
func (e *env) setKernelSockets(ss ...sockdiag.Socket) { e.sockets.Store(&ss) }

// rules returns the rules of eth0's table.
func (e *env) rules() []l4.Rule { return e.sw.Table.Rules() }

// eventually waits up to d for cond.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

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
	p := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, int(d/time.Millisecond))
	if err != nil && !errors.Is(err, unix.EINTR) {
		c.t.Fatal(err)
	}
	if n == 0 {
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

// tcpFrame builds an Ethernet/IPv4/TCP frame with gopacket.
func tcpFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst string, sport, dport uint16) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), ACK: true, Window: 1024}
	if err := tcp.SetNetworkLayerForChecksum(ip4); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip4, tcp, gopacket.Payload("data")); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readFrame reads one datagram from a channel end within d.
func readFrame(t testing.TB, f *os.File, d time.Duration) ([]byte, bool) {
	t.Helper()
	p := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLIN}}
	if n, _ := unix.Poll(p, int(d/time.Millisecond)); n == 0 {
		return nil, false
	}
	b := make([]byte, 4096)
	n, err := unix.Read(int(f.Fd()), b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n], true
}

// openFDs counts this process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// fdList names this process's open descriptors, for failure messages.
func fdList() map[string]string {
	es, _ := os.ReadDir("/proc/self/fd")
	m := map[string]string{}
	for _, e := range es {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		m[e.Name()] = l
	}
	return m
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
