package macvtap

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// The lab of these tests: namespace "host" holds the NIC (veth end eth0)
// with IPv4 and IPv6 addresses, default routes through the peer and a few
// more routes of the kinds a real host has; namespace "peer" holds the
// other end with ordinary sockets. Everything the claims change happens
// inside "host" and is undone by Close, which the tests register with
// t.Cleanup (and the lab's namespaces go with the lab in any case).

// hang bounds waits that only detect a hang; nothing asserts a speed.
const hang = 10 * time.Second

type testLab struct {
	t          testing.TB
	lab        *netlab.Lab
	host, peer *netlab.NS
	veth       *netlab.Veth
	hostIP     netip.Addr // on the NIC
	peerIP     netip.Addr // the peer, also the IPv4 gateway
	hostIP6    netip.Addr
	peerIP6    netip.Addr
	far        netip.Prefix // a subnet behind the gateway, routed by the host
	ringSize   int          // of the pipeline; 0 for the default
}

func newTestLab(t testing.TB, queues int) *testLab {
	t.Helper()
	p, err := netlab.NewPair(t, netlab.PairOpts{Veth: netlab.VethOpts{Queues: queues}, IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	lab, host, v, sn := p.Lab, p.Host, p.Veth, p.Subnet
	tl := &testLab{t: t, lab: lab, host: host, peer: p.Peer, veth: v,
		hostIP: p.HostIP, peerIP: p.PeerIP, hostIP6: p.HostIP6, peerIP6: p.PeerIP6,
		far: lab.Subnet()}
	for _, r := range []struct {
		dst netip.Prefix
		via netip.Addr
	}{
		{netip.MustParsePrefix("0.0.0.0/0"), tl.peerIP},
		{netip.MustParsePrefix("::/0"), tl.peerIP6},
		{tl.far, tl.peerIP},
	} {
		if err := host.AddRoute(r.dst, r.via, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	// A route with a metric, one with a source address and one with
	// two nexthops: the kinds of routes that must come back exactly.
	far2, far3 := lab.Subnet(), lab.Subnet()
	err = host.Do(func() error {
		ip := func(a netip.Addr) net.IP { return a.AsSlice() }
		ipnet := func(p netip.Prefix) *net.IPNet {
			return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: v.A.Index, Dst: ipnet(far2), Gw: ip(tl.peerIP), Priority: 50, Src: ip(tl.hostIP)}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Dst: ipnet(far3), MultiPath: []*netlink.NexthopInfo{
			{LinkIndex: v.A.Index, Gw: ip(tl.peerIP)},
			{LinkIndex: v.A.Index, Gw: ip(netlab.Host(sn, 3).Addr())},
		}})
	})
	if err != nil {
		t.Fatalf("routes: %v", err)
	}
	return tl
}

// open claims the host's eth0 inside the host namespace; t.Cleanup gives
// it back.
func (tl *testLab) open(opt Options) *Claim {
	tl.t.Helper()
	c, err := tl.tryOpen(opt)
	if err != nil {
		tl.t.Fatal(err)
	}
	tl.t.Cleanup(func() {
		if err := c.Close(); err != nil && !strings.Contains(err.Error(), "abandoned") {
			tl.t.Errorf("Close: %v", err)
		}
	})
	return c
}

func (tl *testLab) tryOpen(opt Options) (*Claim, error) {
	if opt.Interface == "" {
		opt.Interface = tl.veth.A.Name
	}
	var c *Claim
	err := tl.host.Do(func() (err error) {
		c, err = Open(opt)
		return err
	})
	return c, err
}

// netState is what a claim must give back: every route of the main table
// and every link's addresses, flags and MAC, as text.
type netState struct {
	routes []string
	links  []string
}

func (tl *testLab) state() netState {
	tl.t.Helper()
	var s netState
	err := tl.host.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		names := map[int]string{}
		for _, l := range links {
			a := l.Attrs()
			names[a.Index] = a.Name
			addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return err
			}
			var as []string
			for _, ad := range addrs {
				as = append(as, fmt.Sprintf("%s flags %#x", ad.IPNet, ad.Flags))
			}
			s.links = append(s.links, fmt.Sprintf("%s %s mtu %d promisc %d flags %v addrs %v",
				a.Name, a.HardwareAddr, a.MTU, a.Promisc, a.Flags, as))
		}
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range rs {
			s.routes = append(s.routes, routeText(r, names))
		}
		return nil
	})
	if err != nil {
		tl.t.Fatal(err)
	}
	slices.Sort(s.routes)
	slices.Sort(s.links)
	return s
}

