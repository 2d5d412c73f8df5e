package sockdiag

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// inodeOf returns the socket inode of a net.Conn or net.Listener.
func inodeOf(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return st.Ino
}

// TestSocketsLive opens real sockets (TCP listener, connected pair, UDP
// unconnected and connected, IPv6 where there is IPv6) and finds each in
// the dump with its addresses, state, inode and owner.
func TestSocketsLive(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	uc, err := net.DialUDP("udp4", nil, u.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	type want struct {
		name          string
		proto         uint8
		local, remote string
		state         uint8
		inode         uint64
	}
	ws := []want{
		{"tcp listener", ProtoTCP, ln.Addr().String(), "0.0.0.0:0", TCPListen, inodeOf(t, ln)},
		{"tcp client", ProtoTCP, c.LocalAddr().String(), c.RemoteAddr().String(), TCPEstablished, inodeOf(t, c)},
		{"tcp accepted", ProtoTCP, a.LocalAddr().String(), a.RemoteAddr().String(), TCPEstablished, inodeOf(t, a)},
		{"udp bound", ProtoUDP, u.LocalAddr().String(), "0.0.0.0:0", TCPClose, inodeOf(t, u)},
		{"udp connected", ProtoUDP, uc.LocalAddr().String(), uc.RemoteAddr().String(), TCPEstablished, inodeOf(t, uc)},
	}
	if l6, err := net.ListenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback}); err == nil {
		defer l6.Close()
		ws = append(ws, want{"tcp6 listener", ProtoTCP, l6.Addr().String(), "[::]:0", TCPListen, inodeOf(t, l6)})
	}
	ss, err := Sockets()
	if err != nil {
		t.Fatal(err)
	}
	uid := uint32(os.Geteuid())
	for _, w := range ws {
		i := slices.IndexFunc(ss, func(s Socket) bool { return s.Inode == w.inode })
		if i < 0 {
			t.Errorf("%s: inode %d not in the dump of %d sockets", w.name, w.inode, len(ss))
			continue
		}
		s := ss[i]
		if s.Proto != w.proto || s.Local.String() != w.local || s.Remote.String() != w.remote || s.State != w.state || s.UID != uid {
			t.Errorf("%s: got %+v, want proto %d %s <- %s state %d uid %d", w.name, s, w.proto, w.local, w.remote, w.state, uid)
		}
		if (w.state == TCPListen || w.name == "udp bound") != s.Listening() {
			t.Errorf("%s: Listening() = %v", w.name, s.Listening())
		}
	}

	// The kernel-side port filter: the listener's port gives the listener
	// and the accepted socket, nothing else.
	cn, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	on, err := cn.SocketsOnPort(ProtoTCP, port)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, s := range on {
		if s.Local.Port() != port || s.Proto != ProtoTCP {
			t.Errorf("SocketsOnPort(%d) returned %v", port, s)
		}
		got = append(got, s.Inode)
	}
	for _, w := range []uint64{ws[0].inode, ws[2].inode} {
		if !slices.Contains(got, w) {
			t.Errorf("SocketsOnPort(%d) = %v lacks inode %d", port, on, w)
		}
	}
	if slices.Contains(got, ws[1].inode) {
		t.Errorf("SocketsOnPort(%d) has the client's socket (another local port)", port)
	}
	uport := uint16(u.LocalAddr().(*net.UDPAddr).Port)
	on, err = cn.SocketsOnPort(ProtoUDP, uport)
	if err != nil || len(on) != 1 || on[0].Inode != ws[3].inode {
		t.Errorf("SocketsOnPort(udp %d) = %v, %v; want the bound socket only", uport, on, err)
	}
	cn.Close()
	if _, err := cn.Sockets(); !errors.Is(err, ErrClosed) {
		t.Errorf("Sockets after Close: %v, want ErrClosed", err)
	}
}

// msg builds one netlink message.
func msg(typ, flags uint16, seq uint32, body []byte) []byte {
	n := nlmsgHdrLen + len(body)
	b := make([]byte, (n+3)&^3)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(n))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], seq)
	copy(b[nlmsgHdrLen:], body)
	return b
}

