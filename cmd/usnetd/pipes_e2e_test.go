package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
)

// TestE2EStaticPipe: a STATIC_PIPES entry is a Unix datagram socket in
// PIPE_DIR (a stale one replaced at start, group ALLOW_GID, mode 0660); a
// raw stack that binds its own socket and sends to the pipe answers UDP
// from the peer namespace on the pipe's port, and what it sends passes the
// isolation checks: a frame from the host's address reaches the peer, one
// with a forged source address is dropped (counted as src_ip). The socket
// file goes at stop.
func TestE2EStaticPipe(t *testing.T) { e2e.ForEachBackend(t, testE2EStaticPipe) }

func testE2EStaticPipe(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.Backend = backend
	h := l.HostIP.String()
	dir := filepath.Join(t.TempDir(), "pipes")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, l.Ifname+"-udp-7000")
	// A stale socket file, as a killed usnetd leaves it.
	stale, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	stale.Close()
	testkit.ServeUDPEcho(t, l.Host, h+":7001") // a kernel UDP port that is not the pipe's
	const gid = 4242
	u := l.Start(fmt.Sprintf("STATIC_PIPES=%s:UDP:7000", l.Ifname), "PIPE_DIR="+dir, fmt.Sprintf("ALLOW_GID=%d", gid))

	st, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("no pipe socket: %v\n%s", err, u.LogText())
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o660 || st.Sys().(*syscall.Stat_t).Gid != gid {
		t.Errorf("pipe socket: mode %v gid %d, want a socket 0660 of group %d", st.Mode(), st.Sys().(*syscall.Stat_t).Gid, gid)
	}

	// The stack: its own socket, connected to the pipe.
	stack, err := net.DialUnix("unixgram", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "stack"), Net: "unixgram"},
		&net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	ch, err := stack.File()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()

	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	hostMAC := lk.Attrs().HardwareAddr
	plk, err := l.Peer.Link("eth0")
	if err != nil {
		t.Fatal(err)
	}
	peerMAC := plk.Attrs().HardwareAddr

	// A receiver in the peer namespace for what the stack sends.
	pc, err := l.Peer.ListenPacket("udp", l.PeerIP.String()+":9999")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				close(got)
				return
			}
			got <- string(buf[:n]) + " from " + from.String()
		}
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case g, ok := <-got:
			if !ok || g != want {
				t.Fatalf("the peer received %q (open %v), want %q", g, ok, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the peer did not receive %q\n%s", want, u.LogText())
		}
	}
	forged := netlab.Host(netip.PrefixFrom(l.HostIP, 24), 77).Addr()
	if forged == l.HostIP || forged == l.PeerIP || forged == l.PeerIP2 {
		t.Fatalf("forged address %v is one of the lab's", forged)
	}
	send := func(src netip.Addr, payload string) {
		t.Helper()
		if _, err := ch.Write(udpFrame(peerMAC, hostMAC, src, 7000, l.PeerIP, 9999, payload)); err != nil {
			t.Fatal(err)
		}
	}
	// The first frame also makes the stack the pipe's peer.
	send(l.HostIP, "legit 1")
	expect("legit 1 from " + h + ":7000")
	// Attack: a forged source address. It is dropped; the frame sent after
	// it arrives (one socket, in order: the forged one is not merely late).
	send(forged, "forged")
	send(l.HostIP, "legit 2")
	expect("legit 2 from " + h + ":7000")
	select {
	case g := <-got:
		t.Fatalf("the peer received %q after legit 2", g)
	default:
	}
	var v float64
	series := fmt.Sprintf(`usnetd_drops_total{interface="%s",reason="src_ip"}`, l.Ifname)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && v < 1; time.Sleep(50 * time.Millisecond) {
		v, _ = e2e.MetricValue(l.Scrape(), series)
	}
	if v < 1 {
		t.Errorf("%s = %v, want at least 1", series, v)
	}

	// The stack answers UDP from the peer namespace on the pipe's port.
	answered := e2e.UDPResponder(t, ch, hostMAC, 7000)
	for i := range 8 {
		if err := testkit.UDPEcho(l.Peer, h+":7000", 5*time.Second); err != nil {
			t.Fatalf("request %d through the pipe: %v (answered %d)\n%s", i, err, answered.Load(), u.LogText())
		}
	}
	// The pipe's rule is its own: the kernel's UDP port next to it stays
	// closed (no DEBUG_PORTS).
	if err := testkit.UDPEcho(l.Peer, h+":7001", 700*time.Millisecond); !testkit.IsTimeout(err) {
		t.Fatalf("a kernel UDP port that was not opened answered: %v", err)
	}

	u.Stop(t)
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pipe socket left after stop (%v)", err)
	}
	l.CheckNothingLeft()
}

// TestE2EStaticPipeRefusesNonSocket: a file at a pipe's path that is not a
// socket stops the start with one line naming the entry, and stays as it
// was; no pipe socket is made.
func TestE2EStaticPipeRefusesNonSocket(t *testing.T) {
	l := newE2ELab(t, 1)
	dir := t.TempDir()
	path := filepath.Join(dir, l.Ifname+"-tcp-7000")
	if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := l.Ifname + ":TCP:7000"
	msg := l.StartFails("STATIC_PIPES="+spec, "PIPE_DIR="+dir)
	if msg == "" || !strings.Contains(msg, spec) || !strings.Contains(msg, "is not a socket") {
		t.Fatalf("start with a regular file at the pipe's path: %q", msg)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "not a socket" {
		t.Fatalf("the file at the pipe's path changed: %q, %v", b, err)
	}
}
