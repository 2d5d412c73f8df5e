package netlab

import (
	"net/netip"
	"testing"
)

// PairOpts tune NewPair. The zero value gives one queue each way, MTU
// 1500, random MACs, IPv4 only, links "eth0".
type PairOpts struct {
	// Veth makes the pair; Up is always set.
	Veth VethOpts
	// Prefix is the lab's prefix (see New); "" for the default.
	Prefix string
	// HostLink and PeerLink name the veth ends; default "eth0" each.
	HostLink, PeerLink string
	// UniqueHostLink names the host's end after the lab (Lab.Name), a
	// name no other lab uses: for programs that key state outside the
	// namespaces by the link's name, such as usnetd's bpffs pins. It
	// overrides HostLink.
	UniqueHostLink bool
	// PeerNS names the peer's namespace; default "peer".
	PeerNS string
	// IPv6 adds ::1 (host) and ::2 (peer) of Subnet6, with duplicate
	// address detection off on both ends, so that they work at once.
	IPv6 bool
}

// A Pair is the lab most tests want: a namespace "host" (the machine
// under test) and a namespace "peer" (the rest of the network; PeerNS) joined by
// a veth that is up, the host's end with address .1 of Subnet and the
// peer's with .2 (and ::1, ::2 of Subnet6 with PairOpts.IPv6).
type Pair struct {
	Lab              *Lab
	Host, Peer       *NS
	Veth             *Veth // A: the host's end, B: the peer's
	HostLink         string
	PeerLink         string
	Subnet, Subnet6  netip.Prefix
	HostIP, PeerIP   netip.Addr
	HostIP6, PeerIP6 netip.Addr // with PairOpts.IPv6
}

// NewPair makes a lab (New, with t: skipped without privileges, closed at
// the test's end; with t nil the caller closes Pair.Lab) and the Pair in
// it. On an error the lab is closed already.
func NewPair(t testing.TB, opts PairOpts) (_ *Pair, err error) {
	if t != nil {
		t.Helper()
	}
	lab, err := New(t, opts.Prefix)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = lab.Close()
		}
	}()
	p := &Pair{Lab: lab, HostLink: opts.HostLink, PeerLink: opts.PeerLink}
	switch {
	case opts.UniqueHostLink:
		p.HostLink = lab.Name()
	case p.HostLink == "":
		p.HostLink = "eth0"
	}
	if p.PeerLink == "" {
		p.PeerLink = "eth0"
	}
	if p.Host, err = lab.AddNS("host"); err != nil {
		return nil, err
	}
	if opts.PeerNS == "" {
		opts.PeerNS = "peer"
	}
	if p.Peer, err = lab.AddNS(opts.PeerNS); err != nil {
		return nil, err
	}
	opts.Veth.Up = true
	if p.Veth, err = lab.Veth(p.Host, p.HostLink, p.Peer, p.PeerLink, opts.Veth); err != nil {
		return nil, err
	}
	p.Subnet = lab.Subnet()
	addrs := []struct {
		ns   *NS
		link string
		p    netip.Prefix
		dst  *netip.Addr
	}{
		{p.Host, p.HostLink, Host(p.Subnet, 1), &p.HostIP},
		{p.Peer, p.PeerLink, Host(p.Subnet, 2), &p.PeerIP},
	}
	if opts.IPv6 {
		p.Subnet6 = lab.Subnet6()
		for _, e := range []struct {
			ns   *NS
			link string
		}{{p.Host, p.HostLink}, {p.Peer, p.PeerLink}} {
			if err := e.ns.SetSysctl("net.ipv6.conf."+e.link+".accept_dad", "0"); err != nil {
				return nil, err
			}
		}
		addrs = append(addrs, []struct {
			ns   *NS
			link string
			p    netip.Prefix
			dst  *netip.Addr
		}{
			{p.Host, p.HostLink, Host(p.Subnet6, 1), &p.HostIP6},
			{p.Peer, p.PeerLink, Host(p.Subnet6, 2), &p.PeerIP6},
		}...)
	}
	for _, a := range addrs {
		if err := a.ns.AddAddr(a.link, a.p); err != nil {
			return nil, err
		}
		*a.dst = a.p.Addr()
	}
	return p, nil
}
