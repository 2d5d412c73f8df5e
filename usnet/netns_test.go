package usnet

// A usnet stack against real kernel peers in a network-namespace lab. A
// small "wire" stands in for usnetd: it bridges the stack's channel (a
// socketpair) to an AF_PACKET socket on a veth in the lab's "host"
// namespace; the veth's other end is in the "peer" namespace, whose kernel
// fetches from a usnet net/http server and serves a TCP and a UDP server
// that usnet dials.
//
// The stack has a MAC and an address of its own on the veth's subnet: the
// wire, unlike usnetd, does not keep the host kernel from answering
// packets for its own address, so the passthru case (the stack shares the
// kernel's address) is tested for its resolution only.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/netorder"
)

// packetWire copies frames between a channel end and an AF_PACKET socket.
type packetWire struct {
	pkt, ch *os.File
	wg      sync.WaitGroup
}

// newWire opens an AF_PACKET socket on link inside ns and returns the
// wire and the channel end for the stack.
func newWire(t *testing.T, ns *netlab.NS, link string) (*packetWire, *os.File) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		for _, o := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, o, channelBuffer)
		}
	}
	var pfd int
	err = ns.Do(func() error {
		nic, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		proto := int(netorder.Htons(unix.ETH_P_ALL))
		pfd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
		if err != nil {
			return err
		}
		// Frames the host kernel sends are not the peer's.
		if err := unix.SetsockoptInt(pfd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			unix.Close(pfd)
			return err
		}
		if err := unix.Bind(pfd, &unix.SockaddrLinklayer{Protocol: netorder.Htons(unix.ETH_P_ALL), Ifindex: nic.Index}); err != nil {
			unix.Close(pfd)
			return err
		}
		return nil
	})
	if err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		t.Fatalf("wire: AF_PACKET socket on %s in %s: %v", link, ns, err)
	}
	unix.SetNonblock(fds[0], true)
	w := &packetWire{pkt: os.NewFile(uintptr(pfd), "wire-packet"), ch: os.NewFile(uintptr(fds[0]), "wire-channel")}
	w.wg.Add(2)
	go w.copy(w.pkt, w.ch)
	go w.copy(w.ch, w.pkt)
	t.Cleanup(w.close)
	return w, os.NewFile(uintptr(fds[1]), "stack-channel")
}

// copy moves one frame per read until either side is closed. Frames that
// cannot be written are dropped, as usnetd would.
func (w *packetWire) copy(from, to *os.File) {
	defer w.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := from.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			continue
		}
		if _, err := to.Write(buf[:n]); errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

func (w *packetWire) close() {
	w.pkt.Close()
	w.ch.Close()
	w.wg.Wait()
}

