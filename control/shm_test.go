package control

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/shm"
	"github.com/usnetd/usnetd/backends/shm/ring"
	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/testkit"
)

// requestSHM asks for a shared-memory channel and opens the endpoint's
// side of it.
func (c *rawClient) requestSHM(iface string, pid int) *ring.Endpoint {
	c.t.Helper()
	ep, mem := c.requestSHMMem(iface, pid)
	mem.Unmap()
	return ep
}

// requestSHMMem is requestSHM that also maps the memory a second time, for
// a test that plays a hostile endpoint.
func (c *rawClient) requestSHMMem(iface string, pid int) (*ring.Endpoint, *ring.Mem) {
	c.t.Helper()
	c.send(fmt.Sprintf(`{"RequestSHM":[%q,%d]}`, iface, pid))
	data, fds, ok := c.recv(3 * time.Second)
	if !ok || string(data) != "$" || len(fds) != 2 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		c.t.Fatalf("RequestSHM: answer %q with %d fds (ok %v), want \"$\" with two", data, len(fds), ok)
	}
	mem, err := ring.Map(fds[0])
	if err != nil {
		c.t.Fatal(err)
	}
	ep, err := ring.OpenEndpoint(fds[0], fds[1])
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { ep.Close(); mem.Unmap() })
	return ep, mem
}

// recvSHM waits up to d for one frame on ep.
func recvSHM(t testing.TB, ep *ring.Endpoint, d time.Duration) ([]byte, bool) {
	t.Helper()
	buf := [][]byte{make([]byte, 2048)}
	lens := []int{0}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if n, err := ep.Recv(buf, lens); err != nil {
			t.Fatal(err)
		} else if n == 1 {
			return buf[0][:lens[0]], true
		}
		if err := ep.Wait(0, time.Until(deadline)); err != nil {
			t.Fatal(err)
		}
	}
	return nil, false
}

// shmMappings counts this process's mappings of channel memfds.
func shmMappings(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "memfd:usnetd-shm")
}

// TestSHMChannelCarriesFrames: RequestSHM hands over a working channel,
// both ways, under the endpoint's rules; status names the channels' kinds.
func TestSHMChannelCarriesFrames(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) { c.Interfaces[0].MTU = func() int { return 1500 } })
	c := newRawClient(t, e.path, e.dir)
	ep := c.requestSHM("eth0", os.Getpid())
	if ep.MTU() != 1500 {
		t.Errorf("the channel says MTU %d", ep.MTU())
	}
	if got := c.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	in := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 8080)
	e.nic.Inject(0, in)
	if got, ok := recvSHM(t, ep, 2*time.Second); !ok || string(got) != string(in) {
		t.Fatalf("the channel did not get the frame for its rule")
	}
	e.nic.Inject(0, tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 8081))
	if _, ok := recvSHM(t, ep, 200*time.Millisecond); ok {
		t.Error("the channel got a frame no rule of its sends it")
	}
	out := tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 8080, 40000)
	if n, err := ep.Send([][]byte{out}); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	if !e.nic.WaitSent(1, 2*time.Second) || string(e.nic.Sent()[0]) != string(out) {
		t.Fatal("the endpoint's frame did not leave through the NIC")
	}
	// A second channel of the same endpoint, of the other kind.
	c.requestUDS("eth0", os.Getpid())
	st := e.srv.Status()
	if len(st.Endpoints) != 1 || !slices.Equal(st.Endpoints[0].ChannelKinds, []string{"shm", "uds"}) {
		t.Fatalf("status %+v, want one endpoint with an shm and a uds channel", st.Endpoints)
	}
	if es := st.Endpoints[0]; es.RxPackets != 1 || es.TxPackets != 1 {
		t.Errorf("counters rx %d tx %d, want 1 and 1", es.RxPackets, es.TxPackets)
	}
	if m := e.srv.SHMChannels("eth0"); m == nil || m["bad_index"] != 0 || m["bad_length"] != 0 {
		t.Errorf("SHMChannels = %v", m)
	}
}

// TestSHMOff: with NoSHM, RequestSHM is answered ER like an unknown
// request, and RequestUDS still works (what a client falls back to).
func TestSHMOff(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) { c.NoSHM = true })
	c := newRawClient(t, e.path, e.dir)
	if got := c.ask(fmt.Sprintf(`{"RequestSHM":["eth0",%d]}`, os.Getpid())); got != "ER" {
		t.Fatalf("RequestSHM with NoSHM: %q", got)
	}
	c.requestUDS("eth0", os.Getpid())
}

