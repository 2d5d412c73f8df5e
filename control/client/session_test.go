package client_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/backends/shm/ring"
	"github.com/usnetd/usnetd/control"
	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/sockdiag"
	l4 "github.com/usnetd/usnetd/switch"
)

// runServer runs a control server over an in-memory NIC "eth0" until stop
// (which is idempotent and also runs at the end of the test).
func runServer(t *testing.T, path string) (srv *control.Server, stop func()) {
	t.Helper()
	netlab.Require(t)
	sw := l4.NewSwitch(l4.NewTable())
	pl, err := l4.NewPipeline(sw, l4.PipelineConfig{Buffers: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pl.AddPort(memory.New("eth0", l4.PortNIC, memory.Options{})); err != nil {
		pl.Close()
		t.Fatal(err)
	}
	srv, err = control.NewServer(control.ServerConfig{
		SocketPath:  path,
		Interfaces:  []control.Interface{{Name: "eth0", Pipeline: pl, Backend: "memory", Addrs: []netip.Addr{m8080.DstAddr}}},
		KernelPorts: func() ([]sockdiag.Socket, error) { return nil, nil },
		Log:         zerolog.Nop(),
		Version:     "test",
	})
	if err != nil {
		pl.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			pl.Close()
		}
	}
	t.Cleanup(stop)
	return srv, stop
}

func rulesOf(st wire.Status) []wire.Match {
	var ms []wire.Match
	for _, ep := range st.Endpoints {
		ms = append(ms, ep.Rules...)
	}
	return ms
}

// TestSessionReattach: a Session whose usnetd stops sees a send on its
// channel fail, reports it (Lost), keeps trying while nothing serves the
// socket (its requests fail with ErrDetached), and once a new usnetd
// serves the path it gets a working channel through Reattached and its
// rule is registered again; a removed rule is not. Close stops it. By
// default the session's channels are shared-memory ones, with UDS
// datagram ones.
func TestSessionReattach(t *testing.T) {
	for _, kind := range []string{"shm", "uds"} {
		t.Run(kind, func(t *testing.T) { testSessionReattach(t, kind) })
	}
}

// send sends one frame on ch.
func send(ch client.Channel, frame []byte) error {
	if ch.SHM != nil {
		n, err := ch.SHM.Send([][]byte{frame})
		if err == nil && n != 1 {
			err = errors.New("the ring took no frame")
		}
		return err
	}
	_, err := ch.UDS.Write(frame)
	return err
}

func testSessionReattach(t *testing.T, kind string) {
	dir := t.TempDir()
	path := filepath.Join(dir, "usnetd.socket")
	_, stop := runServer(t, path)
	type re struct {
		ch      client.Channel
		refused error
	}
	got := make(chan re, 1)
	s, ch, err := client.OpenSession(client.SessionOptions{
		Options:    client.Options{SocketPath: path, Dir: dir},
		Interface:  "eth0",
		UDS:        kind == "uds",
		Reattached: func(ch client.Channel, refused error) { got <- re{ch, refused} },
	})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Kind() != kind {
		t.Fatalf("the session's channel is a %s channel, want %s", ch.Kind(), kind)
	}
	defer s.Close()
	defer ch.Close()
	m9090 := m8080
	m9090.DstPort = u16(9090)
	for _, m := range []wire.Match{m8080, m9090} {
		if err := s.AddMatch(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RemoveMatch(m9090); err != nil {
		t.Fatal(err)
	}

	stop()
	frame := make([]byte, 60)
	if kind == "uds" {
		if _, err := ch.UDS.Write(frame); !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("send on the channel of a stopped usnetd: %v, want ECONNREFUSED", err)
		}
	} else if err := ch.SHM.Wait(0, time.Minute); !errors.Is(err, ring.ErrClosed) {
		t.Fatalf("wait on the shared-memory channel of a stopped usnetd: %v, want ring.ErrClosed", err)
	}
	s.Lost()
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := s.QueryUsedPorts()
		if errors.Is(err, client.ErrDetached) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QueryUsedPorts a minute after Lost: %v, want ErrDetached", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	srv2, _ := runServer(t, path)
	var r re
	select {
	case r = <-got:
	case <-time.After(time.Minute):
		t.Fatal("not reattached a minute after usnetd came back")
	}
	defer r.ch.Close()
	if r.refused != nil {
		t.Errorf("rules refused after the restart: %v", r.refused)
	}
	if r.ch.Kind() != kind {
		t.Errorf("the new channel is a %s channel, want %s", r.ch.Kind(), kind)
	}
	if err := send(r.ch, frame); err != nil {
		t.Errorf("send on the new channel: %v", err)
	}
	rules := rulesOf(srv2.Status())
	if len(rules) != 1 || !rules[0].Equal(m8080) {
		t.Errorf("rules after the restart: %v, want only %v", rules, m8080)
	}
	if _, err := s.QueryUsedPorts(); err != nil {
		t.Errorf("QueryUsedPorts after the restart: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// DeleteClient has no answer: wait for the server to take it.
	for deadline := time.Now().Add(time.Minute); len(rulesOf(srv2.Status())) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("rules a minute after Close: %v", rulesOf(srv2.Status()))
		}
	}
}
