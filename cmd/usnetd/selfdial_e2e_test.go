package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/testkit"
	"github.com/usnetd/usnetd/usnet"
)

// TestE2EUsnetSelfDial: a usnet program on the host's shared address
// (passthru: the NIC's MAC and IP, on the real usnetd) dials that address.
// The kernel's TCP and UDP services there, on a port the firewall keeps
// closed to the wire, answer it (the dial is a kernel socket's, over the
// kernel's loopback, as any local program's; its local port is the
// kernel's); the program's own listener and UDP socket on the same
// address answer it from inside its stack; a port where nobody listens is
// refused. The safety side, in the same test: the kernel's services stay
// closed to the peer on the wire, while the program's listener, which it
// registered with usnetd, is open to it.
func TestE2EUsnetSelfDial(t *testing.T) { e2e.ForEachBackend(t, testE2EUsnetSelfDial) }

func testE2EUsnetSelfDial(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	// A veth leaves checksums to the receiver, which a stack behind
	// AF_XDP sees unfilled (see newPeerLab): the peer computes them.
	if err := l.Peer.TxChecksumOff("eth0"); err != nil {
		t.Fatal(err)
	}
	kernelSvc := netip.AddrPortFrom(l.HostIP, 7000).String() // not in DEBUG_PORTS
	testkit.ServeTCPEcho(t, l.Host, kernelSvc)
	testkit.ServeUDPEcho(t, l.Host, kernelSvc)
	l.startIso(t)

	var st *usnet.Stack
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := l.Host.Do(func() (err error) {
		st, err = usnet.Open(ctx, &usnet.Config{Interface: l.Ifname, SocketPath: l.Sock})
		return err
	})
	if err != nil {
		t.Fatalf("usnet.Open (passthru): %v\n%s", err, l.u.LogText())
	}
	defer st.Close()
	ln, err := st.Listen("tcp", netip.AddrPortFrom(l.HostIP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Addr, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr()
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	pc, err := st.ListenPacket("udp", netip.AddrPortFrom(l.HostIP, 8081).String())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("usnet:"), buf[:n]...), from)
		}
	}()

	// The program runs on the host: its dials happen in the host's
	// namespace.
	dialTCP := func(addr string) (c *usnet.TCPConn, err error) {
		err = l.Host.Do(func() error { c, err = st.DialTCP(ctx, "tcp", addr); return err })
		return c, err
	}
	dialUDP := func(addr string) (c *usnet.UDPConn, err error) {
		err = l.Host.Do(func() error { c, err = st.DialUDP(ctx, "udp", addr); return err })
		return c, err
	}
	udpEcho := func(c net.Conn, want string) error {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:n]) != want {
			return errors.New("echo " + string(buf[:n]) + ", want " + want)
		}
		return nil
	}
	var kernelLo, kernelHi int
	if err := l.Host.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
		if err == nil {
			_, err = fmt.Sscan(string(b), &kernelLo, &kernelHi)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// The kernel's TCP service on the shared address.
	c, err := dialTCP(kernelSvc)
	if err != nil {
		t.Fatalf("usnet -> kernel TCP %s: %v\n%s", kernelSvc, err, l.u.LogText())
	}
	if err := c.SetNoDelay(false); err != nil { // the kernel's option, through the wrapper
		t.Fatal(err)
	}
	if err := testkit.EchoConn(c, []byte("to the kernel's service"), 5*time.Second); err != nil {
		t.Fatalf("usnet -> kernel TCP %s: %v", kernelSvc, err)
	}
	if p := c.LocalAddr().(*net.TCPAddr).Port; p < kernelLo || p > kernelHi {
		t.Errorf("usnet -> kernel TCP: local port %d outside the kernel's %d-%d: not the kernel's connection", p, kernelLo, kernelHi)
	}
	c.Close()
	// The kernel's UDP service.
	u, err := dialUDP(kernelSvc)
	if err != nil {
		t.Fatal(err)
	}
	if err := udpEcho(u, "ping"); err != nil {
		t.Fatalf("usnet -> kernel UDP %s: %v", kernelSvc, err)
	}
	u.Close()

	// The program's own listener on the same address: inside the stack.
	own := netip.AddrPortFrom(l.HostIP, 8080).String()
	c, err = dialTCP(own)
	if err != nil {
		t.Fatalf("usnet -> its own listener %s: %v", own, err)
	}
	if err := testkit.EchoConn(c, []byte("to myself"), 5*time.Second); err != nil {
		t.Fatalf("usnet -> its own listener %s: %v", own, err)
	}
	select {
	case from := <-accepted:
		if from.String() != c.LocalAddr().String() {
			t.Errorf("the listener accepted %s, the dial came from %s", from, c.LocalAddr())
		}
		if p := c.LocalAddr().(*net.TCPAddr).Port; p >= kernelLo && p <= kernelHi {
			t.Errorf("usnet -> usnet: local port %d inside the kernel's range: not the stack's connection", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the program's listener accepted nothing")
	}
	c.Close()
	u, err = dialUDP(netip.AddrPortFrom(l.HostIP, 8081).String())
	if err != nil {
		t.Fatal(err)
	}
	if err := udpEcho(u, "usnet:ping"); err != nil {
		t.Fatalf("usnet -> its own UDP socket: %v", err)
	}
	u.Close()

	// Nobody listens: refused by the kernel (TCP RST, ICMP for UDP).
	nobody := netip.AddrPortFrom(l.HostIP, 7002).String()
	if c, err := dialTCP(nobody); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("usnet -> %s (nobody): %v, want ECONNREFUSED", nobody, err)
	}
	u, err = dialUDP(nobody)
	if err != nil {
		t.Fatal(err)
	}
	if err := udpEcho(u, "ping"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("usnet -> UDP %s (nobody): %v, want ECONNREFUSED", nobody, err)
	}
	u.Close()

	// The safety side: the kernel's services stay closed to the wire; the
	// program's listener (registered with usnetd) is open to it.
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, kernelSvc, 700*time.Millisecond); !testkit.IsTimeout(err) {
		t.Fatalf("peer -> kernel TCP %s (not in DEBUG_PORTS): %v, want no answer", kernelSvc, err)
	}
	if err := testkit.UDPEcho(l.Peer, kernelSvc, 700*time.Millisecond); !testkit.IsTimeout(err) {
		t.Fatalf("peer -> kernel UDP %s (not in DEBUG_PORTS): %v, want no answer", kernelSvc, err)
	}
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, own, 5*time.Second); err != nil {
		t.Fatalf("peer -> the program's listener %s: %v\n%s", own, err, l.u.LogText())
	}
	// And the kernel path still works after that.
	if c, err = dialTCP(kernelSvc); err != nil {
		t.Fatalf("usnet -> kernel TCP %s again: %v", kernelSvc, err)
	}
	if err := testkit.EchoConn(c, []byte("again"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Stack.Close closes it with the rest.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the kernel's connection after Stack.Close: %v, want net.ErrClosed", err)
	}
	l.finish(t)
}
