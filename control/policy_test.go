package control

// Each hijack the original allowed, tried against the server and refused.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/sockdiag"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

func TestKeysOverlap(t *testing.T) {
	lo := l4.MustParseAddr(localIP)
	r1, r2 := l4.MustParseAddr("198.18.1.2"), l4.MustParseAddr("198.18.1.3")
	listen := l4.ListenKey(lo, l4.ProtoTCP, 80)
	fromR1 := l4.Key{Local: lo, LocalPort: 80, Remote: r1, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote}
	fromR2 := l4.Key{Local: lo, LocalPort: 80, Remote: r2, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote}
	flow1 := l4.FlowKey(lo, 80, r1, 5000, l4.ProtoTCP)
	flow2 := l4.FlowKey(lo, 80, r1, 5001, l4.ProtoTCP)
	icmp := l4.ListenKey(lo, l4.ProtoICMP, 0)
	icmpR1 := l4.FlowKey(lo, 0, r1, 0, l4.ProtoICMP)
	for _, c := range []struct {
		a, b l4.Key
		want bool
	}{
		{listen, listen, true},
		{listen, fromR1, true},
		{listen, flow1, true},
		{fromR1, flow1, true},
		{fromR1, fromR2, false},
		{flow1, flow2, false},
		{flow1, flow1, true},
		{listen, l4.ListenKey(lo, l4.ProtoTCP, 81), false},
		{listen, l4.ListenKey(lo, l4.ProtoUDP, 80), false},
		{listen, l4.ListenKey(l4.MustParseAddr("198.18.0.2"), l4.ProtoTCP, 80), false},
		{icmp, icmpR1, true},
		{icmp, listen, false},
	} {
		if got := keysOverlap(c.a, c.b); got != c.want {
			t.Errorf("keysOverlap(%v, %v) = %v", c.a, c.b, got)
		}
		if got := keysOverlap(c.b, c.a); got != c.want {
			t.Errorf("keysOverlap(%v, %v) = %v (reversed)", c.b, c.a, got)
		}
	}
}

func TestSocketOverlaps(t *testing.T) {
	ap := netip.MustParseAddrPort
	lo := l4.MustParseAddr(localIP)
	listen := l4.ListenKey(lo, l4.ProtoTCP, 5432)
	fromR := l4.Key{Local: lo, LocalPort: 5432, Remote: l4.MustParseAddr("198.18.1.2"), Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote}
	flow := l4.FlowKey(lo, 5432, l4.MustParseAddr("198.18.1.2"), 443, l4.ProtoTCP)
	otherFlow := l4.FlowKey(lo, 5432, l4.MustParseAddr("198.18.1.3"), 443, l4.ProtoTCP)
	v6 := l4.ListenKey(l4.MustParseAddr("2001:db8::1"), l4.ProtoTCP, 5432)
	sock := func(local, remote string) sockdiag.Socket {
		return sockdiag.Socket{Proto: sockdiag.ProtoTCP, Local: ap(local), Remote: ap(remote)}
	}
	for _, c := range []struct {
		s    sockdiag.Socket
		k    l4.Key
		want bool
	}{
		{sock("0.0.0.0:5432", "0.0.0.0:0"), listen, true},
		{sock("0.0.0.0:5432", "0.0.0.0:0"), flow, true},
		{sock("0.0.0.0:5432", "0.0.0.0:0"), v6, false}, // 0.0.0.0 is IPv4 only
		{sock("[::]:5432", "[::]:0"), listen, true},    // dual-stack
		{sock("[::]:5432", "[::]:0"), v6, true},
		{sock("198.18.0.1:5432", "0.0.0.0:0"), listen, true},
		{sock("198.18.0.2:5432", "0.0.0.0:0"), listen, false},
		{sock("127.0.0.1:5432", "0.0.0.0:0"), listen, false},
		{sock("0.0.0.0:5433", "0.0.0.0:0"), listen, false},
		{sock("198.18.0.1:5432", "198.18.1.2:443"), listen, true},
		{sock("198.18.0.1:5432", "198.18.1.2:443"), fromR, true},
		{sock("198.18.0.1:5432", "198.18.1.2:443"), flow, true},
		{sock("198.18.0.1:5432", "198.18.1.2:443"), otherFlow, false},
		{sock("198.18.0.1:5432", "198.18.1.2:444"), flow, false},
		{sockdiag.Socket{Proto: sockdiag.ProtoUDP, Local: ap("0.0.0.0:5432"), Remote: ap("0.0.0.0:0")}, listen, false},
	} {
		if got := socketOverlaps(c.s, c.k); got != c.want {
			t.Errorf("socketOverlaps(%v, %v) = %v", c.s, c.k, got)
		}
	}
}

