package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
	"github.com/usnetd/usnetd/internal/usnetdcmd"
)

// End-to-end tests: the real usnetd (this test binary, re-executed as the
// daemon) claims a veth in a "host" namespace; a "peer" namespace talks to
// the host's kernel through it, with real kernel sockets on both sides.
// The harness (lab, start and stop, log, sd_notify, metrics) is
// internal/e2e; TestMain below runs usnetd when it re-executes this binary.
// Each test runs once per backend (e2e.ForEachBackend), as a subtest named
// after it. Timeouts here only tell an answer from none (a
// dropped SYN) or detect a hang; they assert no speed.

func TestMain(m *testing.M) {
	if os.Getenv(e2e.MainEnv) == "1" {
		if p := os.Getenv(daemonProfileEnv); p != "" {
			os.Exit(profiled(p, func() int { return run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr, usnetdcmd.Serve) }))
		}
		main() // exits
	}
	if os.Getenv(serverEnv) != "" {
		os.Exit(serverMain()) // the servers of the peer tests (child_e2e_test.go)
	}
	os.Exit(m.Run())
}

// daemonProfileEnv: the re-executed usnetd writes a CPU profile of its life
// there (for the benchmarks).
const daemonProfileEnv = "USNETD_E2E_DAEMON_CPUPROFILE"

// profiled runs fn with the CPU profiler writing to path.
func profiled(path string, fn func() int) int {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pprof.StopCPUProfile()
	return fn()
}

// e2eLab is the harness's lab (internal/e2e), a type of this package so
// that the tests can give it methods of their own.
type e2eLab struct{ *e2e.Lab }

func newE2ELab(t testing.TB, queues int) *e2eLab { return &e2eLab{e2e.NewLab(t, queues)} }

// newE2ELabMTU is newE2ELab with both veth ends at mtu (0: the default,
// 1500).
func newE2ELabMTU(t testing.TB, queues, mtu int) *e2eLab {
	return &e2eLab{e2e.NewLabMTU(t, queues, mtu)}
}

// TestE2EKernelFirewall: with usnetd on the host's NIC, the kernel keeps
// exactly its own connections and the ports opened for it. With macvtap
// the kernel is a switch port: its own connections are learned by the
// switch from the TAP's frames, DEBUG_PORTS are the TAP port's rules, and
// a closed port's SYN is dropped by the switch (no_match).
func TestE2EKernelFirewall(t *testing.T) { e2e.ForEachBackend(t, testE2EKernelFirewall) }

