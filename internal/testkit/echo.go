package testkit

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/netlab"
)

// ServeTCPEcho runs a TCP echo server at addr inside ns until the test
// ends and returns its address.
func ServeTCPEcho(t testing.TB, ns *netlab.NS, addr string) net.Addr {
	t.Helper()
	ln, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go EchoAccepted(ln)
	return ln.Addr()
}

// EchoAccepted accepts connections on ln until it is closed and echoes
// what each one sends back to it.
func EchoAccepted(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// ServeUDPEcho runs a UDP echo server at addr inside ns until the test
// ends and returns its address.
func ServeUDPEcho(t testing.TB, ns *netlab.NS, addr string) net.Addr {
	t.Helper()
	pc, err := ns.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr()
}

// TCPEcho dials addr from ns (from the local address src, if valid) and
// echoes a message through the connection; it returns the dial or echo
// error.
func TCPEcho(ns *netlab.NS, src netip.Addr, addr string, timeout time.Duration) error {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	return EchoConn(c, []byte("hello usnetd"), timeout)
}

// UDPEcho sends a datagram from ns to addr and waits for the echo.
func UDPEcho(ns *netlab.NS, addr string, timeout time.Duration) error {
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.Dial("udp", addr); return err }); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("echo %q", buf[:n])
	}
	return nil
}

// EchoConn writes msg to c and reads it back, within timeout.
func EchoConn(c net.Conn, msg []byte, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != string(msg) {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// Eventually waits up to d for cond, checking every 5 ms, and fails the
// test with what when it does not come true.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// IsTimeout reports whether err is a network timeout: no answer at all,
// as a firewall that drops gives (a refused connection is not one).
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