// TestHijackOtherEndpoint: a client cannot take, narrow or shadow a rule
// another client holds, nor remove it.
func TestHijackOtherEndpoint(t *testing.T) {
	e := newEnv(t)
	a := newRawClient(t, e.path, e.dir)
	b := newRawClient(t, e.path, e.dir)
	a.requestUDS("eth0", os.Getpid())
	b.requestUDS("eth0", os.Getpid())
	mustOK := func(c *rawClient, m string) {
		t.Helper()
		if got := c.ask(m); got != "OK" {
			t.Fatalf("%s: %q, want OK", m, got)
		}
	}
	mustER := func(c *rawClient, m string) {
		t.Helper()
		if got := c.ask(m); got != "ER" {
			t.Errorf("%s: %q, want ER", m, got)
		}
	}
	mustOK(a, matchJSON("AddMatch", localIP, 8080, "", -1, 6))
	mustOK(a, matchJSON("AddMatch", localIP, 9090, "198.18.1.2", 5000, 6))

	mustER(b, matchJSON("AddMatch", localIP, 8080, "", -1, 6))           // the same
	mustER(b, matchJSON("AddMatch", localIP, 8080, "198.18.1.2", -1, 6)) // narrower: takes a's traffic from one remote
	mustER(b, matchJSON("AddMatch", localIP, 8080, "198.18.1.2", 4000, 6))
	mustER(b, matchJSON("AddMatch", localIP, 9090, "", -1, 6))           // wider than a's connected rule
	mustER(b, matchJSON("AddMatch", localIP, 9090, "198.18.1.2", -1, 6)) // still covers a's flow
	mustOK(b, matchJSON("AddMatch", localIP, 9090, "198.18.1.3", -1, 6)) // another remote: no frame matches both
	mustOK(b, matchJSON("AddMatch", localIP, 8081, "", -1, 6))
	mustOK(b, matchJSON("AddMatch", localIP, 8080, "", -1, 17)) // UDP 8080 is not TCP 8080
	// a may narrow its own rule.
	mustOK(a, matchJSON("AddMatch", localIP, 8080, "198.18.1.9", -1, 6))

	// b cannot remove a's rule.
	b.send(matchJSON("RemoveMatch", localIP, 8080, "", -1, 6))
	b.ask(`"QueryStatus"`) // sync
	if _, ok := e.sw.Table.Get(l4.ListenKey(l4.MustParseAddr(localIP), l4.ProtoTCP, 8080)); !ok {
		t.Error("b removed a's rule")
	}
	// a can.
	a.send(matchJSON("RemoveMatch", localIP, 8080, "", -1, 6))
	a.ask(`"QueryStatus"`)
	if _, ok := e.sw.Table.Get(l4.ListenKey(l4.MustParseAddr(localIP), l4.ProtoTCP, 8080)); ok {
		t.Error("a could not remove its own rule")
	}
}

