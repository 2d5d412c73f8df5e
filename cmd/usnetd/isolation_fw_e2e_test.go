package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/e2e"
)

// TestE2EKernelCannotTakeEndpointPorts: a local user, outside ALLOW_GID,
// binds an endpoint's registered port in the kernel, on the host's
// address, and sends to the peer from it: a UDP datagram, and a TCP SYN
// on the very 4-tuple of the endpoint's live connection (whose learning
// would hand the peer's segments to the kernel, which would answer them
// with RSTs). Neither leaves the host: the eBPF egress program drops them
// and counts egress_endpoint_dropped (afxdp, afpacket); with macvtap the
// kernel is a switch port and the switch drops them as spoofs. In the same
// test the peer's datagrams to the port keep reaching the endpoint, never
// the kernel's socket, and the endpoint's TCP connection keeps working.
func TestE2EKernelCannotTakeEndpointPorts(t *testing.T) {
	e2e.ForEachBackend(t, testE2EKernelCannotTakeEndpointPorts)
}

func testE2EKernelCannotTakeEndpointPorts(t *testing.T, backend string) {
	l := newPeerLab(t)
	l.Backend = backend
	h := l.HostIP.String()
	u := l.Start()
	srv := l.startServer("usnet", httpPortEnv+"=8080") // the endpoint's TCP listener

	// The UDP endpoint: port 7000, answered from its channel.
	c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, err := c.RequestUDS(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	port := uint16(7000)
	if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &port, Protocol: 17}); err != nil {
		t.Fatal(err)
	}
	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	answered := e2e.UDPResponder(t, ch, lk.Attrs().HardwareAddr, port)

	// The peer's UDP socket, on a fixed port the attacker can aim at.
	peerUDP := netip.AddrPortFrom(l.PeerIP, 53000)
	pc, err := l.Peer.ListenPacket("udp", peerUDP.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	hostUDP := net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.HostIP, port))
	exchange := func(what string) {
		t.Helper()
		if _, err := pc.WriteTo([]byte("ping"), hostUDP); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("%s: the endpoint's answer: %q, %v (answered %d)\n%s", what, buf[:n], err, answered.Load(), u.LogText())
		}
	}
	exchange("before the attack")

	// The endpoint's TCP connection, from a fixed peer port.
	peerTCP := netip.AddrPortFrom(l.PeerIP, 41000)
	var conn net.Conn
	err = l.Peer.Do(func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(peerTCP)}
		conn, err = d.Dial("tcp", h+":8080")
		return err
	})
	if err != nil {
		t.Fatalf("dial the usnet server: %v\n%s", err, srv.logText())
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	get := func(what string) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatalf("%s: write on the endpoint's connection: %v", what, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: the endpoint's connection: %v\n%s", what, err, u.LogText())
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Header.Get("X-Stack") != "usnet" {
			t.Fatalf("%s: answered by %q", what, resp.Header.Get("X-Stack"))
		}
	}
	get("before the attack")
	before := l.Scrape()

	// The attack, UDP: the kernel takes port 7000 and sends first.
	kpc, err := l.Host.ListenPacket("udp", hostUDP.String())
	if err != nil {
		t.Fatalf("the kernel socket on the endpoint's port: %v", err)
	}
	defer kpc.Close()
	for range 3 {
		if _, err := kpc.WriteTo([]byte("kernel"), net.UDPAddrFromAddrPort(peerUDP)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 64)
	_ = pc.SetReadDeadline(time.Now().Add(time.Second))
	if n, from, err := pc.ReadFrom(buf); err == nil {
		t.Fatalf("the kernel's datagram left the host: %q from %v", buf[:n], from)
	}
	// The attack, TCP: the kernel sends a SYN from port 8080 to the
	// endpoint's peer, on the endpoint's connection's 4-tuple.
	err = l.Host.Do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(l.HostIP, 8080))}
		kc, err := d.Dial("tcp", peerTCP.String())
		if err == nil {
			kc.Close()
			return fmt.Errorf("connected")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the kernel's connection from the endpoint's port: %v", err)
	}

	// The legitimate traffic next to it: the peer's datagrams reach the
	// endpoint, not the kernel's socket; the TCP connection lives.
	for i := range 3 {
		exchange(fmt.Sprintf("after the attack, %d", i))
	}
	_ = kpc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, from, err := kpc.ReadFrom(buf); err == nil {
		t.Fatalf("the kernel's socket got the peer's datagram: %q from %v", buf[:n], from)
	}
	get("after the attack")
	get("after the attack, again")

	after := l.Scrape()
	series := fmt.Sprintf(`usnetd_firewall_frames_total{counter="egress_endpoint_dropped",interface="%s"}`, l.Ifname)
	if backend == "macvtap" {
		series = fmt.Sprintf(`usnetd_drops_total{interface="%s",reason="spoof"}`, l.Ifname)
	}
	b, _ := e2e.MetricValue(before, series)
	a, ok := e2e.MetricValue(after, series)
	// 3 datagrams and at least one SYN.
	if !ok || a-b < 4 {
		t.Errorf("%s moved from %v to %v (found %v), want at least 4 drops\n%s", series, b, a, ok, e2e.GrepLines(after, "firewall"))
	}
	t.Logf("%s: %v -> %v", series, b, a)
}
