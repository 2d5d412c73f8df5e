package afxdp

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

// The lab of these tests: namespace "host" holds the NIC (veth end eth0)
// with the test's XDP program and the port; namespace "peer" holds the
// other end, where ordinary sockets send and receive. The XDP program
// redirects every frame to the XSK of its RX queue, ARP included, so the
// peer gets a permanent neighbour entry for the host's address instead.

// hang bounds waits that only detect a hang; nothing asserts a speed.
const hang = 10 * time.Second

type testLab struct {
	t              testing.TB
	lab            *netlab.Lab
	host, peer     *netlab.NS
	veth           *netlab.Veth
	hostIP, peerIP netip.Addr
	xsks           *ebpf.Map
	prog           *ebpf.Program
}

// newTestLab builds the two namespaces, the veth pair with queues queues
// (0: the kernel's default of one), addresses and the neighbour entry, and
// loads the XDP program (not attached yet: see attach).
func newTestLab(t testing.TB, queues int) *testLab {
	t.Helper()
	return newTestLabMTU(t, queues, 0)
}

// newTestLabMTU is newTestLab with both veth ends at mtu (0: 1500), and an
// XDP program that takes multi-buffer frames (BPF_F_XDP_HAS_FRAGS: a veth
// refuses any other above an MTU of about 3,500 in native mode).
func newTestLabMTU(t testing.TB, queues, mtu int) *testLab {
	t.Helper()
	p, err := netlab.NewPair(t, netlab.PairOpts{Veth: netlab.VethOpts{Queues: queues, MTU: mtu}})
	if err != nil {
		t.Fatal(err)
	}
	v := p.Veth
	tl := &testLab{t: t, lab: p.Lab, host: p.Host, peer: p.Peer, veth: v, hostIP: p.HostIP, peerIP: p.PeerIP}
	err = p.Peer.Do(func() error {
		return netlink.NeighAdd(&netlink.Neigh{
			LinkIndex:    v.B.Index,
			Family:       netlink.FAMILY_V4,
			State:        netlink.NUD_PERMANENT,
			IP:           tl.hostIP.AsSlice(),
			HardwareAddr: v.A.MAC,
		})
	})
	if err != nil {
		t.Fatalf("neighbour entry in peer: %v", err)
	}
	tl.xsks, tl.prog = redirectProgram(t, mtu > 0)
	return tl
}

// redirectProgram returns an XSKMAP and an XDP program that redirects
// every frame to the map's entry for its RX queue, and passes it to the
// kernel when there is none:
//
//	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
func redirectProgram(t testing.TB, frags bool) (*ebpf.Map, *ebpf.Program) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "xsks", Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: 64})
	if err != nil {
		t.Fatalf("XSKMAP: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	const rxQueueIndex = 16 // offsetof(struct xdp_md, rx_queue_index)
	const xdpPass = 2
	var flags uint32
	if frags {
		flags = unix.BPF_F_XDP_HAS_FRAGS
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Flags:   flags,
		Name:    "xsk_redirect",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, rxQueueIndex, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Imm(asm.R3, xdpPass),
			asm.FnRedirectMap.Call(),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("XDP program: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return m, p
}

// attach attaches the XDP program to the host's eth0 (flags: 0 lets the
// kernel choose, which is native mode on veth).
func (tl *testLab) attach(flags link.XDPAttachFlags) {
	tl.t.Helper()
	var l link.Link
	err := tl.host.Do(func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: tl.prog, Interface: tl.veth.A.Index, Flags: flags})
		return err
	})
	if err != nil {
		tl.t.Fatalf("attach XDP: %v", err)
	}
	tl.t.Cleanup(func() { l.Close() })
}

// open opens a port on the host's eth0 inside the host namespace.
func (tl *testLab) open(opt Options) *Port {
	tl.t.Helper()
	p, err := tl.tryOpen(opt)
	if err != nil {
		tl.t.Fatal(err)
	}
	tl.t.Cleanup(func() { p.Close() })
	return p
}

func (tl *testLab) tryOpen(opt Options) (*Port, error) {
	if opt.Interface == "" {
		opt.Interface = tl.veth.A.Name
	}
	var p *Port
	err := tl.host.Do(func() (err error) {
		p, err = Open(opt)
		return err
	})
	return p, err
}

// udpFrame builds an Ethernet/IPv4/UDP frame with correct checksums.
func udpFrame(t testing.TB, src, dst net.HardwareAddr, sip netip.Addr, sport uint16, dip netip.Addr, dport uint16, payload []byte) []byte {
	t.Helper()
	return testkit.UDP(t, src, dst, netip.AddrPortFrom(sip, sport), netip.AddrPortFrom(dip, dport), payload)
}

// parsedUDP is what a test wants to know about a received frame.
type parsedUDP = testkit.UDPInfo

// bufs returns n buffers of a fresh pool.
func bufs(t testing.TB, n int) []*l4.Buf {
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

func payloadOf(i int) []byte { return []byte(fmt.Sprintf("afxdp test datagram %04d", i)) }