// diagMsg builds struct inet_diag_msg.
func diagMsg(fam uint8, local, remote netip.AddrPort, state uint8, uid, inode uint32) []byte {
	b := make([]byte, diagMsgLen+8) // an attribute's worth of tail, ignored
	b[0], b[1] = fam, state
	binary.BigEndian.PutUint16(b[4:], local.Port())
	binary.BigEndian.PutUint16(b[6:], remote.Port())
	l, r := local.Addr().As16(), remote.Addr().As16()
	if fam == unix.AF_INET {
		l4, r4 := local.Addr().As4(), remote.Addr().As4()
		copy(b[8:], l4[:])
		copy(b[24:], r4[:])
	} else {
		copy(b[8:], l[:])
		copy(b[24:], r[:])
	}
	binary.NativeEndian.PutUint32(b[64:], uid)
	binary.NativeEndian.PutUint32(b[68:], inode)
	return b
}

func errMsg(seq uint32, errno int32) []byte {
	b := make([]byte, 20)
	binary.NativeEndian.PutUint32(b, uint32(errno))
	return msg(unix.NLMSG_ERROR, 0, seq, b)
}

func TestParseDump(t *testing.T) {
	ap := netip.MustParseAddrPort
	a := diagMsg(unix.AF_INET, ap("198.18.0.1:22"), ap("0.0.0.0:0"), TCPListen, 0, 651)
	b := diagMsg(unix.AF_INET6, ap("[::ffff:198.18.0.1]:443"), ap("[2001:db8::2]:5000"), TCPEstablished, 1000, 99)
	in := slices.Concat(msg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI, 7, a),
		msg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI, 8, a), // another request's: skipped
		msg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI, 7, b))
	ss, done, err := ParseDump(in, 7, ProtoTCP, nil)
	want := []Socket{
		{Proto: ProtoTCP, Local: ap("198.18.0.1:22"), Remote: ap("0.0.0.0:0"), State: TCPListen, Inode: 651},
		{Proto: ProtoTCP, Local: ap("198.18.0.1:443"), Remote: ap("[2001:db8::2]:5000"), State: TCPEstablished, UID: 1000, Inode: 99},
	}
	if err != nil || done || !slices.Equal(ss, want) {
		t.Fatalf("ParseDump = %v, %v, %v; want %v", ss, done, err, want)
	}
	if s := ss[1].String(); s != "tcp 198.18.0.1:443 <- [2001:db8::2]:5000" {
		t.Errorf("String() = %q", s)
	}
	if _, done, err := ParseDump(msg(unix.NLMSG_DONE, 0, 7, make([]byte, 4)), 7, ProtoTCP, nil); !done || err != nil {
		t.Errorf("DONE: %v %v", done, err)
	}
	if _, done, err := ParseDump(errMsg(7, -int32(unix.ENOENT)), 7, ProtoTCP, nil); !done || !errors.Is(err, unix.ENOENT) {
		t.Errorf("error message: %v %v, want ENOENT", done, err)
	}
	ss, _, err = ParseDump(msg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI|nlmFDumpIntr, 7, a), 7, ProtoTCP, nil)
	if !errors.Is(err, ErrInterrupted) || len(ss) != 1 {
		t.Errorf("DUMP_INTR: %v %v", ss, err)
	}
	for name, in := range map[string][]byte{
		"short header":   make([]byte, 10),
		"length too big": msg(unix.SOCK_DIAG_BY_FAMILY, 0, 7, a)[:40],
		"length too small": func() []byte {
			m := msg(unix.SOCK_DIAG_BY_FAMILY, 0, 7, a)
			binary.NativeEndian.PutUint32(m, 3)
			return m
		}(),
		"short diag msg": msg(unix.SOCK_DIAG_BY_FAMILY, 0, 7, a[:40]),
		"bad family":     msg(unix.SOCK_DIAG_BY_FAMILY, 0, 7, diagMsg(99, ap("1.2.3.4:1"), ap("1.2.3.4:1"), 1, 0, 0)),
		"short error":    msg(unix.NLMSG_ERROR, 0, 7, []byte{1}),
		"positive error": errMsg(7, 5),
	} {
		if _, _, err := ParseDump(in, 7, ProtoTCP, nil); !errors.Is(err, ErrMessage) {
			t.Errorf("%s: err = %v, want ErrMessage", name, err)
		}
	}
}

