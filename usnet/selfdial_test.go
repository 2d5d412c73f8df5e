package usnet

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
)

// TestSelfDial: a passthru stack (the kernel's MAC and addresses, IPv4,
// IPv6 and link-local, in a lab namespace) dials its own addresses. A
// port where a kernel service listens is reached through the kernel (the
// *TCPConn and *UDPConn wrap the kernel's sockets, with a local port of
// the kernel's and the kernel's socket options); a port where the stack
// listens stays in the stack; a port where neither listens is refused by
// the kernel. An address of the stack's own that the kernel does not have
// stays in the stack, as does every dial from a namespace where the
// kernel lacks the address. Stack.Close closes the kernel's connections.
func TestSelfDial(t *testing.T) {
	host, _, sn, sn6 := newLab(t)
	ip4, ip6 := netlab.Host(sn, 1).Addr(), netlab.Host(sn6, 1).Addr()
	own := netlab.Host(sn, 9) // the stack's, not the kernel's
	var ll netip.Addr
	var zone string // eth0's index: net's cache of zone names spans namespaces
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	other := os.NewFile(uintptr(fds[1]), "chan-far") // nobody reads: the dials never leave
	defer other.Close()
	fa := &fakeAttacher{ch: os.NewFile(uintptr(fds[0]), "chan")}
	var st *Stack
	err = host.Do(func() error {
		res, err := (&Config{Interface: "eth0"}).resolve()
		if err != nil {
			return err
		}
		nic, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		zone = strconv.Itoa(nic.Index)
		for _, p := range res.addrs {
			if p.Addr().IsLinkLocalUnicast() {
				ll = p.Addr()
			}
		}
		cfg := &Config{
			Interface:      "eth0",
			Addrs:          append(res.addrs, own),
			Attach:         func(string) (Attacher, error) { return fa, nil },
			localPortRange: func() (uint16, uint16, error) { return testRangeLo, testRangeHi, nil },
		}
		st, err = Open(context.Background(), cfg)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !ll.IsValid() {
		t.Fatalf("no link-local address among %v", st.Addrs())
	}
	var kernelLo, kernelHi uint16
	if err := host.Do(func() (err error) { kernelLo, kernelHi, err = kernelPortRange(); return err }); err != nil {
		t.Fatal(err)
	}

	// The kernel's services, on each shared address.
	for _, a := range []string{ip4.String(), ip6.String(), ll.String() + "%" + zone} {
		testkit.ServeTCPEcho(t, host, net.JoinHostPort(a, "7000"))
		testkit.ServeUDPEcho(t, host, net.JoinHostPort(a, "7000"))
	}
	// The stack's: TCP 8080 and UDP 8081 on every address.
	ln, err := st.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	pc, err := st.ListenPacket("udp", ":8081")
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

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// dial dials from the host namespace, where the kernel has the
	// addresses.
	dial := func(network, addr string) (c net.Conn, err error) {
		err = host.Do(func() error { c, err = st.DialContext(ctx, network, addr); return err })
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

	for _, ip := range []netip.Addr{ip4, ip6, ll} {
		kernelSvc := netip.AddrPortFrom(ip, 7000).String()
		// A kernel service: the kernel's connection, wrapped.
		c, err := dial("tcp", kernelSvc)
		if err != nil {
			t.Fatalf("dial %s (a kernel service): %v", kernelSvc, err)
		}
		tc, ok := c.(*TCPConn)
		if !ok || tc.k == nil {
			t.Fatalf("dial %s: %T (kernel %v), want a *TCPConn of the kernel's", kernelSvc, c, ok && tc.k != nil)
		}
		if err := testkit.EchoConn(c, []byte("to the kernel"), 5*time.Second); err != nil {
			t.Fatalf("%s: %v", kernelSvc, err)
		}
		if p := c.LocalAddr().(*net.TCPAddr).Port; p < int(kernelLo) || p > int(kernelHi) {
			t.Errorf("%s: local port %d outside the kernel's range %d-%d", kernelSvc, p, kernelLo, kernelHi)
		}
		c.Close()
		uc, err := dial("udp", kernelSvc)
		if err != nil {
			t.Fatalf("dial udp %s: %v", kernelSvc, err)
		}
		if u, ok := uc.(*UDPConn); !ok || u.k == nil {
			t.Fatalf("dial udp %s: %T, want a *UDPConn of the kernel's", kernelSvc, uc)
		}
		if err := udpEcho(uc, "ping"); err != nil {
			t.Fatalf("udp %s: %v", kernelSvc, err)
		}
		uc.Close()

		// The stack's own listener: the dial stays in the stack.
		stackSvc := netip.AddrPortFrom(ip, 8080).String()
		c, err = dial("tcp", stackSvc)
		if err != nil {
			t.Fatalf("dial %s (the stack's listener): %v", stackSvc, err)
		}
		if tc, ok := c.(*TCPConn); !ok || tc.k != nil {
			t.Fatalf("dial %s: %T, want a *TCPConn of the stack's", stackSvc, c)
		}
		if err := testkit.EchoConn(c, []byte("to myself"), 5*time.Second); err != nil {
			t.Fatalf("%s: %v", stackSvc, err)
		}
		select {
		case a := <-accepted:
			if a.RemoteAddr().String() != c.LocalAddr().String() {
				t.Errorf("accepted from %s, dialled from %s", a.RemoteAddr(), c.LocalAddr())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the stack's listener accepted nothing", stackSvc)
		}
		c.Close()
		uc, err = dial("udp", netip.AddrPortFrom(ip, 8081).String())
		if err != nil {
			t.Fatal(err)
		}
		if u, ok := uc.(*UDPConn); !ok || u.k != nil {
			t.Fatalf("dial udp :8081: %T, want a *UDPConn of the stack's", uc)
		}
		// (Not for link-local: the stack's dialled UDP socket takes its
		// first IPv6 address as its source, and the answer from the
		// link-local one does not match the connected socket.)
		if !ip.IsLinkLocalUnicast() {
			if err := udpEcho(uc, "usnet:ping"); err != nil {
				t.Fatalf("udp %s:8081 (the stack's): %v", ip, err)
			}
		}
		uc.Close()

		// Nobody listens: the kernel refuses, at once.
		nobody := netip.AddrPortFrom(ip, 7002).String()
		if c, err := dial("tcp", nobody); !errors.Is(err, syscall.ECONNREFUSED) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("dial %s (nobody): %v, want ECONNREFUSED", nobody, err)
		}
		uc, err = dial("udp", nobody)
		if err != nil {
			t.Fatal(err)
		}
		if err := udpEcho(uc, "ping"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("udp %s (nobody): %v, want ECONNREFUSED (the kernel's ICMP)", nobody, err)
		}
		uc.Close()
	}

	// The kernel's options through the *TCPConn.
	c, err := dial("tcp4", netip.AddrPortFrom(ip4, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*TCPConn)
	sockopt := func(level, opt int) int {
		t.Helper()
		rc, err := tc.k.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		return v
	}
	if sockopt(unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0 || sockopt(unix.IPPROTO_TCP, unix.TCP_NODELAY) == 0 {
		t.Error("the kernel's connection: want keep-alive off and no delay, as the stack's")
	}
	for _, err := range []error{
		tc.SetNoDelay(false),
		tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 42 * time.Second, Interval: 7 * time.Second, Count: 3}),
		tc.SetReadBuffer(64 << 10),
		tc.SetWriteBuffer(96 << 10),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 0},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 42},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 7},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3},
		{"SO_RCVBUF", unix.SOL_SOCKET, unix.SO_RCVBUF, 2 * 64 << 10}, // the kernel doubles it
		{"SO_SNDBUF", unix.SOL_SOCKET, unix.SO_SNDBUF, 2 * 96 << 10},
	} {
		if got := sockopt(o.level, o.opt); got != o.want {
			t.Errorf("%s = %d, want %d", o.name, got, o.want)
		}
	}
	if err := tc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(tc); err != nil || len(b) != 0 {
		t.Errorf("after CloseWrite the kernel's echo server closed with %q, %v", b, err)
	}
	tc.Close()

	// An address of the stack's own that the kernel does not have stays
	// in the stack: its listener answers, any other port is refused by
	// the stack itself. Also where the kernel would bind any address
	// (ip_nonlocal_bind), so that a bind alone does not tell.
	if err := host.SetSysctl("net.ipv4.ip_nonlocal_bind", "1"); err != nil {
		t.Fatal(err)
	}
	if c, err := dial("tcp", netip.AddrPortFrom(own.Addr(), 8080).String()); err != nil {
		t.Fatalf("dial %s:8080: %v", own.Addr(), err)
	} else {
		if c.(*TCPConn).k != nil {
			t.Errorf("dial %s:8080 went to the kernel", own.Addr())
		}
		c.Close()
	}
	if c, err := dial("tcp", netip.AddrPortFrom(own.Addr(), 7000).String()); err == nil {
		c.Close()
		t.Fatalf("dial %s:7000: connected, want refused by the stack", own.Addr())
	} else if errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial %s:7000: %v, want the stack's refusal", own.Addr(), err)
	}
	// Outside the namespace the kernel has no such address: the stack.
	if c, err := st.DialContext(ctx, "tcp", netip.AddrPortFrom(ip4, 7000).String()); err == nil {
		c.Close()
		t.Fatal("dial from a namespace without the address: connected")
	} else if errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial from a namespace without the address: %v, want the stack's refusal", err)
	}

	// A Config's implicit stack (what the package-level functions use)
	// does the same; the kernel's connection is its socket: the stack
	// lives while it is open and goes with its Close.
	fds2, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	other2 := os.NewFile(uintptr(fds2[1]), "chan-far-2")
	defer other2.Close()
	fa2 := &fakeAttacher{ch: os.NewFile(uintptr(fds2[0]), "chan-2")}
	cfg2 := &Config{
		Interface:      "eth0",
		Addrs:          st.Addrs(),
		MAC:            net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42},
		Attach:         func(string) (Attacher, error) { return fa2, nil },
		localPortRange: func() (uint16, uint16, error) { return testRangeLo, testRangeHi, nil },
	}
	var kc net.Conn
	if err := host.Do(func() (err error) { kc, err = cfg2.Dial("tcp", netip.AddrPortFrom(ip4, 7000).String()); return err }); err != nil {
		t.Fatalf("Config.Dial to a kernel service: %v", err)
	}
	if tc, ok := kc.(*TCPConn); !ok || tc.k == nil {
		t.Fatalf("Config.Dial to a kernel service: %T, want a *TCPConn of the kernel's", kc)
	}
	if err := testkit.EchoConn(kc, []byte("config"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, _, closed := fa2.snapshot(); closed != 0 {
		t.Errorf("the Config's stack detached while its kernel connection is open")
	}
	kc.Close()
	waitClosed(t, fa2, "the Config's stack after its kernel connection's Close")

	// Stack.Close closes a kernel connection still open.
	c, err = dial("tcp", netip.AddrPortFrom(ip4, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Stack.Close: %v, want net.ErrClosed", err)
	}
	ln.Close()
	pc.Close()
}
