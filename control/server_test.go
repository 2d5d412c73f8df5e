package control

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// TestWireOnSocket checks every message of the original on the socket,
// byte for byte in both directions, with the independent raw client.
func TestWireOnSocket(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	pid := os.Getpid()

	// Before a channel: AddMatch is refused (the original did not answer).
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "ER" {
		t.Errorf("AddMatch without channel: %q, want ER", got)
	}
	ch := c.requestUDS("eth0", pid)
	if got := c.ask(`{"RequestUDS":["eth1",` + fmt.Sprint(pid) + `]}`); got != "ER" {
		t.Errorf("RequestUDS for an unknown interface: %q, want ER", got)
	}
	if got := c.ask(`{"RequestNetmapPipe":["eth0",` + fmt.Sprint(pid) + `]}`); got != "ER" {
		t.Errorf("RequestNetmapPipe: %q, want ER", got)
	}
	// the original's AddMatch, exactly (docs/architecture.md, Control protocol).
	am := `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":null,"src_port":null,"protocol":6}}`
	if got := c.ask(am); got != "OK" {
		t.Fatalf("AddMatch: %q, want OK", got)
	}
	if got := c.ask(am); got != "ER" {
		t.Errorf("AddMatch of a rule held already: %q, want ER", got)
	}
	// Field order is free, optional fields may be absent.
	if got := c.ask(`{"AddMatch":{"protocol":6,"src_port":41234,"dst_port":41234,"dst_addr":{"Ipv4":"198.18.0.1"},"src_addr":{"Ipv4":"198.18.1.2"}}}`); got != "OK" {
		t.Errorf("AddMatch, fields reordered: %q, want OK", got)
	}
	if got := c.ask(`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":17,"dst_port":5353}}`); got != "OK" {
		t.Errorf("AddMatch, optional fields absent: %q, want OK", got)
	}
	c.send(`{"RemoveMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":17,"dst_port":5353}}`)
	c.send(`{"RemoveMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":null,"src_port":null,"protocol":6}}`)
	c.noAnswer(200*time.Millisecond, "RemoveMatch")
	// The kernel's DEBUG_PORTS rule (22) and the endpoint's connected rule
	// (41234): the original's answer, byte for byte.
	want := `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},22]],"connected":[[6,{"Ipv4":"198.18.0.1"},41234]]}}`
	if got := c.ask(`"QueryUsedPorts"`); got != want {
		t.Errorf("QueryUsedPorts:\n got %s\nwant %s", got, want)
	}
	if got := c.ask(`{"QueryUsedPorts":null}`); got != want {
		t.Errorf("QueryUsedPorts as an object: %s", got)
	}
	// QueryStatus decodes and names the endpoint by its address.
	st := c.ask(`"QueryStatus"`)
	if !strings.HasPrefix(st, `{"QueryStatusAnswer":{"version":"test","interfaces":[{"name":"eth0","backend":"memory","queues":1,"xdp_mode":""}],"endpoints":[{"id":1,"pid":`+fmt.Sprint(pid)) {
		t.Errorf("QueryStatus: %s", st)
	}
	a, err := wire.DecodeAnswer([]byte(st))
	if err != nil {
		t.Fatal(err)
	}
	s := a.(wire.Status)
	if len(s.Endpoints) != 1 || s.Endpoints[0].Address != c.addr() || s.Endpoints[0].Channels != 1 ||
		len(s.Endpoints[0].Rules) != 1 || s.Endpoints[0].UID != uint32(os.Getuid()) {
		t.Errorf("QueryStatus endpoints = %+v", s.Endpoints)
	}
	if len(s.Rules) != 2 || s.Rules[0].Owner != "kernel eth0-kernel" || !s.Rules[0].Sticky || s.Rules[1].Owner != "endpoint 1" {
		t.Errorf("QueryStatus rules = %+v", s.Rules)
	}
	// DeleteClient: no answer, channel and rules gone.
	c.send(`"DeleteClient"`)
	c.noAnswer(200*time.Millisecond, "DeleteClient")
	if got := c.ask(`"QueryUsedPorts"`); got != `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},22]],"connected":[]}}` {
		t.Errorf("QueryUsedPorts after DeleteClient: %s", got)
	}
	if _, err := ch.Write([]byte("x")); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("writing to the deleted channel: %v, want ECONNREFUSED", err)
	}
}