// TestHijackKernel: the kernel's DEBUG_PORTS rule and its sockets are off
// limits.
func TestHijackKernel(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	c.requestUDS("eth0", os.Getpid())
	ap := netip.MustParseAddrPort
	e.setKernelSockets(
		sockdiag.Socket{Proto: sockdiag.ProtoTCP, Local: ap("0.0.0.0:5432"), Remote: ap("0.0.0.0:0"), State: sockdiag.TCPListen},
		sockdiag.Socket{Proto: sockdiag.ProtoUDP, Local: ap("[::]:5353"), Remote: ap("[::]:0"), State: sockdiag.TCPClose},
		sockdiag.Socket{Proto: sockdiag.ProtoTCP, Local: ap("198.18.0.1:40000"), Remote: ap("198.18.1.2:443"), State: sockdiag.TCPEstablished},
		sockdiag.Socket{Proto: sockdiag.ProtoTCP, Local: ap("127.0.0.1:6000"), Remote: ap("0.0.0.0:0"), State: sockdiag.TCPListen},
	)
	for _, c2 := range []struct {
		m    string
		want string
	}{
		{matchJSON("AddMatch", localIP, 22, "", -1, 6), "ER"},              // DEBUG_PORTS
		{matchJSON("AddMatch", localIP, 22, "198.18.1.2", 50000, 6), "ER"}, // narrower than DEBUG_PORTS
		{matchJSON("AddMatch", localIP, 5432, "", -1, 6), "ER"},            // kernel listens on 0.0.0.0
		{matchJSON("AddMatch", localIP, 5353, "", -1, 17), "ER"},           // kernel's dual-stack ::
		{matchJSON("AddMatch", localIP, 40000, "", -1, 6), "ER"},           // the kernel's connection
		{matchJSON("AddMatch", localIP, 40000, "198.18.1.2", 443, 6), "ER"},
		{matchJSON("AddMatch", localIP, 40000, "198.18.1.3", -1, 6), "OK"}, // another remote
		{matchJSON("AddMatch", localIP, 6000, "", -1, 6), "OK"},            // the kernel's loopback socket is not in the way
		{matchJSON("AddMatch", localIP, 5432, "", -1, 17), "OK"},
	} {
		if got := c.ask(c2.m); got != c2.want {
			t.Errorf("%s: %q, want %s", c2.m, got, c2.want)
		}
	}
	// An inventory that cannot be read: refuse, not guess.
	err := fmt.Errorf("no /proc")
	e.invErr.Store(&err)
	if got := c.ask(matchJSON("AddMatch", localIP, 7777, "", -1, 6)); got != "ER" {
		t.Errorf("AddMatch without an inventory: %q, want ER", got)
	}
}

// TestHijackRealKernelSocket: the same with the real inventory (sock_diag)
// and real listening sockets: one that another process holds refuses the
// rule; one that the requesting process holds itself is its reservation
// (what the original's client library binds before AddMatch) and does not.
func TestHijackRealKernelSocket(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) { c.KernelPorts = nil })
	// Another process's socket: handed to a child, closed here.
	other, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	port := other.Addr().(*net.TCPAddr).Port
	holdInChild(t, other)
	c := newRawClient(t, e.path, e.dir)
	c.requestUDS("eth0", os.Getpid())
	if got := c.ask(matchJSON("AddMatch", localIP, port, "", -1, 6)); got != "ER" {
		t.Errorf("AddMatch of another process's listening port %d: %q, want ER", port, got)
	}
	if got := c.ask(matchJSON("AddMatch", localIP, port, "", -1, 17)); got != "OK" {
		t.Errorf("UDP on that port: %q, want OK", got)
	}
	// QueryUsedPorts lists the kernel's socket under the interface's address.
	want := fmt.Sprintf(`[6,{"Ipv4":"198.18.0.1"},%d]`, port)
	if got := c.ask(`"QueryUsedPorts"`); !strings.Contains(got, want) {
		t.Errorf("QueryUsedPorts lacks the kernel's socket %s: %s", want, got)
	}

	// The client's own reservations: TCP on the address, UDP on 0.0.0.0,
	// a connected UDP socket under a 5-tuple rule.
	own, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	oport := own.Addr().(*net.TCPAddr).Port
	if got := c.ask(matchJSON("AddMatch", localIP, oport, "", -1, 6)); got != "OK" {
		t.Errorf("AddMatch over the client's own reservation %d: %q, want OK", oport, got)
	}
	ou, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ou.Close()
	uport := ou.LocalAddr().(*net.UDPAddr).Port
	if got := c.ask(matchJSON("AddMatch", localIP, uport, "198.18.1.2", 53, 17)); got != "OK" {
		t.Errorf("5-tuple AddMatch over the client's own UDP socket %d: %q, want OK", uport, got)
	}
	// The same port once the socket is another process's: refused.
	c.send(matchJSON("RemoveMatch", localIP, oport, "", -1, 6))
	c.noAnswer(200*time.Millisecond, "RemoveMatch")
	holdInChild(t, own)
	if got := c.ask(matchJSON("AddMatch", localIP, oport, "", -1, 6)); got != "ER" {
		t.Errorf("AddMatch over a socket that moved to another process: %q, want ER", got)
	}
}

