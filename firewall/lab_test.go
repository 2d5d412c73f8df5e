package firewall

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"

	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// Namespace tests: a "host" namespace whose veth end carries the firewall
// and a "peer" namespace on the other end, with real kernel sockets on
// both sides. The XSKMAP stays empty, so whatever the kernel may not see
// is dropped.

// hang is how long a connection attempt that the firewall drops is given:
// a hang detector, not a measurement.
const hang = 300 * time.Millisecond

type fwLab struct {
	lab        *netlab.Lab
	host, peer *netlab.NS
	ifname     string     // the host's veth end, named after the lab so pin directories never collide
	h4, p4, o4 netip.Addr // host .1; peer .2 and .3
	h6, p6, o6 netip.Addr // the same in IPv6
	all        map[string][3]netip.Addr
	hostMAC    net.HardwareAddr // of the host's veth end
	peerIndex  int              // ifindex of the peer's veth end
}

func newLab(t *testing.T) *fwLab {
	t.Helper()
	return newLabVeth(t, netlab.VethOpts{Up: true})
}

// newLabVeth is newLab with the veth pair made with opts.
func newLabVeth(t *testing.T, opts netlab.VethOpts) *fwLab {
	t.Helper()
	p, err := netlab.NewPair(t, netlab.PairOpts{Veth: opts, IPv6: true, UniqueHostLink: true})
	if err != nil {
		t.Fatal(err)
	}
	l := &fwLab{lab: p.Lab, ifname: p.HostLink, host: p.Host, peer: p.Peer}
	l.hostMAC, l.peerIndex = p.Veth.A.MAC, p.Veth.B.Index
	l.h4, l.p4, l.h6, l.p6 = p.HostIP, p.PeerIP, p.HostIP6, p.PeerIP6
	for _, a := range []struct {
		p   netip.Prefix
		dst *netip.Addr
	}{{netlab.Host(p.Subnet, 3), &l.o4}, {netlab.Host(p.Subnet6, 3), &l.o6}} {
		if err := p.Peer.AddAddr("eth0", a.p); err != nil {
			t.Fatal(err)
		}
		*a.dst = a.p.Addr()
	}
	l.all = map[string][3]netip.Addr{"v4": {l.h4, l.p4, l.o4}, "v6": {l.h6, l.p6, l.o6}}
	// Runs after the firewalls' Close (cleanups run last-in first-out):
	// whatever a failed test left in the host's bpffs goes.
	t.Cleanup(func() {
		dir := filepath.Join(DefaultPinRoot, l.ifname)
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("%s left behind; removing it", dir)
			_ = os.RemoveAll(dir)
		}
		_ = os.Remove(DefaultPinRoot)
	})
	return l
}

func execCommand(ctx context.Context, self, arg string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, self, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+arg)
	return cmd
}

// runIn runs cmd inside ns (keeping the host's /sys/fs/bpf) and returns its
// output.
func runIn(ns *netlab.NS, cmd *exec.Cmd) ([]byte, error) {
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := ns.Start(cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	return buf.Bytes(), err
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
}

// attach attaches a firewall to the host's veth end, closed at cleanup.
func (l *fwLab) attach(t *testing.T, opts Options) *Firewall {
	t.Helper()
	fw, err := l.tryAttach(t, opts)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("attach: %+v", ve)
		}
		t.Fatalf("attach: %v", err)
	}
	t.Cleanup(func() {
		if err := fw.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return fw
}

func (l *fwLab) tryAttach(t *testing.T, opts Options) (*Firewall, error) {
	t.Helper()
	if opts.Interface == "" && opts.Ifindex == 0 {
		opts.Interface = l.ifname
	}
	opts.Log = testLogger(t)
	var fw *Firewall
	err := l.host.Do(func() (err error) {
		fw, err = Attach(opts)
		return err
	})
	return fw, err
}

// listen starts a kernel TCP echo server in ns on all addresses.
func listen(t *testing.T, ns *netlab.NS) uint16 {
	t.Helper()
	ln, err := ns.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go testkit.EchoAccepted(ln)
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// dial connects from ns (from the address from, if valid) to to:port.
func dial(ns *netlab.NS, from, to netip.Addr, port uint16, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if from.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
		}
		c, err = d.Dial("tcp", netip.AddrPortFrom(to, port).String())
		return err
	})
	return c, err
}

