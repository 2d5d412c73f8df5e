package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/usnetd/usnetd/backends/macvtap"
	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
	"github.com/usnetd/usnetd/usnet"
)

// The kernel and an endpoint on one host (the host path with afxdp and
// afpacket, the kernel's TAP with macvtap): an endpoint with a MAC and an
// address of its own (ADD_MACS, ENDPOINT_ADDRS; a usnet stack) reaches the
// kernel's TCP and UDP services that DEBUG_PORTS opens, and the kernel
// reaches the endpoint's listener, its ARP request answered by the
// endpoint. The attack next to it: a kernel port that the firewall keeps
// closed (a kernel listener not in DEBUG_PORTS) stays closed to the
// endpoint, whose SYNs to it are dropped (no_match) and never reach the
// kernel. An endpoint without a MAC of its own sees the kernel's ARP
// request too.
func TestE2EHostPath(t *testing.T) { e2e.ForEachBackend(t, testE2EHostPath) }

func testE2EHostPath(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	sn := netip.PrefixFrom(l.HostIP, 24).Masked()
	epPrefix := netlab.Host(sn, 10)
	epIP := epPrefix.Addr()
	epMAC := net.HardwareAddr{0x02, 0x00, 0x5e, 0x00, 0x00, 0x51}
	open := netip.AddrPortFrom(l.HostIP, 7000).String()
	closed := netip.AddrPortFrom(l.HostIP, 7001).String()
	testkit.ServeTCPEcho(t, l.Host, open)
	testkit.ServeUDPEcho(t, l.Host, open)
	testkit.ServeTCPEcho(t, l.Host, closed) // a kernel listener the firewall keeps closed
	l.startIso(t, "ADD_MACS="+epMAC.String(), "ENDPOINT_ADDRS="+l.Ifname+":"+epIP.String(),
		"DEBUG_PORTS="+l.Ifname+":TCP:7000,"+l.Ifname+":UDP:7000")
	raw := l.attach(t, "an endpoint on the NIC's MAC")

	cfg := &usnet.Config{Interface: l.Ifname, SocketPath: l.Sock, MAC: epMAC, Addrs: []netip.Prefix{epPrefix}}
	ln, err := cfg.Listen("tcp", netip.AddrPortFrom(epIP, 8080).String())
	if err != nil {
		t.Fatalf("usnet listen: %v\n%s", err, l.u.LogText())
	}
	defer ln.Close()
	go testkit.EchoAccepted(ln)

	echo := func(network, addr string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := cfg.DialContext(ctx, network, addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte("over the host path " + network)
		if _, err := c.Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}

	// The kernel reaches the endpoint's listener (and resolves its address
	// by ARP, answered by the endpoint).
	if err := testkit.TCPEcho(l.Host, netip.Addr{}, netip.AddrPortFrom(epIP, 8080).String(), 10*time.Second); err != nil {
		t.Fatalf("kernel -> endpoint TCP: %v\n%s", err, l.u.LogText())
	}
	if mac := kernelNeighbour(t, l.Host, epIP); !bytes.Equal(mac, epMAC) {
		t.Errorf("the kernel's neighbour entry for %s is %v, want %v (the endpoint's ARP answer)", epIP, mac, epMAC)
	}
	// The endpoint on the NIC's MAC saw the kernel's ARP request for it.
	raw.got.wait(t, "the kernel's ARP request at an endpoint", func(f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 1 &&
			bytes.Equal(f[28:32], l.HostIP.AsSlice()) && bytes.Equal(f[38:42], epIP.AsSlice())
	})

	// The endpoint reaches the kernel's open services.
	if err := echo("tcp", open); err != nil {
		t.Fatalf("endpoint -> kernel TCP %s: %v\n%s", open, err, l.u.LogText())
	}
	if err := echo("udp", open); err != nil {
		t.Fatalf("endpoint -> kernel UDP %s: %v\n%s", open, err, l.u.LogText())
	}

	// The attack: the kernel's closed port, right next to the open one.
	before, _ := e2e.MetricValue(l.Scrape(), fmt.Sprintf(`usnetd_drops_total{interface="%s",reason="no_match"}`, l.Ifname))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	c, err := cfg.DialContext(ctx, "tcp", closed)
	cancel()
	if err == nil {
		c.Close()
		t.Fatalf("endpoint -> kernel %s (not in DEBUG_PORTS): connected", closed)
	}
	l.drops(t, "no_match", before+1)
	// And the open one still works after it.
	if err := echo("tcp", open); err != nil {
		t.Fatalf("endpoint -> kernel TCP %s after the attack: %v", open, err)
	}
	if backend != "macvtap" {
		m := l.Scrape()
		for _, c := range []string{"host_in", "host_out", "host_clone"} {
			v, _ := e2e.MetricValue(m, fmt.Sprintf(`usnetd_firewall_frames_total{counter="%s",interface="%s"}`, c, l.Ifname))
			if v == 0 {
				t.Errorf("firewall counter %s = 0", c)
			}
		}
	}
	ln.Close()
	l.finish(t)
}

// kernelNeighbour returns the MAC of the kernel's neighbour entry for ip
// in ns, on any link (macvtap: the kernel's TAP); nil: none.
func kernelNeighbour(t *testing.T, ns *netlab.NS, ip netip.Addr) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := ns.Do(func() error {
		list, err := netlink.NeighList(0, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, n := range list {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == ip {
				mac = n.HardwareAddr
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// TestE2EEAPOLFromWire: an EAPOL frame from the wire (to the PAE group
// address) reaches an endpoint on every backend (afxdp: the neighbour tap
// copies it, as ARP and NDP; afpacket: its sockets read it; macvtap: the
// switch floods it), and so does one the kernel sends (afxdp, afpacket:
// the egress program's copy through the host path).
func TestE2EEAPOLFromWire(t *testing.T) { e2e.ForEachBackend(t, testE2EEAPOLFromWire) }

func testE2EEAPOLFromWire(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	l.startIso(t)
	ep := l.attach(t, "an endpoint")
	pae := net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x03}
	payload := []byte{2, 1, 0, 0, 'u', 's', 'n', 'e', 't', 'd'} // EAPOL-Start, version 2, and a tag
	sendRaw(t, l.Peer, "eth0", ethFrame(pae, l.peerMAC, 0x888e, payload))
	ep.got.wait(t, "the EAPOL frame at the endpoint", func(f []byte) bool {
		return len(f) >= 24 && f[12] == 0x88 && f[13] == 0x8e && bytes.Equal(f[14:24], payload)
	})
	// The kernel's own EAPOL (a supplicant on the host's interface: the
	// NIC, or with macvtap the kernel's TAP) reaches the endpoint too.
	link := l.Ifname
	if backend == "macvtap" {
		_, link = macvtap.Names(l.Ifname)
	}
	mine := []byte{2, 1, 0, 0, 'k', 'e', 'r', 'n', 'e', 'l'}
	sendRaw(t, l.Host, link, ethFrame(pae, l.hostMAC, 0x888e, mine))
	ep.got.wait(t, "the kernel's EAPOL frame at the endpoint", func(f []byte) bool {
		return len(f) >= 24 && f[12] == 0x88 && f[13] == 0x8e && bytes.Equal(f[14:24], mine)
	})
	l.finish(t)
}

// TestE2EKernelNeighbourSolicitation: the kernel's own neighbour
// solicitation (IPv6's ARP request, to a solicited-node group) reaches an
// endpoint on every backend (afxdp, afpacket: the egress program's copy
// through the host path; macvtap: the kernel's TAP).
func TestE2EKernelNeighbourSolicitation(t *testing.T) {
	e2e.ForEachBackend(t, testE2EKernelNeighbourSolicitation)
}

func testE2EKernelNeighbourSolicitation(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	sn6 := l.NetLab.Subnet6()
	host6, nobody := netlab.Host(sn6, 1), netlab.Host(sn6, 20).Addr()
	if err := l.Host.AddAddr(l.Ifname, host6); err != nil {
		t.Fatal(err)
	}
	l.Before = l.NICState()
	l.startIso(t)
	ep := l.attach(t, "an endpoint")
	isNS := ndOf(135, nobody)
	// The kernel asks, again each second, until the endpoint saw it (the
	// address may still be tentative at first).
	deadline := time.Now().Add(10 * time.Second)
	for ep.got.find(isNS) == nil && time.Now().Before(deadline) {
		_ = l.Host.Do(func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(nobody, 9).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("who"))
			return err
		})
		time.Sleep(time.Second)
	}
	ep.got.wait(t, "the kernel's neighbour solicitation at the endpoint", isNS)
	l.finish(t)
}

// TestE2EHostPathNoEcho: an endpoint's ARP request for the kernel's
// address reaches the kernel (through the host path with afxdp and
// afpacket), whose answer reaches the endpoint; the request does not come
// back to the endpoint as if it had arrived on the NIC (the packet sockets
// on the NIC leave out what the host path put into its ingress, by its
// mark), and neither does a UDP datagram the endpoint sent the kernel.
func TestE2EHostPathNoEcho(t *testing.T) { e2e.ForEachBackend(t, testE2EHostPathNoEcho) }

func testE2EHostPathNoEcho(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	epIP := netlab.Host(netip.PrefixFrom(l.HostIP, 24).Masked(), 11).Addr()
	epMAC := net.HardwareAddr{0x02, 0x00, 0x5e, 0x00, 0x00, 0x52}
	testkit.ServeUDPEcho(t, l.Host, netip.AddrPortFrom(l.HostIP, 7000).String())
	l.startIso(t, "ADD_MACS="+epMAC.String(), "ENDPOINT_ADDRS="+l.Ifname+":"+epIP.String(),
		"DEBUG_PORTS="+l.Ifname+":UDP:7000")
	ep := l.attach(t, "an endpoint with its own MAC")
	own := func(f []byte) bool { return len(f) >= 12 && bytes.Equal(f[6:12], epMAC) }
	ep.send(t, arpRequest(epMAC, epIP, l.HostIP))
	ep.got.wait(t, "the kernel's ARP answer", func(f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 &&
			bytes.Equal(f[28:32], l.HostIP.AsSlice()) && bytes.Equal(f[32:38], epMAC)
	})
	ep.send(t, udpFrame(l.hostMAC, epMAC, epIP, 40000, l.HostIP, 7000, "no echo"))
	ep.got.wait(t, "the kernel's UDP answer", udpTo(l.HostIP, 7000, epIP, 40000, "no echo"))
	// The copies a packet socket would read come before the answers; a
	// moment more for the slower worker.
	time.Sleep(500 * time.Millisecond)
	ep.got.never(t, "the endpoint's own frames, back from the NIC", own)
	l.finish(t)
}

// TestE2EHostPathIPv6: TestE2EHostPath's two directions over IPv6, where
// neighbour discovery instead of ARP finds the other side (the kernel's
// solicitation to a group copied to the endpoint, the answers switched).
func TestE2EHostPathIPv6(t *testing.T) { e2e.ForEachBackend(t, testE2EHostPathIPv6) }

func testE2EHostPathIPv6(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	sn6 := l.NetLab.Subnet6()
	host6, ep6 := netlab.Host(sn6, 1), netlab.Host(sn6, 10)
	if err := l.Host.AddAddr(l.Ifname, host6); err != nil {
		t.Fatal(err)
	}
	l.Before = l.NICState()
	epMAC := net.HardwareAddr{0x02, 0x00, 0x5e, 0x00, 0x00, 0x53}
	open := netip.AddrPortFrom(host6.Addr(), 7000).String()
	testkit.ServeTCPEcho(t, l.Host, open)
	l.startIso(t, "ADD_MACS="+epMAC.String(), "ENDPOINT_ADDRS="+l.Ifname+":"+ep6.Addr().String(),
		"DEBUG_PORTS="+l.Ifname+":TCP:7000")
	cfg := &usnet.Config{Interface: l.Ifname, SocketPath: l.Sock, MAC: epMAC, Addrs: []netip.Prefix{ep6}}
	ln, err := cfg.Listen("tcp6", netip.AddrPortFrom(ep6.Addr(), 8080).String())
	if err != nil {
		t.Fatalf("usnet listen: %v\n%s", err, l.u.LogText())
	}
	defer ln.Close()
	go testkit.EchoAccepted(ln)
	// The kernel's address may still be tentative (DAD): a few tries.
	var kerr error
	for range 5 {
		if kerr = testkit.TCPEcho(l.Host, netip.Addr{}, netip.AddrPortFrom(ep6.Addr(), 8080).String(), 5*time.Second); kerr == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if kerr != nil {
		t.Fatalf("kernel -> endpoint TCP over IPv6: %v\n%s", kerr, l.u.LogText())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := cfg.DialContext(ctx, "tcp6", open)
	if err != nil {
		t.Fatalf("endpoint -> kernel TCP over IPv6 %s: %v\n%s", open, err, l.u.LogText())
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("v6 over the host path")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo over IPv6: %q, %v", got, err)
	}
	c.Close()
	ln.Close()
	l.finish(t)
}
