package usnet

// The control client against a fake usnetd that speaks the wire protocol
// with package control's codec.

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
)

// fakeServer is a usnetd control socket: it answers as the original does
// and hands out the given channel ends, one per RequestUDS.
type fakeServer struct {
	t     *testing.T
	conn  *net.UnixConn
	path  string
	mu    sync.Mutex
	reqs  []wire.Request
	peers []string // client addresses seen
	chans []*os.File
	rules []wire.Match
	used  wire.UsedPorts
	// status, if set, answers QueryStatus (as this usnetd does); nil
	// leaves it unanswered, as the original does.
	status *wire.Status
	done   chan struct{}
}

func newFakeServer(t *testing.T, chans ...*os.File) *fakeServer {
	path := filepath.Join(t.TempDir(), "usnetd.socket")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, conn: conn, path: path, chans: chans, done: make(chan struct{})}
	go s.serve()
	t.Cleanup(func() {
		conn.Close()
		<-s.done
		for _, f := range s.chans {
			f.Close()
		}
	})
	return s
}

func (s *fakeServer) serve() {
	defer close(s.done)
	buf := make([]byte, wire.MaxMessageSize+1)
	for {
		n, from, err := s.conn.ReadFromUnix(buf)
		if err != nil {
			return
		}
		req, err := wire.DecodeRequest(buf[:n])
		if err != nil {
			s.t.Errorf("fake usnetd: %v", err)
			continue
		}
		s.mu.Lock()
		s.reqs = append(s.reqs, req)
		s.peers = append(s.peers, from.Name)
		var answer wire.Answer
		var oob []byte
		switch r := req.(type) {
		case wire.RequestUDS:
			answer = wire.AnswerER{}
			if r.Interface == "usnet0" && len(s.chans) > 0 {
				answer = wire.AnswerFD{}
				oob = unix.UnixRights(int(s.chans[0].Fd()))
			}
		case wire.AddMatch:
			answer = wire.AnswerOK{}
			for _, m := range s.rules {
				if m.Equal(r.Match) {
					answer = wire.AnswerER{}
				}
			}
			if answer == (wire.AnswerOK{}) {
				s.rules = append(s.rules, r.Match)
			}
		case wire.RemoveMatch:
			for i, m := range s.rules {
				if m.Equal(r.Match) {
					s.rules = append(s.rules[:i], s.rules[i+1:]...)
					break
				}
			}
		case wire.QueryUsedPorts:
			answer = s.used
		case wire.QueryPortsInUse:
			answer = wire.PortsInUse{Protocol: r.Protocol, Ports: portSetOf(s.used, r.Protocol)}
		case wire.QueryStatus:
			if s.status != nil {
				answer = *s.status
			}
		case wire.RequestSHM:
			// The original does not answer; a usnetd that answers
			// QueryStatus but has no shared-memory channels says ER.
			if s.status != nil {
				answer = wire.AnswerER{}
			}
		}
		s.mu.Unlock()
		if answer == nil {
			continue
		}
		b, _ := wire.EncodeAnswer(answer)
		if _, _, err := s.conn.WriteMsgUnix(b, oob, from); err != nil {
			s.t.Errorf("fake usnetd: answer: %v", err)
		}
		if oob != nil {
			s.mu.Lock()
			s.chans[0].Close() // handed over
			s.chans = s.chans[1:]
			s.mu.Unlock()
		}
	}
}

func (s *fakeServer) requests() []wire.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wire.Request(nil), s.reqs...)
}