// echo checks that c carries data both ways.
func echo(t *testing.T, c net.Conn) {
	t.Helper()
	if err := testkit.EchoConn(c, []byte("usnetd firewall test"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
}

// reachable dials and echoes; it fails the test if that does not work.
func reachable(t *testing.T, ns *netlab.NS, from, to netip.Addr, port uint16) {
	t.Helper()
	c, err := dial(ns, from, to, port, 3*time.Second)
	if err != nil {
		t.Fatalf("dial %v -> %v port %d: %v", from, to, port, err)
	}
	defer c.Close()
	echo(t, c)
}

// unreachable checks that a dial gets no answer at all: neither SYN-ACK
// nor RST, so it times out.
func unreachable(t *testing.T, ns *netlab.NS, from, to netip.Addr, port uint16) {
	t.Helper()
	c, err := dial(ns, from, to, port, hang)
	if err == nil {
		c.Close()
		t.Fatalf("dial %v -> %v port %d connected; want no answer", from, to, port)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %v -> %v port %d: %v: the kernel answered with RST; want no answer", from, to, port, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial %v -> %v port %d: %v; want a timeout", from, to, port, err)
	}
}

// ping sends one ICMP(v6) echo request from ns (from the address from) to
// to over a raw socket and waits up to timeout for the reply.
func ping(ns *netlab.NS, from, to netip.Addr, timeout time.Duration) error {
	network, typ, reply := "ip4:icmp", byte(8), byte(0)
	if to.Is6() {
		network, typ, reply = "ip6:ipv6-icmp", 128, 129
	}
	pc, err := ns.ListenPacket(network, from.String())
	if err != nil {
		return err
	}
	defer pc.Close()
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	msg := []byte{typ, 0, 0, 0, idb[0], idb[1], 0, 1, 'u', 's', 'n', 'e', 't', 'd'}
	if to.Is4() {
		binary.BigEndian.PutUint16(msg[2:], inetChecksum(msg))
	} // the kernel fills in ICMPv6 checksums
	if _, err := pc.WriteTo(msg, &net.IPAddr{IP: to.AsSlice()}); err != nil {
		return err
	}
	_ = pc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, src, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		a, _ := netip.AddrFromSlice(src.(*net.IPAddr).IP)
		if n >= 8 && buf[0] == reply && buf[4] == idb[0] && buf[5] == idb[1] && a.Unmap() == to {
			return nil
		}
	}
}

func inetChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func counters(t *testing.T, fw *Firewall) map[string]uint64 {
	t.Helper()
	c, err := fw.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func entries(t *testing.T, fw *Firewall) []Entry {
	t.Helper()
	es, err := fw.KernelEntries()
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func findEntry(es []Entry, k l4.Key) (Entry, bool) {
	for _, e := range es {
		if e.Key == k {
			return e, true
		}
	}
	return Entry{}, false
}

func la(a netip.Addr) l4.Addr { return l4.AddrFromNetip(a) }

// The kernel sees the ports the operator opened, from the remotes it was
// opened to, its own connections, and nothing else; in both XDP modes, on
// the TC hook, and in both IP families.
func TestKernelFirewall(t *testing.T) {
	for _, mode := range []string{ModeNative, ModeGeneric, ModeTCX} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t)
			open := listen(t, l.host)   // allowed as a listening port (DEBUG_PORTS=IF:TCP:PORT)
			remote := listen(t, l.host) // allowed from the peer's first address only (IF:TCP:PORT:REMOTE)
			closed := listen(t, l.host) // a kernel listener the operator did not open
			var allowed []Allowed
			for _, fam := range l.all {
				h, p := fam[0], fam[1]
				allowed = append(allowed,
					Allowed{Key: l4.ListenKey(la(h), l4.ProtoTCP, open), Sticky: true},
					Allowed{Key: l4.Key{Local: la(h), Remote: la(p), LocalPort: remote, Proto: l4.ProtoTCP, Flags: l4.KeyLocalPort | l4.KeyRemote}, Sticky: true})
			}
			opts, dropped := Options{XDPMode: mode, Allow: allowed}, "dropped_no_xsk"
			if mode == ModeTCX {
				opts, dropped = Options{Hook: HookTC, Allow: allowed}, "tc_dropped"
			}
			fw := l.attach(t, opts)
			if fw.Mode() != mode {
				t.Fatalf("Mode() = %q, want %q", fw.Mode(), mode)
			}
			peerSrv := listen(t, l.peer)
			for _, name := range []string{"v4", "v6"} {
				fam := l.all[name]
				h, p, o := fam[0], fam[1], fam[2]
				t.Run(name, func(t *testing.T) {
					t.Run("open port", func(t *testing.T) {
						reachable(t, l.peer, p, h, open)
						reachable(t, l.peer, o, h, open)
					})
					t.Run("port open to one remote", func(t *testing.T) {
						reachable(t, l.peer, p, h, remote)
						unreachable(t, l.peer, o, h, remote)
					})
					t.Run("port not opened", func(t *testing.T) {
						before := counters(t, fw)[dropped]
						unreachable(t, l.peer, p, h, closed)
						if after := counters(t, fw)[dropped]; after <= before {
							t.Errorf("%s %d -> %d: the drop was not counted", dropped, before, after)
						}
					})
					t.Run("kernel's own connection", func(t *testing.T) {
						c, err := dial(l.host, netip.Addr{}, p, peerSrv, 3*time.Second)
						if err != nil {
							t.Fatalf("host dials peer: %v", err)
						}
						defer c.Close()
						echo(t, c)
						lp := c.LocalAddr().(*net.TCPAddr).Port
						k := l4.FlowKey(la(h), uint16(lp), la(p), peerSrv, l4.ProtoTCP)
						e, ok := findEntry(entries(t, fw), k)
						if !ok || !e.Learned || e.Sticky {
							t.Fatalf("no learned entry %v: %v", k, entries(t, fw))
						}
						// Another peer address may not use that flow's port.
						unreachable(t, l.peer, o, h, uint16(lp))
					})
					t.Run("ICMP echo", func(t *testing.T) {
						if err := ping(l.peer, p, h, hang); err == nil {
							t.Fatal("the peer pinged the host without ICMP allowed")
						}
						if err := ping(l.host, h, p, 3*time.Second); err != nil {
							t.Fatalf("host pings peer: %v", err)
						}
						k := l4.FlowKey(la(h), 0, la(p), 0, l4.ProtoICMP)
						if h.Is6() {
							k.Proto = l4.ProtoICMPv6
						}
						if e, ok := findEntry(entries(t, fw), k); !ok || !e.Learned {
							t.Errorf("no learned entry %v", k)
						}
						// The other peer address has no learned entry: nothing until ICMP is allowed.
						if err := ping(l.peer, o, h, hang); err == nil {
							t.Fatal("the peer's other address pinged the host without ICMP allowed")
						}
						ak := l4.ListenKey(la(h), k.Proto, 0)
						if err := fw.AllowKernel(ak, true); err != nil {
							t.Fatal(err)
						}
						defer func() {
							if err := fw.RevokeKernel(ak); err != nil {
								t.Error(err)
							}
						}()
						if err := ping(l.peer, o, h, 3*time.Second); err != nil {
							t.Fatalf("peer pings host with ICMP allowed: %v", err)
						}
					})
				})
			}
			c := counters(t, fw)
			if c["pass_arp"] == 0 || c["pass_ndp"] == 0 || c["learn_new"] == 0 || c["learn_covered"] == 0 {
				t.Errorf("counters %v: want ARP, NDP passed, flows learned, replies of open ports covered", c)
			}
			t.Logf("counters: %v", c)
		})
	}
}

