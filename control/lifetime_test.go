package control

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// endpointPorts counts the pipeline's endpoint ports.
func (e *env) endpointPorts() int {
	n := 0
	for _, p := range e.pl.Stats().Ports {
		if p.Kind == l4.PortEndpoint {
			n++
		}
	}
	return n
}

// onlyKernelRules reports whether the table holds nothing but the
// kernel's DEBUG_PORTS rule.
func (e *env) onlyKernelRules() bool {
	rs := e.rules()
	return len(rs) == 1 && rs[0].Owner == e.kernel
}

func (e *env) gone() bool {
	return len(e.srv.Status().Endpoints) == 0 && e.endpointPorts() == 0 && e.onlyKernelRules()
}

// TestLifetimeChannelClosed: a client that closes its channel loses it and
// its rules within a second.
func TestLifetimeChannelClosed(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	ch := c.requestUDS("eth0", os.Getpid())
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	// A learned rule as well.
	if _, err := ch.Write(tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 50000, 443)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, time.Second, "a learned rule", func() bool { return len(e.rules()) == 3 })
	start := time.Now()
	ch.Close()
	testkit.Eventually(t, time.Second, "the endpoint gone after its channel closed", e.gone)
	t.Logf("gone after %v", time.Since(start))
}

// TestLifetimeDeleteClient: DeleteClient removes every channel and rule at
// once.
func TestLifetimeDeleteClient(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	c.requestUDS("eth0", os.Getpid())
	c.requestUDS("eth0", os.Getpid())
	for _, p := range []int{8080, 8081} {
		if got := c.ask(matchJSON("AddMatch", localIP, p, "", -1, 6)); got != "OK" {
			t.Fatal(got)
		}
	}
	c.send(`"DeleteClient"`)
	c2 := newRawClient(t, e.path, e.dir)
	c2.ask(`"QueryStatus"`) // the DeleteClient was handled before this
	if !e.gone() {
		t.Errorf("after DeleteClient: status %+v, rules %v", e.srv.Status().Endpoints, e.rules())
	}
}

// TestLifetimeChannels: the rules of AddMatch belong to the oldest channel
// and go with it; the endpoint lives on with its other channel, which
// receives the rules added afterwards.
func TestLifetimeChannels(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	first := c.requestUDS("eth0", os.Getpid())
	second := c.requestUDS("eth0", os.Getpid())
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	in := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 8080)
	e.nic.Inject(0, in)
	if _, ok := readFrame(t, first, 2*time.Second); !ok {
		t.Fatal("the oldest channel did not get the frame")
	}
	if _, ok := readFrame(t, second, 100*time.Millisecond); ok {
		t.Fatal("the second channel got the frame")
	}
	first.Close()
	testkit.Eventually(t, time.Second, "the oldest channel and its rule gone", func() bool {
		st := e.srv.Status()
		return len(st.Endpoints) == 1 && st.Endpoints[0].Channels == 1 && len(st.Endpoints[0].Rules) == 0 &&
			e.onlyKernelRules() && e.endpointPorts() == 1
	})
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	e.nic.Inject(0, in)
	if _, ok := readFrame(t, second, 2*time.Second); !ok {
		t.Fatal("the remaining channel did not get the frame")
	}
}

// TestLifetimeProcessExit: when the client process exits, its endpoint goes
// within a second, even while its channel is still open elsewhere (here:
// passed to the test process), so the pidfd is what noticed.
func TestLifetimeProcessExit(t *testing.T) {
	e := newEnv(t)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	carrier := os.NewFile(uintptr(pair[1]), "carrier")
	h := startHelper(t, "handover", e.path, false, carrier)
	carrier.Close()
	got := h.readUntil(helperHello)
	if got["uds"] != "$" || got["match"] != "OK" {
		t.Fatalf("helper: %v", got)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(pair[0], make([]byte, 1), oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
	fds, err := unix.ParseUnixRights(&cms[0])
	if err != nil || len(fds) != 1 {
		t.Fatal(fds, err)
	}
	channel := os.NewFile(uintptr(fds[0]), "channel")
	defer channel.Close()
	if st := e.srv.Status(); len(st.Endpoints) != 1 || st.Endpoints[0].PID != int32(h.cmd.Process.Pid) {
		t.Fatalf("status %+v, want the helper's endpoint", st.Endpoints)
	}
	h.stdin.Close() // the helper exits
	if err := h.cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testkit.Eventually(t, time.Second, "the endpoint of the exited process gone", e.gone)
	t.Logf("gone %v after the exit", time.Since(start))
	if _, err := channel.Write([]byte("x")); err == nil {
		t.Error("the channel still works after its endpoint was removed")
	}
}

// TestLifetimeCycles: 1,000 attach/detach cycles leave no descriptor,
// goroutine or rule behind.
func TestLifetimeCycles(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	// Channels closed without DeleteClient are noticed by an idle probe:
	// probe often, so that a third of the cycles do not take 100 ms each.
	e := newEnv(t, func(c *ServerConfig) {
		c.Channel.Poll, c.Channel.ProbeInterval = 5*time.Millisecond, 5*time.Millisecond
	})
	c := newRawClient(t, e.path, e.dir)
	c.ask(`"QueryStatus"`)
	runtime.GC()
	fds, gs := testkit.OpenFDs(t), runtime.NumGoroutine()
	rules := len(e.rules())
	pid := os.Getpid()
	for i := range n {
		c.send(fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, pid))
		data, got, ok := c.recv(3 * time.Second)
		if !ok || string(data) != "$" || len(got) != 1 {
			t.Fatalf("cycle %d: RequestUDS answered %q with %d fds", i, data, len(got))
		}
		if a := c.ask(matchJSON("AddMatch", localIP, 10000+i%1000, "", -1, 6)); a != "OK" {
			t.Fatalf("cycle %d: AddMatch: %q", i, a)
		}
		switch i % 3 {
		case 0: // DeleteClient, then close
			c.send(`"DeleteClient"`)
			unix.Close(got[0])
		case 1: // close first, then DeleteClient
			unix.Close(got[0])
			c.send(`"DeleteClient"`)
		case 2: // only close: the server notices
			unix.Close(got[0])
			testkit.Eventually(t, 2*time.Second, "the closed channel noticed", func() bool { return e.endpointPorts() == 0 })
		}
	}
	c.ask(`"QueryStatus"`)
	testkit.Eventually(t, 2*time.Second, "every endpoint gone", e.gone)
	if got := len(e.rules()); got != rules {
		t.Errorf("%d rules, %d before", got, rules)
	}
	testkit.Eventually(t, 2*time.Second, "descriptors back to the start", func() bool { return testkit.OpenFDs(t) <= fds })
	if g := settledGoroutines(gs); g > gs {
		t.Errorf("%d goroutines, %d before", g, gs)
	}
}

// TestCloseDetachesEverything: closing the server detaches every endpoint.
func TestCloseDetachesEverything(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	c.requestUDS("eth0", os.Getpid())
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if e.endpointPorts() != 0 || !e.onlyKernelRules() {
		t.Errorf("after Close: %d endpoint ports, rules %v", e.endpointPorts(), e.rules())
	}
	if err := e.srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