// holdInChild hands the listener's socket to a child process (sleep) and
// closes it here, so that only the child holds it, until the test ends.
func holdInChild(t *testing.T, ln net.Listener) {
	t.Helper()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "300")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ln.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
}

// TestHijackPrivilegedPort: an unprivileged client may not take a port
// below 1024, nor claim another process's PID; root may.
func TestHijackPrivilegedPort(t *testing.T) {
	name := fmt.Sprintf("@usnetd-test-priv-%d", os.Getpid())
	e := newEnv(t, func(c *ServerConfig) { c.SocketPath, c.AllowGID, c.HasAllowGID = name, nobody, true })
	h := startHelper(t, "privports", e.path, true)
	got := h.readUntil("")
	want := map[string]string{"uds": "$", "port80": "ER", "port8080": "OK", "parentpid": "ER"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("unprivileged helper: %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if st := e.srv.Status(); len(st.Endpoints) > 0 && st.Endpoints[0].UID != nobody {
		t.Errorf("endpoint uid %d, want %d", st.Endpoints[0].UID, nobody)
	}
	// Root may.
	c := newRawClient(t, e.path, "")
	c.requestUDS("eth0", os.Getpid())
	if got := c.ask(matchJSON("AddMatch", localIP, 80, "", -1, 6)); got != "OK" {
		t.Errorf("root, port 80: %q, want OK", got)
	}
}

// TestAccessDenied: on an abstract socket (no file mode to guard it) a
// user outside ALLOW_GID is refused by the server itself.
func TestAccessDenied(t *testing.T) {
	name := fmt.Sprintf("@usnetd-test-acl-%d", os.Getpid())
	e := newEnv(t, func(c *ServerConfig) { c.SocketPath = name })
	h := startHelper(t, "query", e.path, true)
	if got := h.readUntil("")["status"]; got != "ER" {
		t.Errorf("QueryStatus from a user outside ALLOW_GID: %q, want ER", got)
	}
	if !strings.Contains(e.logs.String(), "access denied") {
		t.Error("no warning about the denied access")
	}
}

// TestHijackBySpoofedFrame: an endpoint that sends a forged frame from
// another endpoint's port (or flow) on its channel gets it dropped as a
// spoof; it never reaches the NIC and no rule is learned for it.
func TestHijackBySpoofedFrame(t *testing.T) {
	e := newEnv(t)
	a := newRawClient(t, e.path, e.dir)
	b := newRawClient(t, e.path, e.dir)
	chA := a.requestUDS("eth0", os.Getpid())
	chB := b.requestUDS("eth0", os.Getpid())
	if got := a.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6)); got != "OK" {
		t.Fatal(got)
	}
	// a opens a flow of its own: 198.18.0.1:50000 -> 198.18.1.2:443.
	if _, err := chA.Write(tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 50000, 443)); err != nil {
		t.Fatal(err)
	}
	if !e.nic.WaitSent(1, 2*time.Second) {
		t.Fatal("a's frame did not go out")
	}
	rulesBefore := e.rules()

	// b forges frames from a's listening port and from a's flow, and one
	// from the kernel's DEBUG_PORTS port.
	for _, f := range [][]byte{
		tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.7", 8080, 40000),
		tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 50000, 443),
		tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.7", 22, 40001),
	} {
		if _, err := chB.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	bPort := e.srv.Status().Endpoints[1]
	spoofs := func() uint64 {
		for _, p := range e.pl.Stats().Ports {
			if p.Name == fmt.Sprintf("endpoint %d (pid %d)", bPort.ID, os.Getpid()) {
				return p.Drops[l4.DropSpoof]
			}
		}
		return 0
	}
	testkit.Eventually(t, 2*time.Second, "3 spoof drops counted on b's port", func() bool { return spoofs() == 3 })
	if n := e.nic.SentCount(); n != 1 {
		t.Errorf("the NIC sent %d frames, want only a's 1", n)
	}
	if got := e.rules(); !slices.Equal(got, rulesBefore) {
		t.Errorf("rules changed by the forged frames:\n got %v\nwant %v", got, rulesBefore)
	}
	// Replies still reach a.
	e.nic.Inject(0, tcpFrame(t, macRemote, macNIC, "198.18.1.2", localIP, 443, 50000))
	if _, ok := readFrame(t, chA, 2*time.Second); !ok {
		t.Error("a's reply did not reach a")
	}
	if _, ok := readFrame(t, chB, 100*time.Millisecond); ok {
		t.Error("b got a frame")
	}
}