func testE2EKernelFirewall(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.Backend = backend
	h := l.HostIP.String()
	testkit.ServeTCPEcho(t, l.Host, h+":8022") // DEBUG_PORTS
	testkit.ServeTCPEcho(t, l.Host, h+":8023") // DEBUG_PORTS with REMOTEIP = peerIP2
	testkit.ServeTCPEcho(t, l.Host, h+":8024") // not opened
	testkit.ServeTCPEcho(t, l.Peer, l.PeerIP.String()+":9000")
	testkit.ServeUDPEcho(t, l.Peer, l.PeerIP.String()+":9001")

	notify := e2e.ListenNotify(t)
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022,%s:TCP:8023:%s", l.Ifname, l.Ifname, l.PeerIP2),
		"NOTIFY_SOCKET="+notify.Path)
	notify.Expect("READY=1")
	const answer, silence = 5 * time.Second, 700 * time.Millisecond

	t.Run("debug port reachable", func(t *testing.T) {
		if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8022", answer); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("remote-ip port only from its remote", func(t *testing.T) {
		if err := testkit.TCPEcho(l.Peer, l.PeerIP2, h+":8023", answer); err != nil {
			t.Fatalf("from %s: %v", l.PeerIP2, err)
		}
		if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8023", silence); !testkit.IsTimeout(err) {
			t.Fatalf("from %s: %v, want no answer at all", l.PeerIP, err)
		}
	})
	t.Run("closed port gets no answer, not even RST", func(t *testing.T) {
		if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8024", silence); !testkit.IsTimeout(err) {
			t.Fatalf("%v, want a timeout (a RST would be 'connection refused')", err)
		}
	})
	t.Run("ping to the host is firewalled (until the host pings)", func(t *testing.T) {
		netlab.RequireTool(t, "ping", "iputils-ping")
		out, err := l.Peer.Command(context.Background(), "ping", "-c", "1", "-W", "1", h).CombinedOutput()
		if err == nil {
			t.Fatalf("ping from the peer got an answer:\n%s", out)
		}
	})
	t.Run("kernel's own TCP, UDP and ICMP get replies", func(t *testing.T) {
		if err := testkit.TCPEcho(l.Host, netip.Addr{}, l.PeerIP.String()+":9000", answer); err != nil {
			t.Fatalf("TCP: %v", err)
		}
		if err := testkit.UDPEcho(l.Host, l.PeerIP.String()+":9001", answer); err != nil {
			t.Fatalf("UDP: %v", err)
		}
		netlab.RequireTool(t, "ping", "iputils-ping")
		out, err := l.Host.Command(context.Background(), "ping", "-c", "1", "-W", "5", l.PeerIP.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("ping from the host: %v\n%s", err, out)
		}
	})
	if backend == "macvtap" {
		t.Run("the NIC's routes are on the TAP", func(t *testing.T) {
			if mv, tap := l.HelperLinks(); !mv || !tap {
				t.Fatalf("macvtap %v, TAP %v", mv, tap)
			}
			nic, err := l.Host.Link(l.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			now := l.NICState()
			for _, r := range now.Routes {
				if strings.Contains(r, fmt.Sprintf(" dev %d ", nic.Attrs().Index)) {
					t.Errorf("route still on the NIC: %s", r)
				}
			}
			if len(now.Routes) != len(l.Before.Routes) {
				t.Errorf("routes now %q, before %q", now.Routes, l.Before.Routes)
			}
		})
	}
	t.Run("metrics", func(t *testing.T) {
		m := l.Scrape()
		want := []string{"usnetd_port_rx_packets_total{", `kind="nic"`, "usnetd_rules{"}
		if backend == "macvtap" {
			// The kernel's port, the connections learned from its frames,
			// and the closed port's SYNs dropped by the switch.
			want = append(want, `kind="kernel"`)
			for _, series := range []string{
				`usnetd_rules{interface="` + l.Ifname + `",kind="learned"}`,
				`usnetd_rules{interface="` + l.Ifname + `",kind="registered"}`,
				`usnetd_drops_total{interface="` + l.Ifname + `",reason="no_match"}`,
			} {
				if v, ok := e2e.MetricValue(m, series); !ok || v < 1 {
					t.Errorf("%s = %v (%v), want at least 1", series, v, ok)
				}
			}
		}
		for _, w := range want {
			if !strings.Contains(m, w) {
				t.Errorf("metrics lack %q", w)
			}
		}
		// The live scrape passes promtool's checks (names, HELP, units).
		promtool := netlab.RequireTool(t, "promtool", "prometheus")
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(m)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	})
	u.Stop(t)
	notify.Expect("STOPPING=1")
	l.CheckNothingLeft()
	mode := map[string]string{"afxdp": "xdp ", "macvtap": "macvtap (", "afpacket": "afpacket (tc ingress, "}[backend]
	if log := u.LogText(); !strings.Contains(log, `"message":"interface claimed"`) || !strings.Contains(log, mode) {
		t.Errorf("no 'interface claimed' line with %q:\n%s", mode, log)
	}
}

// TestE2ERestartAfterKill: a usnetd killed with SIGKILL leaves its
// programs attached (the kernel stays firewalled); the next start repairs
// them instead of failing or stacking, and its SIGTERM leaves nothing.
// With macvtap, SIGKILL leaves the macvtap (which, unread, drops
// everything: the kernel is cut off, fail closed) and the persistent TAP
// with the NIC's routes; the next start moves them back and sets up
// afresh, and SIGTERM gives the NIC back as it was.
func TestE2ERestartAfterKill(t *testing.T) { e2e.ForEachBackend(t, testE2ERestartAfterKill) }

