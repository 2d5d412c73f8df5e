package usnet

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
)

// pairMakerEnv makes the test binary a pair maker (TestMain): a child
// process that makes a channel socketpair, as usnetd does, so that the
// channel's peer credentials name a process that the test can end, as
// usnetd ends on a restart.
const pairMakerEnv = "USNET_TEST_PAIR_MAKER"

func TestMain(m *testing.M) {
	if os.Getenv(pairMakerEnv) == "1" {
		os.Exit(pairMaker())
	}
	os.Exit(m.Run())
}

// pairMaker makes a SOCK_DGRAM socketpair, sends both ends over fd 3 and
// lives until the other end of fd 3 is closed.
func pairMaker() int {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 1
	}
	if err := unix.Sendmsg(3, []byte("p"), unix.UnixRights(fds[:]...), nil, 0); err != nil {
		return 1
	}
	unix.Close(fds[0])
	unix.Close(fds[1])
	var b [1]byte
	unix.Read(3, b[:])
	return 0
}

// pairFromChild returns a channel pair made by a pair maker, and a function
// that ends the maker and waits for it.
func pairFromChild(t *testing.T) (a, b *os.File, end func()) {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	child := os.NewFile(uintptr(sp[1]), "pair-maker")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), pairMakerEnv+"=1", "GORACE=atexit_sleep_ms=0")
	cmd.ExtraFiles = []*os.File{child}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child.Close()
	var once sync.Once
	end = func() {
		once.Do(func() {
			unix.Close(sp[0])
			cmd.Wait()
		})
	}
	t.Cleanup(end)
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(2*4))
	_, oobn, _, _, err := unix.Recvmsg(sp[0], buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	cms, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cms) != 1 {
		t.Fatalf("pair maker: %v, %d control messages", err, len(cms))
	}
	fds, err := unix.ParseUnixRights(&cms[0])
	if err != nil || len(fds) != 2 {
		t.Fatalf("pair maker: %v, %d descriptors", err, len(fds))
	}
	return os.NewFile(uintptr(fds[0]), "chan"), os.NewFile(uintptr(fds[1]), "chan-switch"), end
}

// fakeUsnetd stands in for a usnetd that restarts: it hands the served
// stack a channel made by a child process (pairFromChild) and relays its
// frames to and from the peer stack's channel (wire). restart closes the
// switch's end and ends the child, as usnetd's exit does; while it is down,
// attaching fails.
type fakeUsnetd struct {
	t *testing.T

	mu        sync.Mutex
	up        bool
	wire      *net.UnixConn // the switch's end of the peer stack's channel
	cur       *net.UnixConn // the switch's end of the served stack's channel
	end       func()        // ends cur's maker
	attaches  int           // successful attaches
	refusals  int           // attaches while down
	rules     [][]wire.Match
	closedAtt int
}

func newFakeUsnetd(t *testing.T, wire *os.File) *fakeUsnetd {
	c, err := net.FileConn(wire)
	if err != nil {
		t.Fatal(err)
	}
	wire.Close()
	u := &fakeUsnetd{t: t, up: true, wire: c.(*net.UnixConn)}
	done := make(chan struct{})
	go func() { // peer -> served stack
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, err := u.wire.Read(buf)
			if err != nil {
				return
			}
			u.mu.Lock()
			if u.cur != nil {
				u.cur.Write(buf[:n])
			}
			u.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		u.wire.Close()
		<-done
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.cur != nil {
			u.cur.Close()
		}
	})
	return u
}

func (u *fakeUsnetd) attach(string) (Attacher, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.up {
		u.refusals++
		return nil, errors.New("fake usnetd: not running")
	}
	u.attaches++
	u.rules = append(u.rules, nil)
	return &fakeSession{u: u, gen: len(u.rules) - 1}, nil
}

func (u *fakeUsnetd) restart() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.up = false
	if u.cur != nil {
		u.cur.Close()
		u.cur = nil
	}
	if u.end != nil {
		u.end()
	}
}

func (u *fakeUsnetd) setUp() {
	u.mu.Lock()
	u.up = true
	u.mu.Unlock()
}

func (u *fakeUsnetd) counts() (attaches, refusals, closed int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.attaches, u.refusals, u.closedAtt
}

func (u *fakeUsnetd) rulesOf(gen int) []wire.Match {
	u.mu.Lock()
	defer u.mu.Unlock()
	if gen >= len(u.rules) {
		return nil
	}
	return append([]wire.Match(nil), u.rules[gen]...)
}

// fakeSession is one attach to the fake usnetd.
type fakeSession struct {
	u   *fakeUsnetd
	gen int
}

func (s *fakeSession) RequestUDS(string) (*os.File, error) {
	a, b, end := pairFromChild(s.u.t)
	c, err := net.FileConn(b)
	b.Close()
	if err != nil {
		a.Close()
		end()
		return nil, err
	}
	cur := c.(*net.UnixConn)
	u := s.u
	u.mu.Lock()
	if u.cur != nil {
		u.cur.Close()
	}
	u.cur, u.end = cur, end
	u.mu.Unlock()
	go func() { // served stack -> peer
		buf := make([]byte, 1<<16)
		for {
			n, err := cur.Read(buf)
			if err != nil {
				return
			}
			u.wire.Write(buf[:n])
		}
	}()
	return a, nil
}