func TestControlClient(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours := os.NewFile(uintptr(fds[1]), "peer")
	defer ours.Close()
	srv := newFakeServer(t, os.NewFile(uintptr(fds[0]), "handed"))
	srv.mu.Lock()
	srv.used = wire.UsedPorts{Listening: []wire.PortEntry{{Protocol: 6, Addr: netip.MustParseAddr("198.18.0.1"), Port: 22}}}
	srv.mu.Unlock()

	att, err := DialControl(srv.path)
	if err != nil {
		t.Fatal(err)
	}
	cc := att.(*controlClient)
	if filepath.Dir(cc.LocalAddr()) != os.Getenv("XDG_RUNTIME_DIR") {
		t.Errorf("client socket %s not in XDG_RUNTIME_DIR", cc.LocalAddr())
	}
	if _, err := att.RequestUDS("nosuch0"); !errors.Is(err, ErrRefused) {
		t.Errorf("RequestUDS of an unknown interface: %v", err)
	}
	f, err := att.RequestUDS("usnet0")
	if err != nil {
		t.Fatal(err)
	}
	// The descriptor is the other end of our socketpair.
	if _, err := f.Write([]byte("frame")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	ours.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := ours.Read(buf); err != nil || string(buf[:n]) != "frame" {
		t.Errorf("through the handed channel: %q %v", buf[:n], err)
	}
	f.Close()

	m := listenMatch("198.18.0.1", 8080, 6)
	if err := att.AddMatch(m); err != nil {
		t.Fatal(err)
	}
	if err := att.AddMatch(m); !errors.Is(err, ErrRefused) {
		t.Errorf("second AddMatch: %v", err)
	}
	if err := att.RemoveMatch(m); err != nil {
		t.Fatal(err)
	}
	used, err := att.QueryPortsInUse(6)
	if err != nil || !used.Has(22) || used.Has(23) {
		t.Errorf("QueryPortsInUse: %v", err)
	}
	if _, err := os.Stat(cc.LocalAddr()); err != nil {
		t.Errorf("client socket file missing while open: %v", err)
	}
	if err := att.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cc.LocalAddr()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("client socket file left behind: %v", err)
	}
	// DeleteClient arrives last; RemoveMatch had no answer and did not
	// desynchronise the answers (QueryPortsInUse got its own).
	deadline := time.Now().Add(5 * time.Second)
	for {
		reqs := srv.requests()
		if len(reqs) == 7 {
			want := []string{"RequestUDS", "RequestUDS", "AddMatch", "AddMatch", "RemoveMatch", "QueryPortsInUse", "DeleteClient"}
			for i, r := range reqs {
				if r.Type() != want[i] {
					t.Errorf("request %d: %s, want %s", i, r.Type(), want[i])
				}
			}
			if pid := reqs[0].(wire.RequestUDS).PID; pid != int32(os.Getpid()) {
				t.Errorf("RequestUDS PID %d", pid)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("requests: %v", reqs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestControlClientNoServer(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", dir)
	if _, err := DialControl(filepath.Join(dir, "nosuch.socket")); err == nil {
		t.Fatal("DialControl without a server succeeded")
	}
	if es, _ := os.ReadDir(dir); len(es) != 0 {
		t.Errorf("left behind: %v", es)
	}
}

// TestThroughControlSocket: a stack attached through the real control
// client (Config.Attach nil) to a fake usnetd serves TCP to a second
// stack on the other end of the handed-over channel. Its rules arrive at
// usnetd and leave again, and DeleteClient comes with the last Close.
func TestThroughControlSocket(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	a, fa, b, _ := stackPair(t)
	srv := newFakeServer(t, fa.ch) // a's channel end goes through usnetd
	fa.ch = nil
	a.Attach = nil
	a.SocketPath = srv.path
	a.localPortRange = nil // the real /proc file

	ln, err := a.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.WriteString(c, "hello")
			c.Close()
		}
	}()
	c, err := b.Dial("tcp", "198.18.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "hello" {
		t.Errorf("got %q", got)
	}
	srv.mu.Lock()
	nrules := len(srv.rules)
	srv.mu.Unlock()
	if nrules != 2 {
		t.Errorf("usnetd has %d rules, want 2 (IPv4 and IPv6)", nrules)
	}
	ln.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		reqs := srv.requests()
		if last := reqs[len(reqs)-1].Type(); last == "DeleteClient" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("last request %s, want DeleteClient", last)
		}
	}
	// A usnetd that leaves QueryStatus unanswered (the original) is not
	// asked for a shared-memory channel either.
	for _, r := range srv.requests() {
		if r.Type() == "RequestSHM" {
			t.Error("RequestSHM sent to a usnetd that does not answer QueryStatus")
		}
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.rules) != 0 {
		t.Errorf("rules left: %v", srv.rules)
	}
	if es, _ := os.ReadDir(os.Getenv("XDG_RUNTIME_DIR")); len(es) != 0 {
		t.Errorf("left behind: %v", es)
	}
}