// A port allowed at run time opens at once; revoked, it closes at once.
func TestAllowRevoke(t *testing.T) {
	l := newLab(t)
	port := listen(t, l.host)
	fw := l.attach(t, Options{})
	unreachable(t, l.peer, l.p4, l.h4, port)
	k := l4.ListenKey(la(l.h4), l4.ProtoTCP, port)
	if err := fw.AllowKernel(k, false); err != nil {
		t.Fatal(err)
	}
	reachable(t, l.peer, l.p4, l.h4, port)
	if e, ok := findEntry(entries(t, fw), k); !ok || e.Learned || e.Sticky {
		t.Errorf("entry %+v, %v: want registered, not sticky", e, ok)
	}
	if err := fw.RevokeKernel(k); err != nil {
		t.Fatal(err)
	}
	unreachable(t, l.peer, l.p4, l.h4, port)
	if err := fw.RevokeKernel(k); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("revoking twice: %v, want ErrKeyNotExist", err)
	}
}

// checkAttached checks that the firewall's ingress program is attached to
// the host's link, and nothing of the other hook: with HookXDP exactly one
// XDP program in a single mode and no TCX ingress program, with HookTC
// exactly one TCX ingress program and no XDP program; and exactly one TCX
// egress program, the learner.
func (l *fwLab) checkAttached(t *testing.T, fw *Firewall) {
	t.Helper()
	lk, err := l.host.Link(l.ifname)
	if err != nil {
		t.Fatal(err)
	}
	x := lk.Attrs().Xdp
	ingress := l.tcxPrograms(t, ebpf.AttachTCXIngress)
	if fw.Hook() == HookTC {
		if x != nil && x.Attached {
			t.Fatalf("XDP program %d attached with the TC hook", x.ProgId)
		}
		info, _ := fw.objs.UsnetdTcIngress.Info()
		want, _ := info.ID()
		if len(ingress) != 1 || ingress[0] != want {
			t.Fatalf("TCX ingress programs %v, want only %d", ingress, want)
		}
	} else {
		info, err := fw.objs.UsnetdXdp.Info()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := info.ID()
		if x == nil || !x.Attached || x.ProgId != uint32(want) {
			t.Fatalf("XDP on %s: %+v, want program %d", l.ifname, x, want)
		}
		if x.AttachMode != 1 && x.AttachMode != 2 { // XDP_ATTACHED_DRV, _SKB; 4 is MULTI
			t.Fatalf("XDP attach mode %d: programs in several modes", x.AttachMode)
		}
		if len(ingress) != 0 {
			t.Fatalf("TCX ingress programs %v with the XDP hook", ingress)
		}
	}
	progs := l.tcxEgress(t)
	linfo, _ := fw.objs.UsnetdLearn.Info()
	wantLearn, _ := linfo.ID()
	if len(progs) != 1 || progs[0] != wantLearn {
		t.Fatalf("TCX egress programs %v, want only %d", progs, wantLearn)
	}
}

func (l *fwLab) tcxEgress(t *testing.T) []ebpf.ProgramID {
	return l.tcxPrograms(t, ebpf.AttachTCXEgress)
}

func (l *fwLab) tcxPrograms(t *testing.T, at ebpf.AttachType) []ebpf.ProgramID {
	t.Helper()
	lk, err := l.host.Link(l.ifname)
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	err = l.host.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: lk.Attrs().Index, Attach: at})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// checkDetached checks that nothing of the firewall is left: no pins, no
// programs on the link.
func (l *fwLab) checkDetached(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory %s still there (%v)", dir, err)
	}
	lk, err := l.host.Link(l.ifname)
	if err != nil {
		t.Fatal(err)
	}
	if x := lk.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("XDP program %d still attached", x.ProgId)
	}
	if p := l.tcxEgress(t); len(p) != 0 {
		t.Errorf("TCX egress programs still attached: %v", p)
	}
	if p := l.tcxPrograms(t, ebpf.AttachTCXIngress); len(p) != 0 {
		t.Errorf("TCX ingress programs still attached: %v", p)
	}
}

// The crash helper: a child process (the test binary, started inside the
// host namespace) attaches a firewall, has the host open a connection, and
// exits without Close, as a crashed usnetd would.
const helperEnv = "USNETD_FIREWALL_TEST_CRASH"

func TestMain(m *testing.M) {
	if v := os.Getenv(helperEnv); v != "" {
		os.Exit(crashHelper(v))
	}
	os.Exit(m.Run())
}

