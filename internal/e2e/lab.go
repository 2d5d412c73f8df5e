package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/macvtap"
	"github.com/usnetd/usnetd/internal/netlab"
)

// PinRoot is where usnetd pins its firewall, one directory per interface.
const PinRoot = "/sys/fs/bpf/usnetd"

// A Lab is a netlab.Pair for usnetd: the host's end of the veth (Ifname,
// named after the lab so that pin directories of parallel runs never
// collide) carries HostIP; the peer's end "eth0" carries PeerIP and
// PeerIP2; the host has a default route through the peer. Start runs
// usnetd on Ifname inside the host namespace.
type Lab struct {
	T          testing.TB
	NetLab     *netlab.Lab
	Host, Peer *netlab.NS
	Ifname     string
	HostIP     netip.Addr
	PeerIP     netip.Addr
	PeerIP2    netip.Addr // a second peer address, for REMOTEIP rules
	Sock       string     // the control socket's path
	Wrap       []string   // a command that runs usnetd (setpriv ...), if any
	Bin        string     // the usnetd binary to run; "": the test binary, re-executed as usnetd
	Backend    string     // BACKEND for the daemon; "" for its default
	Before     NICState   // the host's NIC before usnetd
}

// Backends are the BACKEND values every end-to-end test runs with.
var Backends = []string{"afxdp", "afpacket", "macvtap"}

// ForEachBackend runs body once per backend in Backends, each as a
// subtest named after it; body makes its lab and sets its backend.
func ForEachBackend(t *testing.T, body func(t *testing.T, backend string)) {
	for _, b := range Backends {
		t.Run(b, func(t *testing.T) { body(t, b) })
	}
}

// NewLab builds a Lab whose veth has queues queues each way (0: one).
func NewLab(t testing.TB, queues int) *Lab {
	t.Helper()
	return NewLabMTU(t, queues, 0)
}

// NewLabMTU is NewLab with both veth ends at mtu (0: the default, 1500).
func NewLabMTU(t testing.TB, queues, mtu int) *Lab {
	t.Helper()
	p, err := netlab.NewPair(t, netlab.PairOpts{Veth: netlab.VethOpts{Queues: queues, MTU: mtu}, UniqueHostLink: true})
	if err != nil {
		t.Fatal(err)
	}
	// A failed start, a kill or KEEP_FIREWALL leave the firewall pinned
	// (fail closed): removing the pins detaches it, before the lab goes.
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Join(PinRoot, p.HostLink)) })
	l := &Lab{T: t, NetLab: p.Lab, Host: p.Host, Peer: p.Peer, Ifname: p.HostLink,
		HostIP: p.HostIP, PeerIP: p.PeerIP, PeerIP2: netlab.Host(p.Subnet, 3).Addr(),
		Sock: filepath.Join(t.TempDir(), "usnetd.socket")}
	if err := p.Peer.AddAddr(p.PeerLink, netlab.Host(p.Subnet, 3)); err != nil {
		t.Fatal(err)
	}
	// A default route through the peer, for the backends that move the
	// NIC's routes (macvtap) to give back.
	if err := p.Host.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), l.PeerIP, l.Ifname); err != nil {
		t.Fatal(err)
	}
	l.Before = l.NICState()
	return l
}

// NICState is the host NIC's addresses and the main table's routes, as
// text, and the names of the host's links.
type NICState struct {
	Addrs, Routes, Links []string
}

// NICState reads the host's NICState now.
func (l *Lab) NICState() NICState {
	l.T.Helper()
	var s NICState
	err := l.Host.Do(func() error {
		lk, err := netlink.LinkByName(l.Ifname)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(lk, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range as {
			s.Addrs = append(s.Addrs, fmt.Sprintf("%s flags %#x", a.IPNet, a.Flags))
		}
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range rs {
			s.Routes = append(s.Routes, fmt.Sprintf("%v via %v dev %d src %v proto %d scope %d metric %d",
				r.Dst, r.Gw, r.LinkIndex, r.Src, r.Protocol, r.Scope, r.Priority))
		}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, k := range links {
			s.Links = append(s.Links, k.Attrs().Name)
		}
		return nil
	})
	if err != nil {
		l.T.Fatal(err)
	}
	slices.Sort(s.Addrs)
	slices.Sort(s.Routes)
	slices.Sort(s.Links)
	return s
}

// CheckNothingLeft checks that no XDP program, TCX link or pin is left on
// the host's interface, no control socket file, and that the NIC's
// addresses, routes and the host's links are as before usnetd.
func (l *Lab) CheckNothingLeft() {
	t := l.T
	t.Helper()
	if _, err := os.Stat(filepath.Join(PinRoot, l.Ifname)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left (%v)", err)
	}
	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	if x := lk.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("XDP program %d still attached", x.ProgId)
	}
	err = l.Host.Do(func() error {
		for _, a := range []ebpf.AttachType{ebpf.AttachTCXEgress, ebpf.AttachTCXIngress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: lk.Attrs().Index, Attach: a})
			if err != nil {
				return err
			}
			if len(res.Programs) != 0 {
				t.Errorf("TCX programs left (%v): %v", a, res.Programs)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.Sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket file left (%v)", err)
	}
	// The NIC as it was: addresses, routes, and no links of usnetd's
	// (macvtap's helpers) left.
	after := l.NICState()
	for _, c := range []struct {
		what          string
		before, after []string
	}{{"addresses", l.Before.Addrs, after.Addrs}, {"routes", l.Before.Routes, after.Routes}, {"links", l.Before.Links, after.Links}} {
		if !slices.Equal(c.before, c.after) {
			t.Errorf("%s of the host changed:\nbefore %q\nafter  %q", c.what, c.before, c.after)
		}
	}
}

// HelperLinks reports which of the macvtap backend's helper links exist.
func (l *Lab) HelperLinks() (macvtapLink, tapLink bool) {
	mv, tap := macvtap.Names(l.Ifname)
	_, err1 := l.Host.Link(mv)
	_, err2 := l.Host.Link(tap)
	return err1 == nil, err2 == nil
}