func routeText(r netlink.Route, names map[int]string) string {
	s := fmt.Sprintf("%v dev %s gw %v src %v proto %d scope %d metric %d type %d flags %#x table %d",
		r.Dst, names[r.LinkIndex], r.Gw, r.Src, r.Protocol, r.Scope, r.Priority, r.Type, r.Flags, r.Table)
	for _, nh := range r.MultiPath {
		s += fmt.Sprintf(" nexthop dev %s gw %v weight %d flags %#x", names[nh.LinkIndex], nh.Gw, nh.Hops+1, nh.Flags)
	}
	return s
}

func (s netState) equal(o netState) bool {
	return slices.Equal(s.routes, o.routes) && slices.Equal(s.links, o.links)
}

func (s netState) String() string {
	return "routes:\n  " + strings.Join(s.routes, "\n  ") + "\nlinks:\n  " + strings.Join(s.links, "\n  ")
}

// checkRestored fails the test unless the host is as before.
func (tl *testLab) checkRestored(before netState) {
	tl.t.Helper()
	if after := tl.state(); !after.equal(before) {
		tl.t.Errorf("host not restored.\nbefore:\n%v\nafter:\n%v", before, after)
	}
}

// link returns the host's link of that name, or nil.
func (tl *testLab) link(name string) netlink.Link {
	l, err := tl.host.Link(name)
	if err != nil {
		return nil
	}
	return l
}

// pipeline switches between the claim's two ports, with kernel rules for
// the listening ports given; t.Cleanup closes it (before the claim).
func (tl *testLab) pipeline(c *Claim, listen ...uint16) (*l4.Pipeline, l4.Owner) {
	tl.t.Helper()
	sw := l4.NewSwitch(l4.NewTable())
	p, err := l4.NewPipeline(sw, l4.PipelineConfig{RingSize: tl.ringSize})
	if err != nil {
		tl.t.Fatal(err)
	}
	tl.t.Cleanup(func() {
		if err := p.Close(); err != nil {
			tl.t.Errorf("pipeline Close: %v", err)
		}
		if st := p.Pool().Stats(); st.SharedFree != st.Bufs || st.DoubleFree != 0 {
			tl.t.Errorf("buffers after the pipeline's Close: %+v", st)
		}
	})
	if _, err := p.AddPort(c.NIC()); err != nil {
		tl.t.Fatal(err)
	}
	kernel, err := p.AddPort(c.Kernel())
	if err != nil {
		tl.t.Fatal(err)
	}
	for _, port := range listen {
		for _, a := range []netip.Addr{tl.hostIP, tl.hostIP6} {
			k := l4.ListenKey(l4.AddrFromNetip(a), l4.ProtoTCP, port)
			if err := sw.Table.Insert(l4.Rule{Key: k, Owner: kernel, Kind: l4.Registered, Sticky: true}); err != nil {
				tl.t.Fatal(err)
			}
		}
	}
	return p, kernel
}

