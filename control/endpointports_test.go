package control

import (
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// fakeEndpointPorts records what the server tells the kernel side.
type fakeEndpointPorts struct {
	mu   sync.Mutex
	keys map[l4.Key]bool
	fail bool // AddEndpointPort fails (a full map)
}

func (f *fakeEndpointPorts) AddEndpointPort(k l4.Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("map full")
	}
	f.keys[k] = true
	return nil
}

func (f *fakeEndpointPorts) RemoveEndpointPort(k l4.Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.keys[k] {
		return errors.New("no such key")
	}
	delete(f.keys, k)
	return nil
}

func (f *fakeEndpointPorts) has(k l4.Key) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keys[k]
}

func (f *fakeEndpointPorts) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.keys)
}

func (f *fakeEndpointPorts) setFail(v bool) {
	f.mu.Lock()
	f.fail = v
	f.mu.Unlock()
}

// The kernel side's copy of the endpoints' rules follows AddMatch (before
// the OK; an ER when it cannot take the rule), RemoveMatch and the end of
// the endpoint's channel.
func TestEndpointPortsFollowRules(t *testing.T) {
	fake := &fakeEndpointPorts{keys: map[l4.Key]bool{}}
	e := newEnv(t, func(c *ServerConfig) { c.Interfaces[0].EndpointPorts = fake })
	c := newRawClient(t, e.path, e.dir)
	ch := c.requestUDS("eth0", os.Getpid())
	udp := l4.ListenKey(l4.MustParseAddr(localIP), l4.ProtoUDP, 5353)
	tcp := l4.ListenKey(l4.MustParseAddr(localIP), l4.ProtoTCP, 8080)

	if got := c.ask(matchJSON("AddMatch", localIP, 5353, "", -1, 17)); got != "OK" {
		t.Fatalf("AddMatch: %q", got)
	}
	if !fake.has(udp) {
		t.Errorf("the OK came before the firewall knew %v", udp)
	}
	fake.setFail(true)
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "ER" {
		t.Errorf("AddMatch the firewall cannot take: %q, want ER", got)
	}
	if _, ok := e.sw.Table.Get(tcp); ok {
		t.Errorf("the refused rule %v stayed in the table", tcp)
	}
	fake.setFail(false)
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatalf("AddMatch again: %q", got)
	}
	c.send(matchJSON("RemoveMatch", localIP, 5353, "", -1, 17))
	testkit.Eventually(t, 2*time.Second, "RemoveMatch reaches the firewall", func() bool { return !fake.has(udp) })
	if !fake.has(tcp) {
		t.Errorf("%v went with another rule", tcp)
	}
	ch.Close() // the channel's end: its endpoint and rules go
	testkit.Eventually(t, 5*time.Second, "the closed channel's rules leave the firewall", func() bool { return fake.len() == 0 })
}

// A process that exits takes its rules out of the firewall, even while
// its channel lives on elsewhere (passed to the test process).
func TestEndpointPortsProcessExit(t *testing.T) {
	fake := &fakeEndpointPorts{keys: map[l4.Key]bool{}}
	e := newEnv(t, func(c *ServerConfig) { c.Interfaces[0].EndpointPorts = fake })
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	carrier := os.NewFile(uintptr(pair[1]), "carrier")
	h := startHelper(t, "handover", e.path, false, carrier)
	carrier.Close()
	if got := h.readUntil(helperHello); got["match"] != "OK" {
		t.Fatalf("helper: %v", got)
	}
	if !fake.has(l4.ListenKey(l4.MustParseAddr(localIP), l4.ProtoTCP, 7000)) {
		t.Fatal("the helper's rule is not in the firewall")
	}
	h.stdin.Close() // the helper exits
	if err := h.cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "the exited process's rules leave the firewall", func() bool { return fake.len() == 0 })
}