// TestChannelCarriesFrames: the "$" descriptor is a working channel, both
// ways, and the rules of an endpoint decide what reaches it.
func TestChannelCarriesFrames(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	ch := c.requestUDS("eth0", os.Getpid())
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	in := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 8080)
	e.nic.Inject(0, in)
	if got, ok := readFrame(t, ch, 2*time.Second); !ok || string(got) != string(in) {
		t.Fatalf("the channel did not get the frame for its rule")
	}
	other := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 8081)
	e.nic.Inject(0, other)
	if _, ok := readFrame(t, ch, 200*time.Millisecond); ok {
		t.Error("the channel got a frame no rule of its sends it")
	}
	out := tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 8080, 40000)
	if _, err := ch.Write(out); err != nil {
		t.Fatal(err)
	}
	if !e.nic.WaitSent(1, 2*time.Second) || string(e.nic.Sent()[0]) != string(out) {
		t.Fatal("the endpoint's frame did not leave through the NIC")
	}
	st := e.srv.Status()
	if st.Endpoints[0].RxPackets != 1 || st.Endpoints[0].TxPackets != 1 {
		t.Errorf("counters rx %d tx %d, want 1 and 1", st.Endpoints[0].RxPackets, st.Endpoints[0].TxPackets)
	}
}

// TestChannelOversizedFramesCounted: a frame longer than a buffer that an
// endpoint writes into its channel is dropped and counted (ChannelDrops,
// exported as usnetd_backend_drops_total{backend="uds",reason="rx_too_big"}),
// also after the channel went; the frame next to it goes out.
func TestChannelOversizedFramesCounted(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	ch := c.requestUDS("eth0", os.Getpid())
	out := tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 8080, 40000)
	big := append(append([]byte(nil), out...), make([]byte, 64<<10-len(out))...)
	for _, f := range [][]byte{big, out} {
		if _, err := ch.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	if !e.nic.WaitSent(1, 2*time.Second) || string(e.nic.Sent()[0]) != string(out) {
		t.Fatal("the endpoint's frame after the oversized one did not leave through the NIC")
	}
	if got := e.srv.ChannelDrops("eth0")["rx_too_big"]; got != 1 {
		t.Fatalf("rx_too_big %d, want 1", got)
	}
	c.send(`"DeleteClient"`)
	c.noAnswer(200*time.Millisecond, "DeleteClient")
	if got := e.srv.ChannelDrops("eth0")["rx_too_big"]; got != 1 {
		t.Fatalf("after the channel went: rx_too_big %d, want 1 (a running total)", got)
	}
	if e.srv.ChannelDrops("eth9") != nil {
		t.Error("drops for an interface the server does not have")
	}
}

// TestAbstractClient: a client bound to an abstract name, even one with a
// NUL in it, is answered at exactly that name, never at a prefix of it.
func TestAbstractClient(t *testing.T) {
	e := newEnv(t)
	prefix := fmt.Sprintf("usnet-abstract-%d", os.Getpid())
	c := newRawClientNamed(t, e.path, "\x00"+prefix+"\x00tail")
	decoy := newRawClientNamed(t, e.path, "\x00"+prefix)
	c.requestUDS("eth0", os.Getpid())
	if got := c.ask(matchJSON("AddMatch", localIP, 9000, "", -1, 17)); got != "OK" {
		t.Fatal(got)
	}
	decoy.noAnswer(100*time.Millisecond, "a request of another client")
	st := e.srv.Status()
	if len(st.Endpoints) != 1 || st.Endpoints[0].Address != `@`+prefix+`\x00tail` {
		t.Errorf("endpoint address %q", st.Endpoints[0].Address)
	}
}