// TestAddMatchLocalAddressOnly: an endpoint may register rules only for
// the interface's addresses and those granted (ENDPOINT_ADDRS); any other
// local address (one that is not the host's, e.g. a remote service's)
// answers ER, is logged and counted. Interface.Addrs is read at each
// AddMatch, under the server's lock.
func TestAddMatchLocalAddressOnly(t *testing.T) {
	e := newEnv(t, func(c *ServerConfig) { c.Interfaces[0].Granted = []netip.Addr{ip("198.18.0.9")} })
	a := newRawClient(t, e.path, e.dir)
	a.requestUDS("eth0", os.Getpid())
	if got := a.ask(matchJSON("AddMatch", "203.0.113.7", 8443, "", -1, 6)); got != "ER" {
		t.Errorf("AddMatch for a foreign address: %q, want ER", got)
	}
	if got := a.ask(matchJSON("AddMatch", "198.18.1.2", 8443, "", -1, 17)); got != "ER" {
		t.Errorf("AddMatch for the peer's address: %q, want ER", got)
	}
	if n := e.srv.Refused()["address"]; n != 2 {
		t.Errorf("refused (address) = %d, want 2", n)
	}
	if !strings.Contains(e.logs.String(), "not one of the interface's") {
		t.Error("no warning about the refused address")
	}
	// The interface's address and a granted one work.
	if got := a.ask(matchJSON("AddMatch", localIP, 8443, "", -1, 6)); got != "OK" {
		t.Errorf("AddMatch for the interface's address: %q, want OK", got)
	}
	if got := a.ask(matchJSON("AddMatch", "198.18.0.9", 8443, "", -1, 6)); got != "OK" {
		t.Errorf("AddMatch for a granted address: %q, want OK", got)
	}
	// An address the interface gains later (address following updates
	// Addrs under the server's lock) is taken from then on.
	e.srv.mu.Lock()
	e.srv.ifaces["eth0"].Addrs = append(e.srv.ifaces["eth0"].Addrs, ip("198.18.0.5"))
	e.srv.mu.Unlock()
	if got := a.ask(matchJSON("AddMatch", "198.18.0.5", 8443, "", -1, 6)); got != "OK" {
		t.Errorf("AddMatch for an address added later: %q, want OK", got)
	}
	if n := e.srv.Refused()["address"]; n != 2 {
		t.Errorf("refused (address) = %d, want still 2", n)
	}
}

// TestChannelPolicyPrivilegedSource: the channel's policy comes from the
// attaching process: root may send from a privileged source port; the
// frame leaves.
func TestChannelPolicyPrivilegedSource(t *testing.T) {
	e := newEnv(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test process attaches as root to get CAP_NET_BIND_SERVICE")
	}
	a := newRawClient(t, e.path, e.dir)
	ch := a.requestUDS("eth0", os.Getpid())
	if _, err := ch.Write(tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 700, 2049)); err != nil {
		t.Fatal(err)
	}
	if !e.nic.WaitSent(1, 2*time.Second) {
		t.Fatalf("root's frame from port 700 did not leave; drops %v", e.pl.Stats().Drops)
	}
}

