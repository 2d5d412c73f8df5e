package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
)

// Jumbo frames: the host's NIC and its peer at MTU 9000, as on a server
// whose NIC was set up for jumbo frames. usnetd reads the MTU and carries
// frames of that size on every backend; a usnet server takes the MTU from
// usnetd and advertises the matching MSS. Timeouts only tell an answer
// from none; nothing asserts a speed.

const jumboMTU = 9000

// jumboPayload is the largest UDP payload of one IPv4 packet at jumboMTU:
// 9000 - 20 (IPv4) - 8 (UDP).
const jumboPayload = jumboMTU - 28

func jumboData(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*13)
	}
	return b
}

// TestE2EJumbo: at MTU 9000 with GRO on (as on a real server's NIC), five
// 8,972-byte UDP datagrams from the peer reach an endpoint and its five
// answers of the same size reach the peer; a usnet HTTP server takes a
// 4 MB upload and serves a 1 MiB download, complete and intact;
// QueryStatus says MTU 9000.
func TestE2EJumbo(t *testing.T) { e2e.ForEachBackend(t, testE2EJumbo) }

func testE2EJumbo(t *testing.T, backend string) {
	netlab.RequireTool(t, "curl", "curl")
	netlab.RequireTool(t, "ethtool", "ethtool")
	l := newE2ELabMTU(t, 1, jumboMTU)
	l.Backend = backend
	if err := l.Peer.TxChecksumOff("eth0"); err != nil {
		t.Fatal(err)
	}
	setGRO(t, l, true) // as on a real server's NIC: jumbo frames and GRO
	h := l.HostIP.String()
	u := l.Start()
	if !strings.Contains(u.LogText(), `"mtu":9000`) {
		t.Errorf("no MTU 9000 in the claim's log line:\n%s", e2e.GrepLines(u.LogText(), "interface claimed"))
	}

	// UDP: an endpoint that answers each datagram with the same payload.
	c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.QueryStatus()
	if err != nil || len(st.Interfaces) != 1 || st.Interfaces[0].MTU != jumboMTU {
		t.Fatalf("QueryStatus: %+v, %v; want MTU %d", st.Interfaces, err, jumboMTU)
	}
	ch, err := c.RequestUDS(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(7000)
	if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &port, Protocol: 17}); err != nil {
		t.Fatal(err)
	}
	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	answered := e2e.UDPResponder(t, ch, lk.Attrs().HardwareAddr, port)
	var conn net.Conn
	if err := l.Peer.Do(func() (err error) { conn, err = net.Dial("udp", h+":7000"); return err }); err != nil {
		t.Fatal(err)
	}
	const n = 5
	got := 0
	buf := make([]byte, 65536)
	for i := range n {
		want := jumboData(jumboPayload, byte(i))
		if _, err := conn.Write(want); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		k, err := conn.Read(buf)
		if err != nil {
			t.Errorf("datagram %d of %d bytes: no answer: %v", i, len(want), err)
			continue
		}
		if !bytes.Equal(buf[:k], want) {
			t.Errorf("datagram %d: answer of %d bytes differs from the %d sent", i, k, len(want))
			continue
		}
		got++
	}
	conn.Close()
	if got != n {
		t.Fatalf("%d of %d datagrams of %d bytes went there and back (the endpoint answered %d)\n%s\n%s",
			got, n, jumboPayload, answered.Load(), e2e.GrepLines(l.Scrape(), "drop"), u.LogText())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ch.Close()

	// HTTP on the usnet stack: the MSS it advertises follows MTU 9000.
	srv := l.startServer("usnet", httpPortEnv+"=8080")
	upload := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(upload, jumboData(4_000_000, 7), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := l.Peer.Command(ctx, "curl", "-sS", "--max-time", "60", "--data-binary", "@"+upload,
		fmt.Sprintf("http://%s:8080/upload", h)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "received 4000000") {
		t.Fatalf("upload of 4 MB: %v\n%s\n%s\nusnetd:\n%s\nserver:\n%s", err, out, e2e.GrepLines(l.Scrape(), "drop"), u.LogText(), srv.logText())
	}
	body, err := l.Peer.Command(ctx, "curl", "-sS", "--max-time", "60", fmt.Sprintf("http://%s:8080/download", h)).Output()
	if err != nil || len(body) != downloadSize {
		t.Fatalf("download of 1 MiB: %d bytes, %v\n%s\nusnetd:\n%s\nserver:\n%s", len(body), err, e2e.GrepLines(l.Scrape(), "drop"), u.LogText(), srv.logText())
	}
	for i, b := range body {
		if b != downloadByte(i) {
			t.Fatalf("download: byte %d is %#x, want %#x", i, b, downloadByte(i))
		}
	}
	t.Logf("%s: %d datagrams of %d bytes answered; upload %q; download %d bytes", backend, got, jumboPayload, strings.TrimSpace(string(out)), len(body))
	srv.stop(t)
	u.Stop(t)
	l.CheckNothingLeft()
}

// TestE2EJumboRefused: an MTU whose frames AF_XDP cannot carry (more
// chunks than a multi-buffer frame may have) stops BACKEND=afxdp with one
// line naming the MTU and the limit; BACKEND=auto says why and falls back
// to afpacket, which carries it.
func TestE2EJumboRefused(t *testing.T) {
	const mtu = 30000
	l := newE2ELabMTU(t, 1, mtu)
	line := l.StartFails("BACKEND=afxdp")
	t.Logf("BACKEND=afxdp at MTU %d: %s", mtu, line)
	for _, want := range []string{"MTU 30000", "30018 bytes", "at most 28672"} {
		if !strings.Contains(line, want) {
			t.Errorf("BACKEND=afxdp at MTU %d: no %q in the last line:\n%s", mtu, want, line)
		}
	}
	l.Backend = "auto"
	u := l.Start()
	log := u.LogText()
	if !strings.Contains(log, "falling back to BACKEND=afpacket") || !strings.Contains(log, "at most 28672") ||
		!strings.Contains(e2e.GrepLines(log, "interface claimed"), `"mtu":30000`) {
		t.Errorf("BACKEND=auto at MTU %d: no fallback naming the limit, or no claim at that MTU:\n%s", mtu, log)
	}
	u.Stop(t)
	l.CheckNothingLeft()
}

// TestE2EGRO: with GRO on the host's NIC (the default on real NICs), a
// usnet HTTP server takes a 4 MB upload and serves 1 MiB on every
// backend. afpacket reads the coalesced frames with their virtio-net
// header and cuts them back into segments (its log says how many);
// afxdp runs before GRO, and macvtap segments in the kernel.
func TestE2EGRO(t *testing.T) { e2e.ForEachBackend(t, testE2EGRO) }

func testE2EGRO(t *testing.T, backend string) {
	netlab.RequireTool(t, "curl", "curl")
	netlab.RequireTool(t, "ethtool", "ethtool")
	l := newPeerLab(t)
	l.Backend = backend
	setGRO(t, l, true)
	u := l.Start()
	srv := l.startServer("usnet", httpPortEnv+"=8080")
	h := l.HostIP.String()
	upload := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(upload, jumboData(4_000_000, 9), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := l.Peer.Command(ctx, "curl", "-sS", "--max-time", "60", "--data-binary", "@"+upload,
		fmt.Sprintf("http://%s:8080/upload", h)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "received 4000000") {
		t.Fatalf("upload of 4 MB with GRO on: %v\n%s\n%s\nusnetd:\n%s", err, out, e2e.GrepLines(l.Scrape(), "drop"), u.LogText())
	}
	body, err := l.Peer.Command(ctx, "curl", "-sS", "--max-time", "60", fmt.Sprintf("http://%s:8080/download", h)).Output()
	if err != nil || len(body) != downloadSize {
		t.Fatalf("download of 1 MiB with GRO on: %d bytes, %v", len(body), err)
	}
	srv.stop(t)
	u.Stop(t)
	if backend == "afpacket" {
		closed := e2e.GrepLines(u.LogText(), "afpacket: port closed")
		if !strings.Contains(closed, `"rx_gso_frames":`) || strings.Contains(closed, `"rx_gso_frames":0,`) {
			t.Errorf("no GRO super-frame was cut (is GRO on?): %s", closed)
		}
		t.Logf("%s", closed)
	}
	l.CheckNothingLeft()
}

// setGRO turns GRO on the host's NIC on or off (ethtool -K IF gro on|off)
// and checks that it took.
func setGRO(t testing.TB, l *e2eLab, on bool) {
	t.Helper()
	state := map[bool]string{true: "on", false: "off"}[on]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := l.Host.Command(ctx, "ethtool", "-K", l.Ifname, "gro", state).CombinedOutput(); err != nil {
		t.Fatalf("ethtool -K %s gro %s: %v\n%s", l.Ifname, state, err, out)
	}
	out, err := l.Host.Command(ctx, "ethtool", "-k", l.Ifname).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "generic-receive-offload: "+state) {
		t.Fatalf("ethtool -k %s: GRO not %s: %v\n%s", l.Ifname, state, err, out)
	}
}