func newRawClientNamed(t testing.TB, server, name string) *rawClient {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := &rawClient{t: t, fd: fd, name: name, server: server}
	if err := c.bind(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c
}

// TestMalformed: every bad message is logged at warn with the client's
// address and answered "ER" where an answer is due; the server goes on.
func TestMalformed(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	ch := c.requestUDS("eth0", os.Getpid())
	_ = ch
	due := []string{
		``,
		`{`,
		`"Hello"`,
		`null`,
		`{"RequestUDS":["eth0"]}`,
		`{"RequestUDS":["eth0",-1]}`,
		`{"RequestUDS":["eth/0",1]}`,
		`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.300"},"protocol":6}}`,
		`{"AddMatch":{"dst_addr":{"Ipv6":"::ffff:198.18.0.1"},"dst_port":80,"protocol":6}}`, // mapped: the policy refuses it
		`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`,                      // TCP without a port
		`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":80,"src_port":1,"protocol":6}}`,
		`{"AddMatch":{"dst_addr":{"Ipv4":"127.0.0.1"},"dst_port":8080,"protocol":6}}`,
		`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":{"Ipv6":"2001:db8::1"},"protocol":6}}`,
		`{"QueryUsedPortsAnswer":{"listening":[],"connected":[]}}`,
		"\xff\xfe",
		`"QueryStatus" trailing`,
		strings.Repeat(" ", wire.MaxMessageSize) + `"QueryStatus"`, // too long
		`{"QueryStatus":` + strings.Repeat("[", 100000),            // too long as well
	}
	for _, m := range due {
		if got := c.ask(m); got != "ER" {
			t.Errorf("%.60q: answer %q, want ER", m, got)
		}
	}
	// No answer is due for these; an "ER" would be read as the answer to
	// the client's next request.
	for _, m := range []string{
		`{"RemoveMatch":{"dst_addr":{"Ipv4":"198.18.0.300"},"protocol":6}}`,
		`{"RemoveMatch":null}`,
		`{"DeleteClient":{}}`,
	} {
		c.send(m)
		c.noAnswer(100*time.Millisecond, m)
	}
	logs := e.logs.String()
	if n := strings.Count(logs, `"level":"warn"`); n < len(due)+3 {
		t.Errorf("%d warnings logged, want at least %d", n, len(due)+3)
	}
	if !strings.Contains(logs, `"client":"`+c.addr()+`"`) {
		t.Errorf("the warnings do not name the client %s", c.addr())
	}
	// Still serving, and the client still has its channel.
	if st := e.srv.Status(); len(st.Endpoints) != 1 || st.Endpoints[0].Channels != 1 {
		t.Errorf("status after the bad messages: %+v", st.Endpoints)
	}
}

// TestDescriptorsSentToServerAreClosed: descriptors a client sends along
// are closed, not kept.
func TestDescriptorsSentToServerAreClosed(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	c.ask(`"QueryStatus"`) // warm up
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	before := testkit.OpenFDs(t)
	list := testkit.FDList()
	defer func() {
		if t.Failed() {
			t.Logf("descriptors before: %v\nafter: %v", list, testkit.FDList())
		}
	}()
	for range 20 {
		if err := unix.Sendmsg(c.fd, []byte(`"QueryStatus"`), unix.UnixRights(int(r.Fd()), int(w.Fd())), serverSockaddr(c.server), 0); err != nil {
			t.Fatal(err)
		}
		if data, fds, ok := c.recv(2 * time.Second); !ok || !strings.HasPrefix(string(data), `{"QueryStatusAnswer"`) || len(fds) != 0 {
			t.Fatalf("answer %q, %d fds", data, len(fds))
		}
	}
	// The server closes its pidfd of a message after answering it.
	// ("before" may count the pidfd of the warm-up message still.)
	testkit.Eventually(t, time.Second, "the descriptors of the messages closed", func() bool { return testkit.OpenFDs(t) <= before })
}

// TestUnboundSender: a sender without an address cannot be answered; it
// is logged, and the server goes on.
func TestUnboundSender(t *testing.T) {
	e := newEnv(t)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, []byte(`"QueryStatus"`), 0, serverSockaddr(e.path)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "a warning about the unbound sender", func() bool {
		return strings.Contains(e.logs.String(), "unbound socket")
	})
	c := newRawClient(t, e.path, e.dir)
	c.ask(`"QueryStatus"`)
}

// TestRequestPIDMustBeSender: the PID in RequestUDS must be the sender's
// process or one of its threads.
func TestRequestPIDMustBeSender(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	for _, pid := range []int{1, 0, 2147483647} {
		if got := c.ask(fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, pid)); got != "ER" {
			t.Errorf("RequestUDS with PID %d: %q, want ER", pid, got)
		}
	}
	// A thread id of this process will do (the Rust client sends one).
	tid := make(chan int)
	release := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		<-release
	}()
	id := <-tid
	defer close(release)
	c.requestUDS("eth0", id)
	if st := e.srv.Status(); len(st.Endpoints) != 1 || st.Endpoints[0].PID != int32(os.Getpid()) {
		t.Errorf("endpoint %+v, want the process id %d", st.Endpoints, os.Getpid())
	}
}