// TestClaimMovesRoutesAndGivesBack: the TAP gets the NIC's MAC, MTU,
// addresses and routes, the NIC keeps its addresses and loses its routes;
// Close gives back exactly what was there.
func TestClaimMovesRoutesAndGivesBack(t *testing.T) {
	tl := newTestLab(t, 0)
	before := tl.state()
	c := tl.open(Options{})
	mvName, tapName := c.Names()
	if mvName != "eth0pass" || tapName != "eth0usnetd" {
		t.Errorf("names %q %q", mvName, tapName)
	}
	t.Logf("character device: %s", c.CharDevice())
	tap, mv, nic := tl.link(tapName), tl.link(mvName), tl.link("eth0")
	if tap == nil || mv == nil || nic == nil {
		t.Fatalf("links: tap %v macvtap %v nic %v", tap, mv, nic)
	}
	if m, ok := mv.(*netlink.Macvtap); !ok || m.Mode != netlink.MACVLAN_MODE_PASSTHRU || m.ParentIndex != nic.Attrs().Index {
		t.Errorf("macvtap: %#v", mv)
	}
	if tap.Attrs().HardwareAddr.String() != nic.Attrs().HardwareAddr.String() || tap.Attrs().MTU != nic.Attrs().MTU {
		t.Errorf("TAP MAC %s MTU %d, NIC %s %d", tap.Attrs().HardwareAddr, tap.Attrs().MTU, nic.Attrs().HardwareAddr, nic.Attrs().MTU)
	}
	during := tl.state()
	var onNIC, onTAP int
	for _, r := range during.routes {
		if strings.Contains(r, " dev eth0 ") {
			onNIC++
		}
		if strings.Contains(r, " dev "+tapName+" ") {
			onTAP++
		}
	}
	if onNIC != 0 || onTAP != c.MovedRoutes() || c.MovedRoutes() < 7 {
		t.Errorf("%d routes moved; %d on the NIC, %d on the TAP:\n%v", c.MovedRoutes(), onNIC, onTAP, during)
	}
	// The TAP's routes are the NIC's, retargeted.
	var want []string
	for _, r := range before.routes {
		want = append(want, strings.ReplaceAll(r, " dev eth0 ", " dev "+tapName+" "))
	}
	if !slices.Equal(during.routes, want) {
		t.Errorf("routes with the claim:\n  %s\nwant:\n  %s", strings.Join(during.routes, "\n  "), strings.Join(want, "\n  "))
	}
	for _, line := range during.links {
		name, _, _ := strings.Cut(line, " ")
		if name != "eth0" && name != tapName {
			continue
		}
		for _, a := range []netip.Addr{tl.hostIP, tl.hostIP6} {
			if !strings.Contains(line, a.String()+"/") {
				t.Errorf("%s lacks %s: %s", name, a, line)
			}
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if tl.link(tapName) != nil || tl.link(mvName) != nil {
		t.Error("helper links left after Close")
	}
	tl.checkRestored(before)
}

// TestKernelThroughTheSwitch: with the two ports in a pipeline, the host
// kernel's own connections work (learned), a port opened for it is
// reachable over IPv4 and IPv6, and a closed one gets no answer at all.
func TestKernelThroughTheSwitch(t *testing.T) {
	for _, queues := range []int{1, 2} {
		t.Run(fmt.Sprintf("queues=%d", queues), func(t *testing.T) {
			tl := newTestLab(t, queues)
			testkit.ServeTCPEcho(t, tl.peer, netip.AddrPortFrom(tl.peerIP, 9000).String())
			testkit.ServeTCPEcho(t, tl.peer, netip.AddrPortFrom(tl.peerIP6, 9000).String())
			testkit.ServeTCPEcho(t, tl.host, netip.AddrPortFrom(tl.hostIP, 8022).String())
			testkit.ServeTCPEcho(t, tl.host, netip.AddrPortFrom(tl.hostIP6, 8022).String())
			testkit.ServeTCPEcho(t, tl.host, netip.AddrPortFrom(tl.hostIP, 8024).String())
			c := tl.open(Options{Queues: queues})
			p, kernel := tl.pipeline(c, 8022)
			for _, a := range []netip.Addr{tl.peerIP, tl.peerIP6} {
				if err := testkit.TCPEcho(tl.host, netip.Addr{}, netip.AddrPortFrom(a, 9000).String(), hang); err != nil {
					t.Errorf("host kernel to %s: %v", a, err)
				}
			}
			for _, a := range []netip.Addr{tl.hostIP, tl.hostIP6} {
				if err := testkit.TCPEcho(tl.peer, netip.Addr{}, netip.AddrPortFrom(a, 8022).String(), hang); err != nil {
					t.Errorf("peer to the open port on %s: %v", a, err)
				}
			}
			if err := testkit.TCPEcho(tl.peer, netip.Addr{}, netip.AddrPortFrom(tl.hostIP, 8024).String(), 700*time.Millisecond); !testkit.IsTimeout(err) {
				t.Errorf("peer to a closed port: %v, want no answer", err)
			}
			netlab.RequireTool(t, "ping", "iputils-ping")
			out, err := tl.host.Command(context.Background(), "ping", "-c", "1", "-W", "5", tl.peerIP.String()).CombinedOutput()
			if err != nil {
				t.Errorf("ping from the host: %v\n%s", err, out)
			}
			learned := 0
			for _, r := range p.Switch().Table.Rules() {
				if r.Owner == kernel && r.Kind == l4.Learned {
					learned++
				}
			}
			if learned < 3 {
				t.Errorf("%d learned kernel rules, want the two TCP connections and the ping", learned)
			}
			st := p.Stats()
			t.Logf("pipeline: %+v", st)
			t.Logf("NIC port: %+v; kernel port: %+v", c.NIC().Stats(), c.Kernel().Stats())
		})
	}
}

// TestOpenRepairsCrash: a run that ends without Close leaves the macvtap
// (which keeps the kernel cut off: fail closed) and the persistent TAP with
// the NIC's routes; the next Open moves them back, deletes both, and sets
// up afresh, and its Close leaves the host as before the first.
func TestOpenRepairsCrash(t *testing.T) {
	tl := newTestLab(t, 0)
	before := tl.state()
	c := tl.open(Options{})
	moved := c.MovedRoutes()
	c.abandon()
	mvName, tapName := c.Names()
	if tl.link(tapName) == nil || tl.link(mvName) == nil {
		t.Fatal("a crash should leave both helper links")
	}
	c2 := tl.open(Options{})
	if r := c2.Repaired(); !r.Macvtap || !r.TAP || r.Routes != moved {
		t.Errorf("repaired %+v, want both links and %d routes", r, moved)
	}
	testkit.ServeTCPEcho(t, tl.peer, netip.AddrPortFrom(tl.peerIP, 9000).String())
	tl.pipeline(c2)
	if err := testkit.TCPEcho(tl.host, netip.Addr{}, netip.AddrPortFrom(tl.peerIP, 9000).String(), hang); err != nil {
		t.Errorf("host kernel after the repair: %v", err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	tl.checkRestored(before)
}

// TestOpenRefusesForeignLinks: a link that has a helper's name but is not
// ours is neither used nor deleted, and the host stays as it was.
func TestOpenRefusesForeignLinks(t *testing.T) {
	tl := newTestLab(t, 0)
	_, tapName := Names("eth0")
	if _, err := tl.lab.Veth(tl.host, tapName, tl.host, "other0", netlab.VethOpts{}); err != nil {
		t.Fatal(err)
	}
	before := tl.state()
	if c, err := tl.tryOpen(Options{}); !errors.Is(err, ErrNameTaken) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Open: %v, want ErrNameTaken", err)
	}
	tl.checkRestored(before)
	for _, c := range []struct {
		opt  Options
		want error
	}{
		{Options{Interface: "nosuch0"}, ErrNoInterface},
		{Options{Queues: -1}, ErrOptions},
		{Options{Queues: MaxQueues + 1}, ErrOptions},
		{Options{TxQueueLen: -1}, ErrOptions},
		{Options{Interface: "a-very-long-name0"}, ErrOptions},
	} {
		cl, err := tl.tryOpen(c.opt)
		if cl != nil {
			cl.Close()
		}
		if !errors.Is(err, c.want) {
			t.Errorf("Open(%+v): %v, want %v", c.opt, err, c.want)
		}
	}
	tl.checkRestored(before)
}

// TestPortClose: Close wakes a Recv blocked in poll at once, and Recv and
// Send of a closed port return ErrPortClosed; Close is idempotent.
func TestPortClose(t *testing.T) {
	tl := newTestLab(t, 0)
	c := tl.open(Options{})
	for _, p := range []*Port{c.NIC(), c.Kernel()} {
		buf := bufsOf(t, 4)
		done := make(chan error, 1)
		go func() {
			for {
				if _, err := p.Recv(0, buf); err != nil {
					done <- err
					return
				}
			}
		}()
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if !errors.Is(err, l4.ErrPortClosed) {
				t.Errorf("%s: Recv after Close: %v", p.Name(), err)
			}
			if d := time.Since(start); d > 50*time.Millisecond {
				t.Errorf("%s: a blocked Recv took %v to notice Close", p.Name(), d)
			}
		case <-time.After(hang):
			t.Fatalf("%s: Recv still blocked after Close", p.Name())
		}
		if _, err := p.Send(buf[:1]); !errors.Is(err, l4.ErrPortClosed) {
			t.Errorf("%s: Send after Close: %v", p.Name(), err)
		}
		if err := p.Close(); err != nil {
			t.Errorf("%s: second Close: %v", p.Name(), err)
		}
	}
	if _, err := c.NIC().Recv(1, nil); err == nil {
		t.Error("Recv of a queue the port does not have")
	}
}

// bufsOf returns n buffers of a fresh pool.
func bufsOf(t testing.TB, n int) []*l4.Buf {
	t.Helper()
	pool, err := l4.NewBufPool(n, 0)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]*l4.Buf, n)
	if got := pool.NewCache().GetBatch(bs); got != n {
		t.Fatalf("got %d of %d buffers", got, n)
	}
	return bs
}