func testE2ERestartAfterKill(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.Backend = backend
	h := l.HostIP.String()
	testkit.ServeTCPEcho(t, l.Host, h+":8022")
	env := fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname)
	u := l.Start(env)
	if err := u.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-u.Done
	switch backend {
	case "macvtap":
		if mv, tap := l.HelperLinks(); !mv || !tap {
			t.Fatalf("after SIGKILL: macvtap left %v, TAP left %v; want both", mv, tap)
		}
		if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8022", 700*time.Millisecond); !testkit.IsTimeout(err) {
			t.Fatalf("debug port after SIGKILL: %v, want no answer (the macvtap swallows all)", err)
		}
	default:
		// Still firewalled while nobody runs: the closed port stays closed,
		// the open one stays open (the XDP program is pinned).
		if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8022", 5*time.Second); err != nil {
			t.Fatalf("debug port after SIGKILL: %v", err)
		}
	}
	u2 := l.Start(env)
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8022", 5*time.Second); err != nil {
		t.Fatalf("debug port after restart: %v", err)
	}
	if backend == "macvtap" && !strings.Contains(u2.LogText(), "repaired the leftovers of a crashed run") {
		t.Errorf("the restart does not say that it repaired the leftovers:\n%s", u2.LogText())
	}
	u2.Stop(t)
	l.CheckNothingLeft()
}

// TestE2EEndpoint: a userspace stack attached through control/client on
// the host's IP answers UDP from the peer while the kernel keeps its own
// port; flows spread over both RX queues; PCAP_LOG records the switched
// frames and tcpdump reads them.
func TestE2EEndpoint(t *testing.T) { e2e.ForEachBackend(t, testE2EEndpoint) }

func testE2EEndpoint(t *testing.T, backend string) {
	l := newE2ELab(t, 2)
	l.Backend = backend
	h := l.HostIP.String()
	testkit.ServeTCPEcho(t, l.Host, h+":8022")
	testkit.ServeUDPEcho(t, l.Host, h+":7001") // a kernel UDP port that is NOT opened
	pcapFile := filepath.Join(t.TempDir(), "usnetd.pcap")
	// Two RX workers: AF_XDP has one per queue of the 2-queue veth; the
	// others take WORKERS.
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname), "PCAP_LOG="+pcapFile, "WORKERS=2")

	c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.RequestUDS(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(7000)
	if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &port, Protocol: 17}); err != nil {
		t.Fatal(err)
	}
	// The kernel's DEBUG_PORTS port cannot be taken.
	kport := uint16(8022)
	if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &kport, Protocol: 6}); err == nil {
		t.Fatal("AddMatch of the kernel's DEBUG_PORTS port succeeded")
	}
	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	answered := e2e.UDPResponder(t, ch, lk.Attrs().HardwareAddr, port)

	// 32 flows (source ports) from the peer, a few datagrams each.
	const flows = 32
	for i := range flows {
		if err := testkit.UDPEcho(l.Peer, h+":7000", 5*time.Second); err != nil {
			t.Fatalf("flow %d: %v (answered %d)\n%s", i, err, answered.Load(), u.LogText())
		}
	}
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8022", 5*time.Second); err != nil {
		t.Fatalf("the kernel lost its DEBUG_PORTS port: %v", err)
	}
	if err := testkit.UDPEcho(l.Peer, h+":7001", 700*time.Millisecond); !testkit.IsTimeout(err) {
		t.Fatalf("a kernel UDP port that was not opened answered: %v", err)
	}
	m := l.Scrape()
	for q := range 2 {
		want := fmt.Sprintf(`usnetd_port_rx_queue_packets_total{interface="%s",kind="nic",port="%s",port_id="1",queue="%d"} `, l.Ifname, l.Ifname, q)
		i := strings.Index(m, want)
		if i < 0 {
			t.Fatalf("no counter for queue %d:\n%s", q, e2e.GrepLines(m, "rx_queue"))
		}
		if v := strings.Fields(m[i+len(want):])[0]; v == "0" {
			t.Errorf("queue %d received nothing: flows do not spread over the workers\n%s", q, e2e.GrepLines(m, "rx_queue"))
		}
	}
	st, err := c.QueryStatus()
	if err != nil || len(st.Endpoints) != 1 || st.Endpoints[0].RxPackets == 0 {
		t.Errorf("QueryStatus = %+v, %v", st, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ch.Close()
	u.Stop(t)
	l.CheckNothingLeft()

	out, err := exec.Command(netlab.RequireTool(t, "tcpdump", "tcpdump"), "-n", "-r", pcapFile, "udp port 7000").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	// (tcpdump decodes port 7000 as AFS Rx: count the lines, not "UDP".)
	if n := strings.Count(string(out), ".7000"); n < 2*flows {
		t.Fatalf("PCAP_LOG has %d UDP frames for port 7000, want %d (requests and answers):\n%s", n, 2*flows, out)
	}
}

// unitCapabilities reads the capability set that deploy/usnetd.service
// grants, as setpriv's --bounding-set list ("+net_admin,+net_raw,...").
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/usnetd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapabilityBoundingSet="); ok {
			var caps []string
			for _, c := range strings.Fields(v) {
				caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
			return caps
		}
	}
	t.Fatal("no CapabilityBoundingSet= in deploy/usnetd.service")
	return nil
}