func crashHelper(arg string) int {
	// arg: IFNAME,PORT,HOOK (a port to allow as sticky; the hook)
	f := strings.Split(arg, ",")
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "want IFNAME,PORT,HOOK:", arg)
		return 2
	}
	ifname, p, hook := f[0], f[1], Hook(f[2])
	port, err := strconv.Atoi(p)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	lk, err := netlink.LinkByName(ifname)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	addrs, err := netlink.AddrList(lk, netlink.FAMILY_V4)
	if err != nil || len(addrs) == 0 {
		fmt.Fprintln(os.Stderr, "no address", err)
		return 1
	}
	local, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	fw, err := Attach(Options{Interface: ifname, Hook: hook,
		Allow: []Allowed{{Key: l4.ListenKey(la(local), l4.ProtoTCP, uint16(port)), Sticky: true}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("attached", fw.Mode())
	return 0 // no Close: the process dies, its pins stay
}

// A usnetd that died without Close leaves its programs attached (pinned
// links) and the kernel firewalled. The next Attach takes the links over
// with the new programs instead of stacking a second copy (or, on the other
// hook, attaches its own first and then removes the earlier one), keeps the
// learned entries (so the kernel's connections survive), and Close then
// leaves nothing behind.
func TestRestartAfterCrash(t *testing.T) {
	for _, c := range []struct{ before, after Hook }{
		{HookXDP, HookXDP}, {HookTC, HookTC}, {HookXDP, HookTC}, {HookTC, HookXDP},
	} {
		t.Run(fmt.Sprintf("%s-%s", c.before, c.after), func(t *testing.T) { testRestartAfterCrash(t, c.before, c.after) })
	}
}

func testRestartAfterCrash(t *testing.T, before, after Hook) {
	l := newLab(t)
	open := listen(t, l.host)
	closed := listen(t, l.host)
	peerSrv := listen(t, l.peer)

	dir := filepath.Join(DefaultPinRoot, l.ifname)
	t.Cleanup(func() { // in case the test fails before the second Attach: detach the crashed one's links
		_ = l.host.Do(func() error {
			if fw, err := Attach(Options{Interface: l.ifname}); err == nil {
				fw.Close()
			}
			return nil
		})
	})

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 2 { // crash twice: the second crash finds links to take over already
		cmd := execCommand(ctx, self, fmt.Sprintf("%s,%d,%s", l.ifname, open, before))
		out, err := runIn(l.host, cmd)
		if err != nil {
			t.Fatalf("crash helper %d: %v: %s", i, err, out)
		}
		t.Logf("crash helper %d: %s", i, out)
	}
	inPin := pinXDPLink
	if before == HookTC {
		inPin = pinTCIngressLink
	}
	for _, f := range []string{inPin, pinTCXLink, "kernel_rules", "kernel_learned", "xsks", "counters"} {
		if _, err := os.Stat(dir + "/" + f); err != nil {
			t.Errorf("after the crash: %v", err)
		}
	}
	// The dead instance's firewall still works: its open port is open, the
	// rest is closed, and the kernel's new connection gets learned.
	reachable(t, l.peer, l.p4, l.h4, open)
	unreachable(t, l.peer, l.p4, l.h4, closed)
	conn, err := dial(l.host, netip.Addr{}, l.p4, peerSrv, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo(t, conn)
	flow := l4.FlowKey(la(l.h4), uint16(conn.LocalAddr().(*net.TCPAddr).Port), la(l.p4), peerSrv, l4.ProtoTCP)

	fw := l.attach(t, Options{Hook: after, Allow: []Allowed{{Key: l4.ListenKey(la(l.h4), l4.ProtoTCP, open), Sticky: true}}})
	l.checkAttached(t, fw)
	if e, ok := findEntry(entries(t, fw), flow); !ok || !e.Learned {
		t.Errorf("the learned entry %v did not survive the restart: %v", flow, entries(t, fw))
	}
	echo(t, conn) // the kernel's connection still works
	reachable(t, l.peer, l.p4, l.h4, open)
	unreachable(t, l.peer, l.p4, l.h4, closed)

	// A second live instance on the same interface is refused.
	if _, err := l.tryAttach(t, Options{Hook: before}); !errors.Is(err, ErrInUse) {
		t.Errorf("second Attach: %v, want ErrInUse", err)
	}
	l.checkAttached(t, fw)

	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	l.checkDetached(t, dir)
	if _, err := os.Stat(DefaultPinRoot); err == nil {
		t.Logf("%s remains (other firewalls use it)", DefaultPinRoot)
	}
	// Unfiltered again: the kernel answers the closed port itself.
	reachable(t, l.peer, l.p4, l.h4, closed)
}

// Learned entries whose socket closed go; sticky ones and those of open
// sockets stay.
func TestExpireLearned(t *testing.T) {
	l := newLab(t)
	peerSrv := listen(t, l.peer)
	udpSrv, err := l.peer.ListenPacket("udp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udpSrv.Close()
	udpPort := uint16(udpSrv.LocalAddr().(*net.UDPAddr).Port)
	sticky := l4.ListenKey(la(l.h4), l4.ProtoTCP, 22)
	fw := l.attach(t, Options{MinIdle: -1, Allow: []Allowed{{Key: sticky, Sticky: true}}})
	var inv *Inventory
	if err := l.host.Do(func() (err error) { inv, err = NewInventory(); return err }); err != nil {
		t.Fatal(err)
	}
	defer inv.Close()

	keep, err := dial(l.host, netip.Addr{}, l.p4, peerSrv, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	echo(t, keep)
	gone, err := dial(l.host, netip.Addr{}, l.p6, peerSrv, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, gone)
	var uc net.Conn
	if err := l.host.Do(func() (err error) {
		uc, err = net.Dial("udp", netip.AddrPortFrom(l.p4, udpPort).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := uc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := ping(l.host, l.h4, l.p4, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	keyOfConn := func(c net.Conn, proto uint8) l4.Key {
		la4 := netip.MustParseAddrPort(c.LocalAddr().String())
		ra4 := netip.MustParseAddrPort(c.RemoteAddr().String())
		return l4.FlowKey(la(la4.Addr().Unmap()), la4.Port(), la(ra4.Addr().Unmap()), ra4.Port(), proto)
	}
	kKeep, kGone, kUDP := keyOfConn(keep, l4.ProtoTCP), keyOfConn(gone, l4.ProtoTCP), keyOfConn(uc, l4.ProtoUDP)
	kPing := l4.FlowKey(la(l.h4), 0, la(l.p4), 0, l4.ProtoICMP)
	es := entries(t, fw)
	for _, k := range []l4.Key{kKeep, kGone, kUDP, kPing, sticky} {
		if _, ok := findEntry(es, k); !ok {
			t.Fatalf("no entry %v in %v", k, es)
		}
	}

	// All sockets open: only the portless ping entry goes.
	if err := inv.Refresh(); err != nil {
		t.Fatal(err)
	}
	if n, err := fw.ExpireLearned(inv.IsOpen); err != nil || n != 1 {
		t.Errorf("ExpireLearned with every socket open: %d, %v; want 1 (the ping)", n, err)
	}
	// Close one TCP connection at once (RST, no TIME_WAIT) and the UDP socket.
	_ = gone.(*net.TCPConn).SetLinger(0)
	gone.Close()
	uc.Close()
	if err := inv.Refresh(); err != nil {
		t.Fatal(err)
	}
	if n, err := fw.ExpireLearned(inv.IsOpen); err != nil || n != 2 {
		t.Errorf("ExpireLearned after closing two sockets: %d, %v; want 2", n, err)
	}
	es = entries(t, fw)
	for _, k := range []l4.Key{kKeep, sticky} {
		if _, ok := findEntry(es, k); !ok {
			t.Errorf("entry %v was removed", k)
		}
	}
	for _, k := range []l4.Key{kGone, kUDP, kPing} {
		if _, ok := findEntry(es, k); ok {
			t.Errorf("entry %v was kept", k)
		}
	}
	echo(t, keep)
	// Even an isOpen that says "nothing is open" leaves registered entries.
	if _, err := fw.ExpireLearned(nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := findEntry(entries(t, fw), sticky); !ok {
		t.Error("the sticky entry went")
	}
}