// TestNoKernel: without a kernel path nothing but the macvtap is made, the
// routes stay, and the kernel gets nothing through the NIC.
func TestNoKernel(t *testing.T) {
	tl := newTestLab(t, 0)
	before := tl.state()
	c := tl.open(Options{NoKernel: true})
	if c.Kernel() != nil || c.MovedRoutes() != 0 {
		t.Fatalf("kernel port %v, %d routes moved", c.Kernel(), c.MovedRoutes())
	}
	_, tapName := c.Names()
	if tl.link(tapName) != nil {
		t.Error("TAP made without a kernel path")
	}
	testkit.ServeTCPEcho(t, tl.host, netip.AddrPortFrom(tl.hostIP, 8022).String())
	if err := testkit.TCPEcho(tl.peer, netip.Addr{}, netip.AddrPortFrom(tl.hostIP, 8022).String(), 700*time.Millisecond); !testkit.IsTimeout(err) {
		t.Errorf("peer to the host with the NIC claimed and no kernel path: %v, want no answer", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	tl.checkRestored(before)
	if err := testkit.TCPEcho(tl.peer, netip.Addr{}, netip.AddrPortFrom(tl.hostIP, 8022).String(), hang); err != nil {
		t.Errorf("after Close the host answers directly again: %v", err)
	}
}

// TestCharDeviceOfAnotherNamespace: /dev/tapIFINDEX is named by an ifindex,
// which is unique only within a namespace; two labs built alike give their
// macvtaps the same ifindex, and the node is the first one's. The second
// claim must notice and open its own device, and both must carry traffic.
func TestCharDeviceOfAnotherNamespace(t *testing.T) {
	tl1, tl2 := newTestLab(t, 0), newTestLab(t, 0)
	c1 := tl1.open(Options{})
	c2 := tl2.open(Options{})
	mv1, _ := c1.Names()
	i1, i2 := tl1.link(mv1).Attrs().Index, tl2.link(mv1).Attrs().Index
	t.Logf("ifindex %d: %s; ifindex %d: %s", i1, c1.CharDevice(), i2, c2.CharDevice())
	if i1 == i2 && !strings.HasPrefix(c2.CharDevice(), "private node") {
		t.Errorf("both macvtaps have ifindex %d, and the second claim opened %s", i1, c2.CharDevice())
	}
	for _, tl := range []*testLab{tl1, tl2} {
		testkit.ServeTCPEcho(t, tl.peer, netip.AddrPortFrom(tl.peerIP, 9000).String())
	}
	tl1.pipeline(c1)
	tl2.pipeline(c2)
	for i, tl := range []*testLab{tl1, tl2} {
		if err := testkit.TCPEcho(tl.host, netip.Addr{}, netip.AddrPortFrom(tl.peerIP, 9000).String(), hang); err != nil {
			t.Errorf("lab %d: %v", i+1, err)
		}
	}
}

// TestCharDeviceWithoutPrivateNode is the fallback of a process that may
// not make device nodes: with a sysfs of the right namespace, /dev/tapN is
// opened when it is the macvtap's device, and refused when it is another
// namespace's (two labs built alike give their macvtaps the same ifindex).
func TestCharDeviceWithoutPrivateNode(t *testing.T) {
	tl1, tl2 := newTestLab(t, 0), newTestLab(t, 0)
	c1 := tl1.open(Options{})
	tl2.open(Options{})
	mv, _ := c1.Names()
	i1, i2 := tl1.link(mv).Attrs().Index, tl2.link(mv).Attrs().Index
	for i, tl := range []*testLab{tl1, tl2} {
		idx := []int{i1, i2}[i]
		var fds []int
		var how string
		err := tl.host.Do(func() error {
			netns, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(netns)
			ch := make(chan error, 1)
			go func() {
				runtime.LockOSThread() // never unlocked: the thread goes with its mounts
				dir, err := privateMounts(netns)
				if err == nil {
					fds, how, err = openIn(filepath.Join(dir, "sys"), "", mv, idx, 2)
				}
				ch <- err
			}()
			return <-ch
		})
		closeAll(fds)
		switch {
		case i == 0 && err != nil:
			t.Errorf("lab 1 (the first macvtap with ifindex %d): %v", idx, err)
		case i == 0 && how != "/dev/tap"+strconv.Itoa(idx):
			t.Errorf("lab 1: opened %q", how)
		case i == 1 && i1 == i2 && err == nil:
			t.Errorf("lab 2 opened %s, which is lab 1's macvtap", how)
		}
		t.Logf("lab %d, ifindex %d: %q %v", i+1, idx, how, err)
	}
}
