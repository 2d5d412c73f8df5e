package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestE2EUsnetdRestart: a usnet HTTP server (a child process on the
// host's IP behind usnetd) keeps serving across a restart of usnetd
// (SIGTERM, then a new usnetd): it attaches again by itself, registers its
// listener again, and a client in the peer namespace gets its answer on
// the same keep-alive connection as before the restart, and on a new one.
func TestE2EUsnetdRestart(t *testing.T) { forEachBackend(t, testE2EUsnetdRestart) }

func testE2EUsnetdRestart(t *testing.T, backend string) {
	l := newPeerLab(t)
	l.backend = backend
	u := l.start()
	srv := l.startServer("usnet", httpPortEnv+"=8080")
	var dials atomic.Int32
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return l.peer.Dial(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 1,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := "http://" + l.hostIP.String() + ":8080/"
	get := func(when string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s %s: %v\nusnetd:\n%s\nserver:\n%s", url, when, err, u.logText(), srv.logText())
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Stack") != "usnet" || string(body) != "hello, world\n" {
			t.Fatalf("GET %s %s: %s %q, %q, %v", url, when, resp.Status, resp.Header.Get("X-Stack"), body, err)
		}
	}
	get("before the restart")
	// The Transport retries a GET on a new connection when a reused one
	// fails, silently: counting the dials tells whether the keep-alive
	// connection itself survived.

	u.stop(t)
	u = l.start()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(srv.logText(), serverReattached); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the usnet server did not attach again within a minute of usnetd's restart:\n%s\nusnetd:\n%s", srv.logText(), u.logText())
		}
	}
	if !strings.Contains(srv.logText(), serverReattached+" (<nil>)") {
		t.Errorf("the usnet server attached again, but with an error:\n%s", srv.logText())
	}
	get("after the restart, on the keep-alive connection")
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections dialed, want 1: the keep-alive connection did not survive the restart", n)
	}
	tr.CloseIdleConnections()
	get("after the restart, on a new connection")
	if n := dials.Load(); n != 2 {
		t.Errorf("%d connections dialed, want 2", n)
	}
	tr.CloseIdleConnections()
	srv.stop(t)
	u.stop(t)
	l.checkNothingLeft()
}