// TestLimits: MaxChannelsPerClient, MaxRulesPerClient and MaxClients.
func TestLimits(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) {
		c.MaxChannelsPerClient = 2
		c.MaxRulesPerClient = 3
		c.MaxClients = 2
	})
	c := newRawClient(t, e.path, e.dir)
	pid := os.Getpid()
	c.requestUDS("eth0", pid)
	c.requestUDS("eth0", pid)
	if got := c.ask(fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, pid)); got != "ER" {
		t.Errorf("third channel: %q, want ER", got)
	}
	for i := range 3 {
		if got := c.ask(matchJSON("AddMatch", localIP, 9000+i, "", -1, 6)); got != "OK" {
			t.Fatalf("rule %d: %q", i, got)
		}
	}
	if got := c.ask(matchJSON("AddMatch", localIP, 9100, "", -1, 6)); got != "ER" {
		t.Errorf("fourth rule: %q, want ER", got)
	}
	c2 := newRawClient(t, e.path, e.dir)
	c2.requestUDS("eth0", pid)
	c3 := newRawClient(t, e.path, e.dir)
	if got := c3.ask(fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, pid)); got != "ER" {
		t.Errorf("third client: %q, want ER", got)
	}
}

// TestLearnedRulesLimited: learned rules count against MaxRulesPerClient
// where they are learned: the flows beyond the limit are never learned,
// their frames are dropped and counted as rule_limit, while the flows
// within it go on.
func TestLearnedRulesLimited(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) { c.MaxRulesPerClient = 5 })
	c := newRawClient(t, e.path, e.dir)
	ch := c.requestUDS("eth0", os.Getpid())
	for i := range 20 {
		if _, err := ch.Write(tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", uint16(50000+i), 443)); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 2*time.Second, "every frame decided", func() bool {
		return e.nic.SentCount()+e.pl.Stats().Drops[l4.DropRuleLimit] == 20
	})
	learned := func() int {
		n := 0
		for _, r := range e.rules() {
			if r.Kind == l4.Learned {
				n++
			}
		}
		return n
	}
	if n, sent, d := learned(), e.nic.SentCount(), e.pl.Stats().Drops[l4.DropRuleLimit]; n != 5 || sent != 5 || d != 15 {
		t.Fatalf("%d learned rules, %d frames sent, %d rule_limit drops; want 5, 5, 15", n, sent, d)
	}
	// A learned flow goes on; a new one is still refused.
	if _, err := ch.Write(tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 50000, 443)); err != nil {
		t.Fatal(err)
	}
	if !e.nic.WaitSent(6, 2*time.Second) {
		t.Fatal("a frame of a learned flow was not sent")
	}
	if got := c.ask(matchJSON("AddMatch", localIP, 9000, "", -1, 6)); got != "ER" {
		t.Errorf("AddMatch at the limit: %q, want ER", got)
	}
	if n := e.srv.Refused()["rules"]; n != 1 {
		t.Errorf("rules refused %d, want 1", n)
	}
}