func (s *fakeSession) AddMatch(m wire.Match) error {
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	s.u.rules[s.gen] = append(s.u.rules[s.gen], m)
	return nil
}
func (s *fakeSession) RemoveMatch(wire.Match) error                 { return nil }
func (s *fakeSession) QueryPortsInUse(uint8) (*wire.PortSet, error) { return new(wire.PortSet), nil }
func (s *fakeSession) Close() error {
	s.u.mu.Lock()
	s.u.closedAtt++
	s.u.mu.Unlock()
	return nil
}

// waitFor polls cond until it holds or a minute passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after a minute", what)
		}
	}
}

// TestReattach: a server stack behind a usnetd that restarts keeps its
// listener and its established connection. The stack notices the restart
// while idle (the channel's maker exits), retries while usnetd is down
// (Listen fails with ErrDetached meanwhile), attaches again when it is
// back, registers its listener's rule again, and the client's keep-alive
// connection and a new connection both get answers. Torn down while usnetd
// is down, it stops trying.
func TestReattach(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	u := newFakeUsnetd(t, os.NewFile(uintptr(fds[1]), "wire"))
	a, _, b, fb := stackPair(t)
	fb.ch.Close()
	fb.ch = os.NewFile(uintptr(fds[0]), "chan-b")
	a.Attach = u.attach
	reattached := make(chan error, 4)
	a.Reattached = func(err error) { reattached <- err }

	ln, err := a.Listen("tcp4", ":80")
	if err != nil {
		t.Fatal(err)
	}
	var (
		srvMu    sync.Mutex
		srvConns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srvMu.Lock()
			srvConns = append(srvConns, c)
			srvMu.Unlock()
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	echo := func(c net.Conn, msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(time.Minute))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, got, err)
		}
	}
	keep, err := b.Dial("tcp", "198.18.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	echo(keep, "before")

	u.restart()
	// Noticed without any traffic: the stack tries to attach, in vain.
	waitFor(t, "attempt to attach while usnetd is down", func() bool { _, r, _ := u.counts(); return r >= 2 })
	if _, err := a.Listen("tcp4", ":81"); !errors.Is(err, ErrDetached) {
		t.Errorf("Listen while usnetd is down: %v, want ErrDetached", err)
	}
	if _, _, closed := u.counts(); closed != 1 {
		t.Errorf("the lost session was closed %d times, want 1", closed)
	}
	u.setUp()
	select {
	case err := <-reattached:
		if err != nil {
			t.Errorf("Reattached: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("not reattached a minute after usnetd came back")
	}
	if att, _, _ := u.counts(); att != 2 {
		t.Errorf("%d attaches, want 2", att)
	}
	if rs := u.rulesOf(1); len(rs) != 1 || !rs[0].Equal(listenMatch("198.18.0.1", 80, protoTCP)) {
		t.Errorf("rules registered again: %v, want the listener's", rs)
	}
	echo(keep, "after the restart, same connection")
	c2, err := b.Dial("tcp", "198.18.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	echo(c2, "after the restart, new connection")
	c2.Close()
	if n := a.st.reattaches.Load(); n != 1 {
		t.Errorf("%d reattaches, want 1", n)
	}

	// Down again, and the stack is torn down meanwhile: it stops trying.
	u.restart()
	waitFor(t, "attempt to attach while usnetd is down", func() bool { _, r, _ := u.counts(); return r >= 4 })
	keep.Close() // its FIN cannot reach the server now: close the server's side too
	ln.Close()
	srvMu.Lock()
	for _, c := range srvConns {
		c.Close()
	}
	srvMu.Unlock()
	waitFor(t, "teardown", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.st == nil })
	_, r0, _ := u.counts()
	time.Sleep(3 * reattachMax)
	if _, r, _ := u.counts(); r != r0 {
		t.Errorf("%d attempts to attach after the teardown", r-r0)
	}
}

// TestReattachBySend: where the channel's maker cannot be watched (no
// pidfd), the stack notices a restart of usnetd at its first send to the
// closed channel, attaches again, and TCP retransmits that segment over
// the new channel: its outgoing connection goes on. A stack whose channel
// this process made itself (the other tests' stackPair) does not react to
// a closed channel at all: there is no usnetd to come back (TestHTTP and
// the others would see the reattach's DeleteClient).
func TestReattachBySend(t *testing.T) {
	peerOf = func(*os.File) int { return noPeer }
	t.Cleanup(func() { peerOf = peerPidfd })
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	u := newFakeUsnetd(t, os.NewFile(uintptr(fds[1]), "wire"))
	a, _, b, fb := stackPair(t)
	fb.ch.Close()
	fb.ch = os.NewFile(uintptr(fds[0]), "chan-b")
	a.Attach = u.attach
	reattached := make(chan error, 4)
	a.Reattached = func(err error) { reattached <- err }

	ln, err := b.Listen("tcp4", ":81")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	c, err := a.Dial("tcp", "198.18.0.2:81")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	echo := func(msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, got, err)
		}
	}
	echo("before")
	u.restart()
	u.setUp()
	echo("after the restart") // this write (or an ACK before it) finds the channel closed
	select {
	case err := <-reattached:
		if err != nil {
			t.Errorf("Reattached: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("no Reattached")
	}
	if att, _, _ := u.counts(); att != 2 {
		t.Errorf("%d attaches, want 2", att)
	}
}
