package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
)

// TestE2EKernelOnlyNoDrops: with BACKEND=afpacket, traffic that is the
// kernel's alone (a DEBUG_PORTS HTTP server serving 1 MiB and taking a
// 3 MiB upload, and connections the kernel opens to the peer) moves no
// drop counter: the socket filter keeps the kernel's frames out of the
// packet sockets, so they are neither copied nor counted (they used to
// show as port_gone). Without the filter the NIC port read 101 frames
// of a 1 MiB download alone, each a port_gone drop.
// ARP and IPv6 are kept off the wire (permanent neighbours, IPv6 off):
// they are shared frames that the switch also offers to endpoints, and
// with none attached it counts them as no_match.
func TestE2EKernelOnlyNoDrops(t *testing.T) {
	netlab.RequireTool(t, "curl", "curl")
	l := newPeerLab(t)
	l.Backend = "afpacket"
	quiet(t, l.Host, l.Ifname, l.PeerIP, l.Peer, "eth0", l.HostIP)
	l.Before = l.NICState() // without IPv6: what usnetd must give back
	h := l.HostIP.String()
	serveKernelHTTP(t, l.Host, h+":8081")
	testkit.ServeTCPEcho(t, l.Peer, l.PeerIP.String()+":9000")
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8081", l.Ifname))

	before := l.Scrape()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	body, err := l.Peer.Command(ctx, "curl", "-sS", "--max-time", "20", fmt.Sprintf("http://%s:8081/download", h)).Output()
	if err != nil || len(body) != downloadSize {
		t.Fatalf("download from the kernel: %d bytes, %v\n%s", len(body), err, u.LogText())
	}
	upload := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(upload, make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := l.Peer.Command(ctx, "curl", "-sS", "--max-time", "20", "--data-binary", "@"+upload, fmt.Sprintf("http://%s:8081/upload", h)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("received %d", 3<<20)) {
		t.Fatalf("upload to the kernel: %v\n%s", err, out)
	}
	for range 5 {
		if err := testkit.TCPEcho(l.Host, l.HostIP, l.PeerIP.String()+":9000", 5*time.Second); err != nil {
			t.Fatalf("the kernel's own connection to the peer: %v", err)
		}
	}
	after := l.Scrape()

	for _, line := range strings.Split(after, "\n") {
		if !strings.HasPrefix(line, "usnetd_drops_total{") && !strings.HasPrefix(line, "usnetd_port_drops_total{") &&
			!strings.HasPrefix(line, "usnetd_backend_drops_total{") && !strings.HasPrefix(line, "usnetd_ring_dropped_total{") {
			continue
		}
		if f := strings.Fields(line); len(f) == 2 && f[1] != "0" {
			t.Errorf("a drop counter moved under kernel-only traffic: %s", line)
		}
	}
	// The filter, not luck: the kernel took 3 MiB in (over 2,000
	// frames), and the NIC port read almost none of them.
	series := fmt.Sprintf(`usnetd_port_rx_packets_total{interface="%s",kind="nic",port="%s",port_id="1"}`, l.Ifname, l.Ifname)
	rx0, ok0 := e2e.MetricValue(before, series)
	rx1, ok1 := e2e.MetricValue(after, series)
	if !ok0 || !ok1 || rx1-rx0 > 20 {
		t.Errorf("the NIC port read %v frames (%v, %v) during the kernel's traffic; want almost none\n%s", rx1-rx0, ok0, ok1, e2e.GrepLines(after, "rx_packets"))
	}
	t.Logf("NIC port frames read during the kernel's traffic (1 MiB out, 3 MiB in): %v", rx1-rx0)
	u.Stop(t)
	l.CheckNothingLeft()
}

// quiet keeps ARP and IPv6 off a veth pair: permanent neighbour entries
// both ways and IPv6 switched off on both ends.
func quiet(t *testing.T, a *netlab.NS, aLink string, bIP netip.Addr, b *netlab.NS, bLink string, aIP netip.Addr) {
	t.Helper()
	pair := []struct {
		ns          *netlab.NS
		link, other string
		otherNS     *netlab.NS
		otherIP     []byte
	}{{a, aLink, bLink, b, bIP.AsSlice()}, {b, bLink, aLink, a, aIP.AsSlice()}}
	for _, p := range pair {
		peerLink, err := p.otherNS.Link(p.other)
		if err != nil {
			t.Fatal(err)
		}
		err = p.ns.Do(func() error {
			lk, err := netlink.LinkByName(p.link)
			if err != nil {
				return err
			}
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+p.link+"/disable_ipv6", []byte("1"), 0); err != nil {
				return err
			}
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: lk.Attrs().Index, Family: netlink.FAMILY_V4,
				State: netlink.NUD_PERMANENT, IP: p.otherIP, HardwareAddr: peerLink.Attrs().HardwareAddr})
		})
		if err != nil {
			t.Fatalf("quiet %s: %v", p.link, err)
		}
	}
}