// TestLimitsPerUID: clients, channels and rules are limited per user and
// in total; one user at its limits leaves the other's requests and every
// channel's traffic alone.
func TestLimitsPerUID(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) {
		c.HasAllowGID, c.AllowGID = true, uint32(os.Getgid())
		c.MaxClients = 4
		c.MaxClientsPerUID = 2
		c.MaxChannels = 5
		c.MaxChannelsPerUID = 3
		c.MaxRulesPerClient = 3
		c.MaxRulesPerUID = 4
	})
	const alice, bob = 1000, 1001
	pid := os.Getpid()
	req := fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, pid)
	want := func(c *rawClient, uid uint32, msg, answer string) {
		t.Helper()
		if got, _ := c.askAs(msg, uid); got != answer {
			t.Fatalf("uid %d, %s: %q, want %q", uid, msg, got, answer)
		}
	}
	a1, a2, a3 := newRawClient(t, e.path, e.dir), newRawClient(t, e.path, e.dir), newRawClient(t, e.path, e.dir)
	want(a1, alice, req, "$")
	want(a1, alice, req, "$")
	want(a2, alice, req, "$")
	want(a2, alice, req, "ER") // alice has 3 channels
	want(a3, alice, req, "ER") // alice has 2 clients
	b1, b2 := newRawClient(t, e.path, e.dir), newRawClient(t, e.path, e.dir)
	ans, fds := b1.askAs(req, bob)
	if ans != "$" || len(fds) != 1 {
		t.Fatalf("bob's first channel: %q with %d fds", ans, len(fds))
	}
	bobCh := os.NewFile(uintptr(fds[0]), "bob")
	want(b1, bob, req, "$")
	want(b2, bob, req, "ER") // 5 channels in all
	// Rules: 3 per client, 4 per user.
	for i := range 3 {
		want(a1, alice, matchJSON("AddMatch", localIP, 9000+i, "", -1, 6), "OK")
	}
	want(a1, alice, matchJSON("AddMatch", localIP, 9010, "", -1, 6), "ER") // the client's 3
	want(a2, alice, matchJSON("AddMatch", localIP, 9011, "", -1, 6), "OK")
	want(a2, alice, matchJSON("AddMatch", localIP, 9012, "", -1, 6), "ER") // alice's 4
	want(b1, bob, matchJSON("AddMatch", localIP, 9020, "", -1, 6), "OK")
	got := e.srv.Refused()
	for name, n := range map[string]uint64{"channels_per_uid": 1, "clients_per_uid": 1, "channels": 1, "rules": 2, "clients": 0, "channels_per_client": 0} {
		if got[name] != n {
			t.Errorf("refused %s: %d, want %d (%v)", name, got[name], n, got)
		}
	}
	// The legitimate traffic: the NIC's frame for bob's rule reaches him.
	in := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 9020)
	e.nic.Inject(0, in)
	if got, ok := readFrame(t, bobCh, 2*time.Second); !ok || !bytes.Equal(got, in) {
		t.Fatalf("bob's channel read %d bytes (ok %v), want the frame for his rule", len(got), ok)
	}
	if st := e.srv.Status(); len(st.Endpoints) != 3 {
		t.Fatalf("%d endpoints, want 3", len(st.Endpoints))
	}
	// Alice leaves: her slots are free again, for her and in total.
	a2.sendAs(`"DeleteClient"`, alice)
	testkit.Eventually(t, 2*time.Second, "alice's second client gone", func() bool { return len(e.srv.Status().Endpoints) == 2 })
	want(a3, alice, req, "$")
	want(a3, alice, matchJSON("AddMatch", localIP, 9013, "", -1, 6), "OK")
}

// TestSecondServerRefused: a second server on a live socket refuses to
// start; a stale socket is replaced; anything else is left alone.
func TestSecondServerRefused(t *testing.T) {
	e := newEnv(t)
	if _, err := NewServer(ServerConfig{SocketPath: e.path}); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second server on %s: %v, want ErrAlreadyRunning", e.path, err)
	}
	// The same without the lock file, as against the original usnetd: the
	// probe finds the live server.
	if err := clearStale(clientAddr{name: e.path}); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("clearStale on a live socket: %v", err)
	}
	c := newRawClient(t, e.path, e.dir)
	c.ask(`"QueryStatus"`) // the first one still serves

	dir := t.TempDir()
	// A stale socket: bound, then its process went away.
	stale := filepath.Join(dir, "stale.socket")
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: stale}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	srv, err := NewServer(ServerConfig{SocketPath: stale})
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	if fi, err := os.Stat(stale); err != nil || fi.Mode().Perm() != 0o770 {
		t.Errorf("socket mode %v, %v; want 0770", fi.Mode(), err)
	}
	srv.Close()
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Error("Close left the socket file")
	}
	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(ServerConfig{SocketPath: file}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Error("the regular file was removed")
	}
	// A socket someone is bound to but that does not answer.
	mute := filepath.Join(dir, "mute.socket")
	mfd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(mfd)
	if err := unix.Bind(mfd, &unix.SockaddrUnix{Name: mute}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(ServerConfig{SocketPath: mute}); err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("over a mute socket: %v", err)
	}
	// Abstract: the second is refused.
	name := fmt.Sprintf("@usnetd-test-%d", os.Getpid())
	a, err := NewServer(ServerConfig{SocketPath: name})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	go a.Serve(t.Context())
	if _, err := NewServer(ServerConfig{SocketPath: name}); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second abstract server: %v, want ErrAlreadyRunning", err)
	}
}

// TestSocketGroup: with ALLOW_GID the socket file belongs to that group.
func TestSocketGroup(t *testing.T) {
	netlab.Require(t)
	path := filepath.Join(t.TempDir(), "g.socket")
	srv, err := NewServer(ServerConfig{SocketPath: path, AllowGID: 4242, HasAllowGID: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Gid != 4242 || st.Mode&0o777 != 0o770 {
		t.Errorf("socket gid %d mode %o, want 4242 and 0770", st.Gid, st.Mode&0o777)
	}
}