// The port filter passes the kernel's audit and the request has the
// layout of struct inet_diag_req_v2 with one attribute.
func TestRequestLayout(t *testing.T) {
	r := request(5, unix.AF_INET6, ProtoUDP, portFilter(53))
	if len(r) != nlmsgHdrLen+reqV2Len+4+16 || binary.NativeEndian.Uint32(r) != uint32(len(r)) {
		t.Fatalf("request of %d bytes", len(r))
	}
	if r[16] != unix.AF_INET6 || r[17] != ProtoUDP || binary.NativeEndian.Uint32(r[20:]) != allStates {
		t.Errorf("inet_diag_req_v2 = % x", r[16:16+reqV2Len])
	}
}

// BenchmarkSocketsOnPort is the dump the control server makes for every
// AddMatch (one protocol and port, IPv4 and IPv6), against a full dump.
func BenchmarkSocketsOnPort(b *testing.B) {
	c, err := Open()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.Run("on-port", func(b *testing.B) {
		for range b.N {
			if _, err := c.SocketsOnPort(ProtoTCP, 20001); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("all", func(b *testing.B) {
		n := 0
		for range b.N {
			ss, err := c.Sockets()
			if err != nil {
				b.Fatal(err)
			}
			n = len(ss)
		}
		b.ReportMetric(float64(n), "sockets")
	})
}

// TestTCPFlow: the sockets a rule for one connection collides with are
// the listeners on its local port and the socket of exactly its address
// pair; another connection on the same local port is not among them, and
// a client-side connection is found by its own pair.
func TestTCPFlow(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var clients, accepted []*net.TCPConn
	for range 2 {
		c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		a, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		clients, accepted = append(clients, c), append(accepted, a)
	}
	cn, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	ap := func(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }
	inodes := func(ss []Socket) []uint64 {
		var out []uint64
		for _, s := range ss {
			out = append(out, s.Inode)
		}
		slices.Sort(out)
		return out
	}
	sorted := func(v ...uint64) []uint64 { slices.Sort(v); return v }

	// The server side of the first connection: the listener and that
	// accepted socket, not the second accepted one (same local port).
	got, err := cn.TCPFlow(ap(accepted[0].LocalAddr()), ap(accepted[0].RemoteAddr()))
	if want := sorted(inodeOf(t, ln), inodeOf(t, accepted[0])); err != nil || !slices.Equal(inodes(got), want) {
		t.Errorf("TCPFlow(server side) = %v, %v; want inodes %v", got, err, want)
	}
	// The client side: that client socket, no listener on its port.
	got, err = cn.TCPFlow(ap(clients[1].LocalAddr()), ap(clients[1].RemoteAddr()))
	if want := sorted(inodeOf(t, clients[1])); err != nil || !slices.Equal(inodes(got), want) {
		t.Errorf("TCPFlow(client side) = %v, %v; want inodes %v", got, err, want)
	}
	// A pair nobody has, on the listener's port: the listener only.
	other := netip.MustParseAddrPort("127.0.0.1:9")
	got, err = cn.TCPFlow(ap(ln.Addr()), other)
	if want := sorted(inodeOf(t, ln)); err != nil || !slices.Equal(inodes(got), want) {
		t.Errorf("TCPFlow(listener port, unknown remote) = %v, %v; want inodes %v", got, err, want)
	}
	// A pair on a port nobody has: nothing.
	got, err = cn.TCPFlow(netip.MustParseAddrPort("127.0.0.1:1"), other)
	if err != nil || len(got) != 0 {
		t.Errorf("TCPFlow(free port) = %v, %v; want nothing", got, err)
	}
}

func BenchmarkTCPFlow(b *testing.B) {
	c, err := Open()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	local, remote := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.1.2:80")
	b.Run("TCPFlow", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.TCPFlow(local, remote); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SocketsOnPort", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.SocketsOnPort(ProtoTCP, local.Port()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