// newLab makes the host and peer namespaces joined by a veth
// (netlab.NewPair); the host end has the kernel's address .1 and the peer
// .2 (and ::1, ::2).
func newLab(t *testing.T) (host, peer *netlab.NS, sn, sn6 netip.Prefix) {
	p, err := netlab.NewPair(t, netlab.PairOpts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	// A veth hands frames on with CHECKSUM_PARTIAL, so an AF_PACKET
	// socket on the other end sees checksums never filled in, and gVisor
	// rightly drops those segments: the peer computes them instead.
	if err := p.Peer.TxChecksumOff("eth0"); err != nil {
		t.Fatal(err)
	}
	return p.Host, p.Peer, p.Subnet, p.Subnet6
}

func TestKernelPeer(t *testing.T) {
	host, peer, sn, sn6 := newLab(t)
	_, ch := newWire(t, host, "eth0")
	fa := &fakeAttacher{ch: ch}
	t.Cleanup(func() {
		if fa.ch != nil {
			fa.ch.Close()
		}
	})
	ip4, ip6 := netlab.Host(sn, 3), netlab.Host(sn6, 3)
	cfg := &Config{
		Interface: "eth0",
		MAC:       net.HardwareAddr{0x02, 0x75, 0x73, 0x6e, 0x65, 0x74},
		Addrs:     []netip.Prefix{ip4, ip6},
		Attach:    func(string) (Attacher, error) { return fa, nil },
	}

	// A usnet net/http server, fetched by the peer's kernel.
	ln, err := cfg.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "usnet says hello to %s", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	peer4, peer6 := netlab.Host(sn, 2).Addr(), netlab.Host(sn6, 2).Addr()
	for _, tc := range []struct {
		url  string
		from netip.Addr
	}{
		{fmt.Sprintf("http://%s:8080/", ip4.Addr()), peer4},
		{fmt.Sprintf("http://[%s]:8080/", ip6.Addr()), peer6},
	} {
		want := "usnet says hello to " + tc.from.String()
		if tc.from.Is6() {
			want = "usnet says hello to [" + tc.from.String() + "]"
		}
		// Go's client in the peer namespace.
		tr := &http.Transport{DialContext: peer.Dial}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(tc.url)
		if err != nil {
			cfg.mu.Lock()
			if st := cfg.st; st != nil && st.link != nil {
				t.Logf("stack link: %s", st.link.stats.String())
			}
			cfg.mu.Unlock()
			t.Fatalf("GET %s from the peer: %v", tc.url, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if !strings.HasPrefix(string(body), want) {
			t.Errorf("GET %s: %q, want %q...", tc.url, body, want)
		}
		// curl, a real peer program.
		if _, err := exec.LookPath("curl"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("curl is not installed (CI installs it in .ci/run)")
			}
			t.Logf("no curl, fetched with Go's client only")
			continue
		}
		out, err := peer.Command(ctx, "curl", "-sS", "--max-time", "10", tc.url).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), want) {
			t.Errorf("curl %s: %q %v", tc.url, out, err)
		}
	}

	// The stack answers ping (ICMP echo) on both families.
	netlab.RequireTool(t, "ping", "iputils-ping")
	for _, a := range []netip.Addr{ip4.Addr(), ip6.Addr()} {
		if out, err := peer.Command(ctx, "ping", "-c1", "-W5", a.String()).CombinedOutput(); err != nil {
			t.Errorf("ping %s: %v\n%s", a, err, out)
		}
	}

	// usnet dials a TCP server and a UDP server of the peer's kernel.
	pl, err := peer.Listen("tcp", netip.AddrPortFrom(peer4, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	for _, dst := range []netip.Addr{peer4, peer6} {
		if dst.Is6() {
			pl6, err := peer.Listen("tcp", netip.AddrPortFrom(peer6, 9000).String())
			if err != nil {
				t.Fatal(err)
			}
			defer pl6.Close()
			go func() {
				c, err := pl6.Accept()
				if err == nil {
					io.Copy(c, c)
					c.Close()
				}
			}()
		}
		c, err := cfg.DialContext(ctx, "tcp", netip.AddrPortFrom(dst, 9000).String())
		if err != nil {
			t.Fatalf("usnet dial %s: %v", dst, err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		msg := strings.Repeat("usnet to the kernel ", 10000) // 200 kB: many segments
		go func() {
			io.WriteString(c, msg)
			c.(interface{ CloseWrite() error }).CloseWrite()
		}()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != msg {
			t.Errorf("echo through the peer's kernel at %s: %d bytes, %v", dst, len(got), err)
		}
		if p := c.LocalAddr().(*net.TCPAddr).Port; p >= 32768 && p <= 60999 {
			t.Errorf("local port %d inside the kernel's default range", p)
		}
	}

	pc, err := peer.ListenPacket("udp", netip.AddrPortFrom(peer4, 9001).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	uc, err := cfg.DialContext(ctx, "udp", netip.AddrPortFrom(peer4, 9001).String())
	if err != nil {
		t.Fatal(err)
	}
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	uc.Write([]byte("datagram"))
	buf := make([]byte, 100)
	if n, err := uc.Read(buf); err != nil || string(buf[:n]) != "datagram" {
		t.Errorf("UDP echo: %q %v", buf[:n], err)
	}
	uc.Close()

	srv.Close() // closes the listener: the last socket
	if _, _, active, closed := fa.snapshot(); len(active) != 0 || closed != 1 {
		t.Errorf("after the last Close: rules %v, DeleteClient %d times", active, closed)
	}
}

// TestPassthru: a Config without MAC and addresses takes the NIC's MAC,
// addresses, MTU and the kernel's routes through it.
func TestPassthru(t *testing.T) {
	host, _, sn, sn6 := newLab(t)
	gw := netlab.Host(sn, 254).Addr()
	if err := host.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), gw, "eth0"); err != nil {
		t.Fatal(err)
	}
	var res resolved
	var mac net.HardwareAddr
	err := host.Do(func() error {
		nic, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		mac = nic.HardwareAddr
		res, err = (&Config{Interface: "eth0"}).resolve()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.mac.String() != mac.String() || res.mtu != 1500 {
		t.Errorf("MAC %s MTU %d, want %s 1500", res.mac, res.mtu, mac)
	}
	for _, want := range []netip.Prefix{netlab.Host(sn, 1), netlab.Host(sn6, 1)} {
		found := false
		for _, a := range res.addrs {
			found = found || a == want
		}
		if !found {
			t.Errorf("address %s missing from %v", want, res.addrs)
		}
	}
	for _, want := range []route{
		{dst: sn},
		{dst: sn6},
		{dst: netip.MustParsePrefix("0.0.0.0/0"), gw: gw},
	} {
		found := false
		for _, r := range res.routes {
			found = found || r == want
		}
		if !found {
			t.Errorf("route %v missing from %v", want, res.routes)
		}
	}
	// Outside the namespace there is no such interface.
	if _, err := (&Config{Interface: "ul-nosuch0"}).resolve(); err == nil {
		t.Error("passthru of a missing interface succeeded")
	}
}
