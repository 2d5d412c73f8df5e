package netlab

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// VethOpts tunes a veth pair. The zero value gives the kernel's defaults:
// one queue each way, MTU 1500, random MACs, both ends down.
type VethOpts struct {
	// Queues sets numtxqueues and numrxqueues of both ends. A veth made
	// without it has one real RX queue, and AF_XDP binding queue 1 fails
	// with EINVAL; set it for multi-queue tests.
	Queues int
	// MTU of both ends; 0 keeps the default.
	MTU int
	// MACA and MACB set the ends' addresses; nil keeps a random one.
	MACA, MACB net.HardwareAddr
	// Up sets both ends up after creating them, and waits until they are
	// ready for traffic, as NS.SetUp does.
	Up bool
}

// A VethEnd is one end of a veth pair.
type VethEnd struct {
	NS    *NS
	Name  string
	Index int // ifindex inside NS
	MAC   net.HardwareAddr
}

// A Veth is a veth pair made by Lab.Veth.
type Veth struct {
	A, B VethEnd
}

// Veth creates a veth pair with the end aName in a and the end bName in b
// (a and b may be the same namespace). Both ends are created directly inside
// their namespaces, never in the root namespace, so the names only need to be
// unique there. Names are at most 15 bytes (IFNAMSIZ-1). The pair goes
// away with the first of its namespaces to be destroyed (see Lab.Close).
func (l *Lab) Veth(a *NS, aName string, b *NS, bName string, opts VethOpts) (*Veth, error) {
	for _, n := range []string{aName, bName} {
		if err := checkLinkName(n); err != nil {
			return nil, err
		}
	}
	if a == b && aName == bName {
		return nil, fmt.Errorf("netlab: veth ends %s and %s in one namespace", aName, bName)
	}
	if a.lab != l || b.lab != l {
		return nil, fmt.Errorf("netlab: veth between namespaces of another lab")
	}
	if opts.Queues < 0 || opts.Queues > 4096 || opts.MTU < 0 {
		return nil, fmt.Errorf("netlab: veth options %+v out of range", opts)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	ha, err := a.handle()
	if err != nil {
		return nil, err
	}
	defer a.mu.Unlock()
	hb := ha
	if b != a {
		if hb, err = b.handle(); err != nil {
			return nil, err
		}
		defer b.mu.Unlock()
	}

	v := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: aName, HardwareAddr: opts.MACA, MTU: opts.MTU, TxQLen: -1},
		PeerName:         bName,
		PeerHardwareAddr: opts.MACB,
		PeerTxQLen:       -1,
		PeerMTU:          uint32(opts.MTU),
	}
	if opts.Queues > 0 {
		q := uint32(opts.Queues)
		v.NumTxQueues, v.NumRxQueues = opts.Queues, opts.Queues
		v.PeerNumTxQueues, v.PeerNumRxQueues = q, q
	}
	if b != a {
		// The netlink request runs in a's namespace; the peer is created
		// straight in b's (VETH_INFO_PEER with IFLA_NET_NS_FD).
		v.PeerNamespace = netlink.NsFd(b.fd)
	}
	if err := ha.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("netlab: add veth %s/%s–%s/%s: %w", a.name, aName, b.name, bName, err)
	}
	la, err := ha.LinkByName(aName)
	if err != nil {
		return nil, fmt.Errorf("netlab: veth %s in %s: %w", aName, a.name, err)
	}
	lb, err := hb.LinkByName(bName)
	if err != nil {
		return nil, fmt.Errorf("netlab: veth peer %s in %s: %w", bName, b.name, err)
	}
	pair := &Veth{
		A: VethEnd{NS: a, Name: aName, Index: la.Attrs().Index, MAC: la.Attrs().HardwareAddr},
		B: VethEnd{NS: b, Name: bName, Index: lb.Attrs().Index, MAC: lb.Attrs().HardwareAddr},
	}
	l.peersMu.Lock()
	if l.peers == nil {
		l.peers = map[linkKey]VethEnd{}
	}
	l.peers[linkKey{a, aName}] = pair.B
	l.peers[linkKey{b, bName}] = pair.A
	l.peersMu.Unlock()
	if opts.Up {
		if err := ha.LinkSetUp(la); err != nil {
			return nil, fmt.Errorf("netlab: set %s up in %s: %w", aName, a.name, err)
		}
		if err := hb.LinkSetUp(lb); err != nil {
			return nil, fmt.Errorf("netlab: set %s up in %s: %w", bName, b.name, err)
		}
		if err := waitReady(ha, a.name, aName); err != nil {
			return nil, err
		}
		if err := waitReady(hb, b.name, bName); err != nil {
			return nil, err
		}
	}
	return pair, nil
}

// checkLinkName accepts what the kernel's dev_valid_name accepts, less
// whitespace and the printf pattern '%'.
func checkLinkName(name string) error {
	if len(name) < 1 || len(name) > 15 {
		return fmt.Errorf("netlab: link name %q: want 1 to 15 bytes", name)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("netlab: link name %q not allowed", name)
	}
	for _, c := range name {
		if c <= ' ' || c >= 0x7f || c == '/' || c == ':' || c == '%' {
			return fmt.Errorf("netlab: link name %q: unusable character %q", name, c)
		}
	}
	return nil
}
