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

	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestE2EUsnetdRestart: a usnet HTTP server (a child process on the
// host's IP behind usnetd) keeps serving across restarts of usnetd, first
// SIGTERM and a new usnetd (an operator's restart), then SIGKILL and a new
// one (a crash, as systemd's watchdog or Restart= sees it): each time it
// attaches again by itself and registers its listener again, and a client
// in the peer namespace gets its answer on the same keep-alive connection
// as before the restart. The server's own outgoing keep-alive connection
// to a kernel server in the peer (/proxy) survives too: the new usnetd
// learns it again from its next frame. A new connection works at the end.
//
// Between a SIGTERM and the next start the kernel is not filtered: a frame
// of a usnet connection that reaches the host then meets the kernel, which
// answers with a reset. So the peer acknowledges at once (a quickack
// route), not up to 40 ms later, when usnetd may be gone: the test's
// requests then leave nothing in flight when it restarts usnetd.
func TestE2EUsnetdRestart(t *testing.T) { e2e.ForEachBackend(t, testE2EUsnetdRestart) }

func testE2EUsnetdRestart(t *testing.T, backend string) {
	l := newPeerLab(t)
	l.Backend = backend
	err := l.Peer.Do(func() error {
		rs, err := netlink.RouteList(nil, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r.Dst != nil && r.Dst.Contains(l.HostIP.AsSlice()) {
				r.QuickACK = 1
				return netlink.RouteReplace(&r)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	serveKernelHTTP(t, l.Peer, l.PeerIP.String()+":9090")
	u := l.Start()
	srv := l.startServer("usnet", httpPortEnv+"=8080", proxyURLEnv+"=http://"+l.PeerIP.String()+":9090/")
	var dials atomic.Int32
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return l.Peer.Dial(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 1,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := "http://" + l.HostIP.String() + ":8080/"
	fetch := func(path, when string) string {
		t.Helper()
		resp, err := client.Get(url + path)
		if err != nil {
			t.Fatalf("GET %s%s %s: %v\nusnetd:\n%s\nserver:\n%s", url, path, when, err, u.LogText(), srv.logText())
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Stack") != "usnet" {
			t.Fatalf("GET %s%s %s: %s %q, %q, %v", url, path, when, resp.Status, resp.Header.Get("X-Stack"), body, err)
		}
		return string(body)
	}
	// The Transport retries a GET on a new connection when a reused one
	// fails, silently: counting the dials tells whether the keep-alive
	// connection itself survived.
	check := func(when string, proxyReused bool) {
		t.Helper()
		if body := fetch("", when); body != "hello, world\n" {
			t.Fatalf("GET %s %s: %q", url, when, body)
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("%s: %d connections dialed, want 1: the keep-alive connection did not survive", when, n)
		}
		want := "reused=" + map[bool]string{false: "false", true: "true"}[proxyReused] + " hello, world\n"
		if body := fetch("proxy", when); body != want {
			t.Errorf("%s: the usnet server's fetch from the peer: %q, want %q", when, body, want)
		}
	}
	check("before the restarts", false)

	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		before := strings.Count(srv.logText(), serverReattached)
		if how == "SIGTERM" {
			u.Stop(t)
		} else {
			if err := u.Cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-u.Done
		}
		u = l.Start()
		for deadline := time.Now().Add(time.Minute); strings.Count(srv.logText(), serverReattached) == before; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the usnet server did not attach again within a minute of usnetd's restart (%s):\n%s\nusnetd:\n%s", how, srv.logText(), u.LogText())
			}
		}
		if n := strings.Count(srv.logText(), serverReattached+" (<nil>)"); n != before+1 {
			t.Errorf("the usnet server attached again after %s, but with an error:\n%s", how, srv.logText())
		}
		check("after a restart by "+how, true)
	}
	tr.CloseIdleConnections()
	if body := fetch("", "on a new connection"); body != "hello, world\n" {
		t.Errorf("GET %s on a new connection: %q", url, body)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d connections dialed, want 2", n)
	}
	tr.CloseIdleConnections()
	srv.stop(t)
	u.Stop(t)
	l.CheckNothingLeft()
}
