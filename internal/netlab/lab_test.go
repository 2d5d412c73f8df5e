package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testPrefix is the prefix of every lab these tests make (except the
// Sweep tests, which use prefixes of their own).
const testPrefix = "nlt"

// pair makes a lab with namespaces a and b joined by a veth a:va—b:vb that
// is up, with .1 and .2 of a fresh subnet: a NewPair.
func pair(t *testing.T, opts VethOpts) (lab *Lab, a, b *NS, addrA, addrB netip.Prefix) {
	t.Helper()
	p, err := NewPair(t, PairOpts{Veth: opts, Prefix: testPrefix, HostLink: "va", PeerLink: "vb"})
	if err != nil {
		t.Fatal(err)
	}
	return p.Lab, p.Host, p.Peer, netip.PrefixFrom(p.HostIP, p.Subnet.Bits()), netip.PrefixFrom(p.PeerIP, p.Subnet.Bits())
}

// TestNewPairIPv6: a pair with IPv6 carries datagrams both ways over both
// families at once (no duplicate address detection to wait for).
func TestNewPairIPv6(t *testing.T) {
	t.Parallel()
	p, err := NewPair(t, PairOpts{Prefix: testPrefix, IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Subnet.Contains(p.HostIP) || !p.Subnet6.Contains(p.PeerIP6) || p.HostLink != "eth0" {
		t.Fatalf("pair %+v", p)
	}
	for _, c := range []struct {
		srv, cli *NS
		addr     netip.Addr
	}{{p.Host, p.Peer, p.HostIP}, {p.Peer, p.Host, p.PeerIP}, {p.Host, p.Peer, p.HostIP6}, {p.Peer, p.Host, p.PeerIP6}} {
		pc, err := c.srv.ListenPacket("udp", netip.AddrPortFrom(c.addr, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		udpEcho(t, pc)
		udpRoundTrip(t, c.cli, netip.MustParseAddrPort(pc.LocalAddr().String()))
	}
}

// udpEcho starts an echo server on pc until the test ends.
func udpEcho(t *testing.T, pc net.PacketConn) {
	t.Cleanup(func() { pc.Close() })
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
}

// udpRoundTrip sends one datagram from inside src to dst and waits for the
// echo. There is no retry: SetUp and AddAddr promise a link that is ready,
// so the first datagram (queued behind ARP or neighbour discovery) must
// arrive.
func udpRoundTrip(t *testing.T, src *NS, dst netip.AddrPort) {
	t.Helper()
	c, err := src.Dial(context.Background(), "udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("netlab " + t.Name())
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no echo from %s: %v", dst, err)
	}
	if !bytes.Equal(buf[:n], msg) {
		t.Fatalf("echo %q, want %q", buf[:n], msg)
	}
}

func TestVethUDPAndTCP(t *testing.T) {
	t.Parallel()
	lab, a, b, addrA, _ := pair(t, VethOpts{})

	pc, err := a.ListenPacket("udp", netip.AddrPortFrom(addrA.Addr(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc)
	udpRoundTrip(t, b, netip.MustParseAddrPort(pc.LocalAddr().String()))

	// IPv6 on the same veth: UDP and TCP.
	sn6 := lab.Subnet6()
	if err := a.AddAddr("va", Host(sn6, 1)); err != nil {
		t.Fatal(err)
	}
	if err := b.AddAddr("vb", Host(sn6, 2)); err != nil {
		t.Fatal(err)
	}
	pc6, err := a.ListenPacket("udp", netip.AddrPortFrom(Host(sn6, 1).Addr(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc6)
	udpRoundTrip(t, b, netip.MustParseAddrPort(pc6.LocalAddr().String()))

	ln, err := a.Listen("tcp", netip.AddrPortFrom(Host(sn6, 1).Addr(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := b.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("TCP echo: %q, %v", got, err)
	}
}

func TestMultiQueueVeth(t *testing.T) {
	t.Parallel()
	_, a, b, _, _ := pair(t, VethOpts{Queues: 2, MTU: 4000})
	for _, end := range []struct {
		ns   *NS
		name string
	}{{a, "va"}, {b, "vb"}} {
		l, err := end.ns.Link(end.name)
		if err != nil {
			t.Fatal(err)
		}
		at := l.Attrs()
		if at.NumRxQueues != 2 || at.NumTxQueues != 2 || at.MTU != 4000 {
			t.Errorf("%s/%s: rx %d tx %d queues, MTU %d; want 2, 2, 4000", end.ns, end.name, at.NumRxQueues, at.NumTxQueues, at.MTU)
		}
		// The same through sysfs, as an AF_XDP user sees it; `ip netns
		// exec` mounts a /sys that shows the namespace's links.
		out, err := end.ns.Command(context.Background(), "ls", "/sys/class/net/"+end.name+"/queues").CombinedOutput()
		if err != nil {
			t.Fatalf("ls queues in %s: %v: %s", end.ns, err, out)
		}
		if got := strings.Fields(string(out)); !slices.Equal(got, []string{"rx-0", "rx-1", "tx-0", "tx-1"}) {
			t.Errorf("%s/%s queues: %q", end.ns, end.name, got)
		}
	}
}

func TestCommandSeesOnlyNamespace(t *testing.T) {
	t.Parallel()
	_, a, _, _, _ := pair(t, VethOpts{})
	out, err := a.Command(context.Background(), "ls", "/sys/class/net").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, []string{"lo", "va"}) {
		t.Errorf("links in %s: %q, want [lo va]", a, got)
	}
}

func TestStartKeepsMountNamespace(t *testing.T) {
	t.Parallel()
	_, a, _, _, _ := pair(t, VethOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// /proc/self/net/dev lists the links of the reader's namespace.
	cmd := exec.CommandContext(ctx, "cat", "/proc/self/net/dev")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := a.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "va:") || strings.Contains(out.String(), "eth0:") {
		t.Errorf("/proc/self/net/dev of a process started in %s:\n%s", a, out.String())
	}
	if err := a.Start(cmd); err == nil {
		t.Error("Start of a started command succeeded")
	}
}

func TestRouteThroughRouter(t *testing.T) {
	t.Parallel()
	lab, err := New(t, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var ns [3]*NS
	for i, name := range []string{"left", "router", "right"} {
		if ns[i], err = lab.AddNS(name); err != nil {
			t.Fatal(err)
		}
	}
	left, router, right := ns[0], ns[1], ns[2]
	if _, err := lab.Veth(left, "eth0", router, "eth0", VethOpts{Up: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Veth(right, "eth0", router, "eth1", VethOpts{Up: true}); err != nil {
		t.Fatal(err)
	}
	s1, s2 := lab.Subnet(), lab.Subnet()
	for _, x := range []struct {
		ns   *NS
		link string
		addr netip.Prefix
	}{
		{left, "eth0", Host(s1, 2)}, {router, "eth0", Host(s1, 1)},
		{right, "eth0", Host(s2, 2)}, {router, "eth1", Host(s2, 1)},
	} {
		if err := x.ns.AddAddr(x.link, x.addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := left.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), Host(s1, 1).Addr(), ""); err != nil {
		t.Fatal(err)
	}
	if err := right.AddRoute(s1, Host(s2, 1).Addr(), "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := router.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	// The sysctl is the router's own.
	for _, x := range []struct {
		ns   *NS
		want string
	}{{router, "1"}, {left, "0"}} {
		var got []byte
		if err := x.ns.Do(func() (err error) {
			got, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(got)) != x.want {
			t.Errorf("ip_forward in %s = %q, want %s", x.ns, got, x.want)
		}
	}
	pc, err := right.ListenPacket("udp", netip.AddrPortFrom(Host(s2, 2).Addr(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc)
	udpRoundTrip(t, left, netip.MustParseAddrPort(pc.LocalAddr().String()))

	// Routes out of the lab ranges are refused; an on-link route needs a device.
	for _, r := range []struct {
		dst string
		via string
	}{{"10.0.0.0/8", "198.18.0.1"}, {"198.18.9.0/24", "10.0.0.1"}, {"0.0.0.0/0", "192.168.0.1"}} {
		err := left.AddRoute(netip.MustParsePrefix(r.dst), netip.MustParseAddr(r.via), "")
		if !errors.Is(err, ErrOutsideLab) {
			t.Errorf("AddRoute(%s via %s) = %v, want ErrOutsideLab", r.dst, r.via, err)
		}
	}
	if err := left.AddRoute(netip.MustParsePrefix("198.18.9.0/24"), netip.Addr{}, ""); err == nil {
		t.Error("AddRoute without gateway and device succeeded")
	}
	if err := left.SetSysctl("kernel.hostname", "x"); err == nil {
		t.Error("SetSysctl(kernel.hostname) succeeded")
	}
}

func TestAddAddrRejectsOutsideLab(t *testing.T) {
	t.Parallel()
	lab, err := New(t, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	a, err := lab.AddNS("a")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.0.0.1/24", "198.18.0.1/8", "192.0.2.1/24", "2001:db9::1/64", "::ffff:198.18.0.1/128"} {
		if err := a.AddAddr("lo", netip.MustParsePrefix(p)); !errors.Is(err, ErrOutsideLab) {
			t.Errorf("AddAddr(lo, %s) = %v, want ErrOutsideLab", p, err)
		}
	}
	// Nothing reached the kernel.
	l, err := a.Link("lo")
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netlink.Addr
	if err := a.Do(func() (err error) {
		addrs, err = netlink.AddrList(l, netlink.FAMILY_V4)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, ad := range addrs {
		if !ad.IP.IsLoopback() {
			t.Errorf("address %s on lo", ad.IPNet)
		}
	}
	if err := a.AddAddr("lo", netip.MustParsePrefix("198.19.255.1/32")); err != nil {
		t.Errorf("AddAddr inside the range: %v", err)
	}
}

// netnsInode returns the inode of the calling thread's network namespace.
func netnsInode(t *testing.T) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestDoRestoresThread(t *testing.T) {
	lab, err := New(t, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	a, err := lab.AddNS("a")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(a.Path(), &st); err != nil {
		t.Fatal(err)
	}
	inner := st.Ino
	for range 20 {
		func() {
			// Lock here only to compare this very thread before and after.
			// Do nests fine inside a caller's own LockOSThread.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			before := netnsInode(t)
			var during uint64
			if err := a.Do(func() error {
				during = netnsInode(t)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if during != inner || netnsInode(t) != before || before == inner {
				t.Fatalf("netns inode before %d, during %d (want %d), after %d", before, during, inner, netnsInode(t))
			}
		}()
	}
	// A panic in fn still puts the thread back.
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		before := netnsInode(t)
		func() {
			defer func() { recover() }()
			a.Do(func() error { panic("boom") })
		}()
		if after := netnsInode(t); after != before {
			t.Fatalf("after a panic in Do: netns inode %d, want %d", after, before)
		}
	}()
	// An error from fn comes back as is.
	sentinel := errors.New("sentinel")
	if err := a.Do(func() error { return sentinel }); err != sentinel {
		t.Errorf("Do returned %v, want the error of fn", err)
	}
}

// rootLinks returns the names of the root namespace's links. A thread is
// in a lab namespace only while a goroutine in Do is locked to it, so the
// netlink socket opened here is in the test process's own namespace.
func rootLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// labLeftovers lists the namespaces and lock files of the lab called name.
func labLeftovers(t *testing.T, name string) []string {
	t.Helper()
	var left []string
	for _, dir := range []string{NetnsDir, LockDir} {
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), name+"-") || e.Name() == name+".lock" {
				left = append(left, filepath.Join(dir, e.Name()))
			}
		}
	}
	return left
}

func TestCloseRemovesEverything(t *testing.T) {
	rootBefore := rootLinks(t)
	lab, err := New(t, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var nss []*NS
	for _, n := range []string{"a", "b", "c"} {
		ns, err := lab.AddNS(n)
		if err != nil {
			t.Fatal(err)
		}
		nss = append(nss, ns)
	}
	if _, err := lab.Veth(nss[0], "ab", nss[1], "ba", VethOpts{Queues: 4, Up: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Veth(nss[1], "bc", nss[2], "cb", VethOpts{}); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Veth(nss[2], "x", nss[2], "y", VethOpts{}); err != nil {
		t.Fatal(err)
	}
	if err := nss[0].AddAddr("ab", Host(lab.Subnet(), 1)); err != nil {
		t.Fatal(err)
	}
	// A long-running command inside the lab; Close kills it.
	cmd := nss[1].Command(context.Background(), "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if got := labLeftovers(t, lab.Name()); len(got) != 4 {
		t.Fatalf("lab %s while open: %q, want 3 namespaces and a lock file", lab.Name(), got)
	}
	if got := rootLinks(t); !slices.Equal(got, rootBefore) {
		t.Errorf("root namespace links changed while the lab is open: %q, before %q", got, rootBefore)
	}

	// Hold on to namespace b past Close, to watch the kernel destroy a and
	// c and with them the veths that lead there.
	hb := holdNS(t, nss[1])

	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Error("command in the lab was not killed by Close")
	}
	waitLinks(t, hb, "held namespace b", []string{"lo"})
	if got := labLeftovers(t, lab.Name()); len(got) != 0 {
		t.Errorf("left after Close: %q", got)
	}
	if got := rootLinks(t); !slices.Equal(got, rootBefore) {
		t.Errorf("root namespace links after Close: %q, before %q", got, rootBefore)
	}
	// Idempotent, and everything else says closed.
	if err := lab.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := lab.AddNS("d"); !errors.Is(err, ErrClosed) {
		t.Errorf("AddNS after Close: %v", err)
	}
	if err := nss[0].SetUp("ab"); !errors.Is(err, ErrClosed) {
		t.Errorf("SetUp after Close: %v", err)
	}
	if err := nss[0].Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Do after Close: %v", err)
	}
	if _, err := lab.Veth(nss[0], "p", nss[1], "q", VethOpts{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Veth after Close: %v", err)
	}
}

func TestVethNamesAreLocal(t *testing.T) {
	t.Parallel()
	// Two labs at once may use the same link and namespace names: only
	// namespace files are shared, and those carry the lab's name.
	for range 2 {
		lab, err := New(t, testPrefix)
		if err != nil {
			t.Fatal(err)
		}
		a, err := lab.AddNS("a")
		if err != nil {
			t.Fatal(err)
		}
		b, err := lab.AddNS("b")
		if err != nil {
			t.Fatal(err)
		}
		mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
		v, err := lab.Veth(a, "eth0", b, "eth0", VethOpts{MACA: mac})
		if err != nil {
			t.Fatal(err)
		}
		if v.A.MAC.String() != mac.String() || v.A.Index == 0 || v.B.Index == 0 || v.B.NS != b {
			t.Errorf("veth %+v", v)
		}
		if _, err := lab.AddNS("a"); err == nil {
			t.Error("a second namespace a in one lab")
		}
		if _, err := lab.Veth(a, "eth0", b, "eth1", VethOpts{}); err == nil {
			t.Error("a second eth0 in one namespace")
		}
	}
}

// waitLinks waits until the namespace h holds exactly the links want.
func waitLinks(t *testing.T, h *netlink.Handle, what string, want []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		links, err := h.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		slices.Sort(names)
		if slices.Equal(names, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("links in %s after 10 s: %q, want %q", what, names, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdNS opens ns by path and a netlink handle inside it, both closed at
// the end of the test: the namespace outlives its lab while held.
func holdNS(t *testing.T, ns *NS) *netlink.Handle {
	t.Helper()
	held, err := netns.GetFromPath(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	var h *netlink.Handle
	if err := inNetns(held, func() (err error) { h, err = netlink.NewHandle(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// A process started with `ip netns exec` gets a copy of the mount table,
// with the bind mounts of every namespace that exists at that moment. If
// that copy kept them, the namespaces, with their links, would live as long
// as the process. The kernel detaches the copies when the file they are
// mounted on is removed (Linux >= 3.18), even where NetnsDir is a private
// mount, as it is here; this checks that closing a lab destroys its
// namespaces while such a process runs.
func TestNetnsExecDoesNotPinNamespaces(t *testing.T) {
	t.Parallel()
	victim, err := New(t, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	y, err := victim.AddNS("y")
	if err != nil {
		t.Fatal(err)
	}
	z, err := victim.AddNS("z")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Veth(y, "yz", z, "zy", VethOpts{}); err != nil {
		t.Fatal(err)
	}
	other, err := New(t, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	x, err := other.AddNS("x")
	if err != nil {
		t.Fatal(err)
	}
	sleeper := x.Command(context.Background(), "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	// Wait until the sleeper has made its copy of the mount table: its
	// mount namespace differs from ours once `ip` has unshared it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mine, _ := os.Readlink("/proc/self/ns/mnt")
		its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", sleeper.Process.Pid))
		if err == nil && its != mine {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ip netns exec did not unshare its mount namespace")
		}
		time.Sleep(5 * time.Millisecond)
	}
	hz := holdNS(t, z)
	if err := victim.Close(); err != nil {
		t.Fatal(err)
	}
	// y is destroyed, so the veth yz–zy goes, and z is left with lo.
	waitLinks(t, hz, "held namespace z", []string{"lo"})
}