// TestSHMLimits: shared-memory channels count against the same channel
// limits as uds channels, and the same PID check applies.
func TestSHMLimits(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) { c.MaxChannelsPerClient = 2 })
	c := newRawClient(t, e.path, e.dir)
	if got := c.ask(`{"RequestSHM":["eth0",1]}`); got != "ER" {
		t.Fatalf("RequestSHM naming another process: %q", got)
	}
	c.requestSHM("eth0", os.Getpid())
	c.requestUDS("eth0", os.Getpid())
	if got := c.ask(fmt.Sprintf(`{"RequestSHM":["eth0",%d]}`, os.Getpid())); got != "ER" {
		t.Fatalf("a third channel: %q", got)
	}
	if e.srv.Refused()["channels_per_client"] != 1 {
		t.Errorf("refusals %v", e.srv.Refused())
	}
}

// TestSHMHostileEndpoint: an endpoint that scribbles over its channel's
// memory (indices, flags, lengths, frames) while traffic flows spoils only
// its own traffic: another endpoint's frames go both ways, all of them,
// and usnetd counts the bad indices and lengths.
func TestSHMHostileEndpoint(t *testing.T) {
	e := newEnv(t)
	bad := newRawClient(t, e.path, e.dir)
	good := newRawClient(t, e.path, e.dir)
	_, badMem := bad.requestSHMMem("eth0", os.Getpid())
	if got := bad.ask(matchJSON("AddMatch", localIP, 9000, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	gep := good.requestSHM("eth0", os.Getpid())
	if got := good.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	b := badMem.Bytes()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		x := uint32(7)
		for !stop.Load() {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			off := int(x%uint32(len(b)-4)) &^ 3
			if x&1 == 0 {
				off = 64 + int(x>>8)%448&^3
			}
			binary.LittleEndian.PutUint32(b[off:], x>>3)
			if x&0xff == 0 {
				runtime.Gosched()
			}
		}
	}()
	const n = 200
	toBad := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 9000)
	for i := range n {
		in := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, uint16(30000+i), 8080)
		e.nic.Inject(0, toBad, in, toBad)
		got, ok := recvSHM(t, gep, 2*time.Second)
		if !ok || string(got) != string(in) {
			t.Fatalf("frame %d for the good endpoint lost or changed", i)
		}
		out := tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 8080, uint16(30000+i))
		if k, err := gep.Send([][]byte{out}); k != 1 || err != nil {
			t.Fatal(k, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	testkit.Eventually(t, 2*time.Second, "every frame of the good endpoint out through the NIC", func() bool {
		return e.nic.SentCount() >= n
	})
	m := e.srv.SHMChannels("eth0")
	if m["bad_index"]+m["bad_length"]+m["ring_full"] == 0 {
		t.Errorf("no bad index, length or full ring counted: %v", m)
	}
	t.Logf("the hostile endpoint's channel: %v", m)
}

// TestSHMCycles: 1,000 attach/detach cycles of shared-memory channels
// leave no descriptor, goroutine, mapping or rule behind.
func TestSHMCycles(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	c.ask(`"QueryStatus"`)
	runtime.GC()
	fds, gs, maps := testkit.OpenFDs(t), runtime.NumGoroutine(), shmMappings(t)
	rules := len(e.rules())
	pid := os.Getpid()
	for i := range n {
		c.send(fmt.Sprintf(`{"RequestSHM":["eth0",%d]}`, pid))
		data, got, ok := c.recv(3 * time.Second)
		if !ok || string(data) != "$" || len(got) != 2 {
			t.Fatalf("cycle %d: RequestSHM answered %q with %d fds", i, data, len(got))
		}
		ep, err := ring.OpenEndpoint(got[0], got[1])
		if err != nil {
			t.Fatal(err)
		}
		if a := c.ask(matchJSON("AddMatch", localIP, 10000+i%1000, "", -1, 6)); a != "OK" {
			t.Fatalf("cycle %d: AddMatch: %q", i, a)
		}
		switch i % 3 {
		case 0:
			c.send(`"DeleteClient"`)
			ep.Close()
		case 1:
			ep.Close()
			c.send(`"DeleteClient"`)
		case 2: // only close: the server notices (POLLHUP on the wake-up socket)
			ep.Close()
			testkit.Eventually(t, 2*time.Second, "the closed channel noticed", func() bool { return e.endpointPorts() == 0 })
		}
	}
	c.ask(`"QueryStatus"`)
	testkit.Eventually(t, 2*time.Second, "every endpoint gone", e.gone)
	if got := len(e.rules()); got != rules {
		t.Errorf("%d rules, %d before", got, rules)
	}
	testkit.Eventually(t, 2*time.Second, "descriptors back to the start", func() bool { return testkit.OpenFDs(t) <= fds })
	testkit.Eventually(t, 2*time.Second, "mappings back to the start", func() bool { return shmMappings(t) <= maps })
	if g := settledGoroutines(gs); g > gs {
		t.Errorf("%d goroutines, %d before", g, gs)
	}
}

// TestSHMProcessKilled: a killed endpoint's channel memory is released
// (usnetd's mapping gone) within a second, through the pidfd.
func TestSHMProcessKilled(t *testing.T) {
	e := newEnv(t)
	before := shmMappings(t)
	h := startHelper(t, "shm", e.path, false)
	got := h.readUntil(helperHello)
	if got["shm"] != "$" {
		t.Fatalf("helper: %v", got)
	}
	if shmMappings(t) != before+1 {
		t.Fatalf("%d channel mappings, want %d", shmMappings(t), before+1)
	}
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = h.cmd.Wait()
	start := time.Now()
	testkit.Eventually(t, time.Second, "the killed endpoint's channel memory released", func() bool {
		return e.gone() && shmMappings(t) == before
	})
	t.Logf("released %v after the kill", time.Since(start))
}

// TestSHMMemoryBudget: with the shared-memory budget spent, RequestSHM is
// refused and counted, and control/client's RequestChannel falls back to
// a Unix datagram channel that carries frames next to the endpoint that
// got shared memory; when that channel goes, its memory is free again.
func TestSHMMemoryBudget(t *testing.T) {
	var charge int64
	e := newEnv(t, func(c *ServerConfig) {
		charge = shm.Charge(shm.Options{FrameCap: c.Interfaces[0].Pipeline.Pool().Stats().BufSize})
		c.SHMMemory = charge + charge/2 // room for one channel
	})
	dial := func() *client.Client {
		c, err := client.Dial(client.Options{SocketPath: e.path, Dir: e.dir, Timeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := dial(), dial()
	cha, err := a.RequestChannel("eth0")
	if err != nil || cha.Kind() != "shm" {
		t.Fatalf("first channel: %v, kind %s; want shm", err, cha.Kind())
	}
	defer cha.Close()
	chb, err := b.RequestChannel("eth0")
	if err != nil || chb.Kind() != "uds" {
		t.Fatalf("second channel: %v, kind %s; want the fallback to uds", err, chb.Kind())
	}
	defer chb.Close()
	if n := e.srv.Refused()["shm_memory"]; n != 1 {
		t.Errorf("shm_memory refusals %d, want 1 (%v)", n, e.srv.Refused())
	}
	for i, c := range []*client.Client{a, b} {
		port := uint16(8080 + i)
		if err := c.AddMatch(wire.Match{Protocol: 6, DstAddr: ip(localIP), DstPort: &port}); err != nil {
			t.Fatal(err)
		}
	}
	ina := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 8080)
	inb := tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 40000, 8081)
	e.nic.Inject(0, ina)
	e.nic.Inject(0, inb)
	if got, ok := recvSHM(t, cha.SHM, 2*time.Second); !ok || string(got) != string(ina) {
		t.Error("the shm channel did not get its frame")
	}
	if got, ok := readFrame(t, chb.UDS, 2*time.Second); !ok || string(got) != string(inb) {
		t.Error("the uds channel (the fallback) did not get its frame")
	}
	// The shm channel goes (DeleteClient): its memory is free again.
	cha.Close()
	a.Close()
	c := dial()
	ch, err := c.RequestChannel("eth0")
	if err != nil || ch.Kind() != "shm" {
		t.Fatalf("after the shm channel went: %v, kind %s; want shm", err, ch.Kind())
	}
	ch.Close()
	if n := e.srv.Refused()["shm_memory"]; n != 1 {
		t.Errorf("shm_memory refusals %d, want still 1", n)
	}
}