// TestChannelPolicyUnprivileged: a client without uid 0 or
// CAP_NET_BIND_SERVICE gets a channel whose frames from a privileged
// source port are dropped (src_port_privileged) and never leave; its
// frames from an unprivileged port, and from its registered port, do.
func TestChannelPolicyUnprivileged(t *testing.T) {
	netlab.Require(t)
	name := fmt.Sprintf("@usnetd-test-polpriv-%d", os.Getpid())
	e := newEnv(t, func(c *ServerConfig) { c.SocketPath, c.AllowGID, c.HasAllowGID = name, nobody, true })
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	carrier := os.NewFile(uintptr(pair[1]), "carrier")
	h := startHelper(t, "handover", e.path, true, carrier)
	carrier.Close()
	if got := h.readUntil(helperHello); got["uds"] != "$" || got["match"] != "OK" {
		t.Fatalf("helper: %v", got)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(pair[0], make([]byte, 1), oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
	fds, err := unix.ParseUnixRights(&cms[0])
	if err != nil || len(fds) != 1 {
		t.Fatal(fds, err)
	}
	ch := os.NewFile(uintptr(fds[0]), "channel")
	defer ch.Close()
	// The attack: NFS trusts source ports below 1024.
	if _, err := ch.Write(tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 700, 2049)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "a src_port_privileged drop", func() bool { return e.pl.Stats().Drops[l4.DropSrcPortPrivileged] == 1 })
	// The legitimate frames: from an ephemeral port, from its registered port 7000.
	for _, f := range [][]byte{
		tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 40000, 2049),
		tcpFrame(t, macNIC, macRemote, localIP, "198.18.1.2", 7000, 41000),
	} {
		if _, err := ch.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	if !e.nic.WaitSent(2, 2*time.Second) || e.nic.SentCount() != 2 {
		t.Fatalf("the NIC sent %d frames, want the 2 legitimate ones", e.nic.SentCount())
	}
	// No rule was learned for port 700: its reply would not reach the client.
	for _, r := range e.rules() {
		if r.LocalPort == 700 {
			t.Errorf("learned %v", r)
		}
	}
}

// TestConnectRuleRealKernelConnection: an AddMatch for one TCP connection
// (a full 5-tuple, what a connect registers) is checked against the
// kernel's listeners on its local port and the kernel's socket of exactly
// that address pair (sockdiag.TCPFlow, a lookup rather than a dump of
// every connection): another process's connection with the same pair and
// another process's listener on the port refuse it; the same local port
// towards another remote is accepted next to them.
func TestConnectRuleRealKernelConnection(t *testing.T) {
	lab, err := netlab.New(t, "uctl")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := lab.AddNS("k")
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.SetUp("lo"); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddAddr("lo", netip.PrefixFrom(testkit.NICAddr, 32)); err != nil {
		t.Fatal(err)
	}
	var (
		e            *env
		ln           net.Listener
		conn         *net.TCPConn
		lport, cport int
		listenerPort int
	)
	// The server's sock_diag socket, the kernel's listener and connection:
	// all in the lab's namespace.
	if err := ns.Do(func() error {
		e = newEnv(t, func(c *ServerConfig) { c.KernelPorts = nil })
		var err error
		if ln, err = net.Listen("tcp4", localIP+":0"); err != nil {
			return err
		}
		listenerPort = ln.Addr().(*net.TCPAddr).Port
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return err
		}
		conn = c.(*net.TCPConn)
		cport = conn.LocalAddr().(*net.TCPAddr).Port
		lport = listenerPort
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Both held by another process only.
	f, err := conn.File()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "300")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	conn.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	holdInChild(t, ln)

	c := newRawClient(t, e.path, e.dir)
	c.requestUDS("eth0", os.Getpid())
	// The kernel's connection localIP:cport -> localIP:lport, as a rule.
	if got := c.ask(matchJSON("AddMatch", localIP, cport, localIP, lport, 6)); got != "ER" {
		t.Errorf("AddMatch of another process's connection %d -> %d: %q, want ER", cport, lport, got)
	}
	// The listener's port, towards some remote: the listener refuses.
	if got := c.ask(matchJSON("AddMatch", localIP, listenerPort, "198.18.1.2", 4000, 6)); got != "ER" {
		t.Errorf("AddMatch of a connection on another process's listening port %d: %q, want ER", listenerPort, got)
	}
	// The connection's local port towards another remote: free.
	if got := c.ask(matchJSON("AddMatch", localIP, cport, "198.18.1.2", 4000, 6)); got != "OK" {
		t.Errorf("AddMatch on the connection's local port %d towards another remote: %q, want OK", cport, got)
	}
}