// boundingSet is setpriv's --bounding-set for caps. It adds ipc_lock:
// the unit raises RLIMIT_MEMLOCK to infinity for the AF_XDP UMEM instead
// (LimitMEMLOCK=infinity), which this test cannot do (raising a hard limit
// needs CAP_SYS_RESOURCE, which this machine does not give even to root);
// CAP_IPC_LOCK lifts the same limit and nothing else that matters here.
func boundingSet(caps []string) string {
	s := "-all,+ipc_lock"
	for _, c := range caps {
		s += ",+" + c
	}
	return s
}

// TestE2EMinimalCapabilities: usnetd works with exactly the capabilities
// that its systemd unit grants (root, but no other capability), and with
// any one of them taken away it fails at start with an error, so none of
// them is superfluous. bpffs is already mounted here, as on systemd hosts.
func TestE2EMinimalCapabilities(t *testing.T) {
	netlab.RequireTool(t, "setpriv", "util-linux")
	caps := unitCapabilities(t)
	t.Run("the unit's set", func(t *testing.T) {
		l := newE2ELab(t, 1)
		h := l.HostIP.String()
		testkit.ServeTCPEcho(t, l.Host, h+":8022")
		l.Wrap = []string{"setpriv", "--bounding-set", boundingSet(caps), "--inh-caps", "-all", "--"}
		u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname), "ALLOW_GID=0")
		if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8022", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		ch, err := c.RequestUDS(l.Ifname)
		if err != nil {
			t.Fatalf("RequestUDS under the unit's capabilities: %v", err)
		}
		ch.Close()
		c.Close()
		u.Stop(t)
		l.CheckNothingLeft()
	})
	for i, drop := range caps {
		if drop == "chown" {
			continue // only needed with ALLOW_GID other than usnetd's own group; checked below
		}
		if drop == "dac_read_search" {
			continue // only needed for clients in directories usnetd cannot search: deploy's TestSystemdUnit
		}
		t.Run("without "+drop, func(t *testing.T) {
			l := newE2ELab(t, 1)
			rest := append(append([]string(nil), caps[:i]...), caps[i+1:]...)
			l.Wrap = []string{"setpriv", "--bounding-set", boundingSet(rest), "--inh-caps", "-all", "--"}
			if err := l.StartFails(); err == "" {
				t.Fatalf("usnetd started without %s", drop)
			} else {
				t.Logf("without %s: %s", drop, err)
			}
		})
	}
	t.Run("without chown, ALLOW_GID fails", func(t *testing.T) {
		l := newE2ELab(t, 1)
		var rest []string
		for _, c := range caps {
			if c != "chown" {
				rest = append(rest, c)
			}
		}
		l.Wrap = []string{"setpriv", "--bounding-set", boundingSet(rest), "--inh-caps", "-all", "--"}
		if err := l.StartFails("ALLOW_GID=65534"); err == "" {
			t.Fatal("usnetd gave the control socket to ALLOW_GID without CAP_CHOWN")
		}
	})
}
