package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/macvtap"
	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/usnetdcmd"
)

// End-to-end tests: the real usnetd (this test binary, re-executed as the
// daemon) claims a veth in a "host" namespace; a "peer" namespace talks to
// the host's kernel through it, with real kernel sockets on both sides.
// Each test runs once per backend (forEachBackend), as a subtest named
// after it. Timeouts here only tell an answer from none (a
// dropped SYN) or detect a hang; they assert no speed.

const mainEnv = "USNETD_E2E_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
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

type e2eLab struct {
	t          testing.TB
	lab        *netlab.Lab
	host, peer *netlab.NS
	ifname     string
	hostIP     netip.Addr
	peerIP     netip.Addr
	peerIP2    netip.Addr // a second peer address, for REMOTEIP rules
	sock       string
	wrap       []string // a command that runs usnetd (setpriv ...), if any
	bin        string   // the usnetd binary to run; "": this test binary, re-executed as usnetd
	backend    string   // BACKEND for the daemon; "" for its default
	before     nicState // the host's NIC before usnetd
}

// e2eBackends are the BACKEND values every end-to-end test runs with.
var e2eBackends = []string{"afxdp", "afpacket", "macvtap"}

// forEachBackend runs body once per backend in e2eBackends, each as a
// subtest named after it; body makes its lab and sets its backend.
func forEachBackend(t *testing.T, body func(t *testing.T, backend string)) {
	for _, b := range e2eBackends {
		t.Run(b, func(t *testing.T) { body(t, b) })
	}
}

func newE2ELab(t testing.TB, queues int) *e2eLab {
	t.Helper()
	return newE2ELabMTU(t, queues, 0)
}

// newE2ELabMTU is newE2ELab with both veth ends at mtu (0: the default,
// 1500).
func newE2ELabMTU(t testing.TB, queues, mtu int) *e2eLab {
	t.Helper()
	lab, err := netlab.New(t, "")
	if err != nil {
		t.Fatal(err)
	}
	host, err := lab.AddNS("host")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := lab.AddNS("peer")
	if err != nil {
		t.Fatal(err)
	}
	// The pin directory is named after the interface: a lab-unique name
	// keeps parallel test runs apart.
	ifname := lab.Name()
	// A failed start, a kill or KEEP_FIREWALL leave the firewall pinned
	// (fail closed): removing the pins detaches it, before the lab goes.
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Join("/sys/fs/bpf/usnetd", ifname)) })
	if _, err := lab.Veth(host, ifname, peer, "eth0", netlab.VethOpts{Queues: queues, MTU: mtu, Up: true}); err != nil {
		t.Fatal(err)
	}
	sn := lab.Subnet()
	l := &e2eLab{t: t, lab: lab, host: host, peer: peer, ifname: ifname,
		hostIP: netlab.Host(sn, 1).Addr(), peerIP: netlab.Host(sn, 2).Addr(), peerIP2: netlab.Host(sn, 3).Addr(),
		sock: filepath.Join(t.TempDir(), "usnetd.socket")}
	for _, a := range []struct {
		ns   *netlab.NS
		link string
		p    netip.Prefix
	}{{host, ifname, netlab.Host(sn, 1)}, {peer, "eth0", netlab.Host(sn, 2)}, {peer, "eth0", netlab.Host(sn, 3)}} {
		if err := a.ns.AddAddr(a.link, a.p); err != nil {
			t.Fatal(err)
		}
	}
	// A default route through the peer, for the backends that move the
	// NIC's routes (macvtap) to give back.
	if err := host.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), l.peerIP, ifname); err != nil {
		t.Fatal(err)
	}
	l.before = l.nicState()
	return l
}

// nicState is the host NIC's addresses and the main table's routes, as
// text, and the names of the host's links.
type nicState struct {
	addrs, routes, links []string
}

func (l *e2eLab) nicState() nicState {
	l.t.Helper()
	var s nicState
	err := l.host.Do(func() error {
		lk, err := netlink.LinkByName(l.ifname)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(lk, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range as {
			s.addrs = append(s.addrs, fmt.Sprintf("%s flags %#x", a.IPNet, a.Flags))
		}
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range rs {
			s.routes = append(s.routes, fmt.Sprintf("%v via %v dev %d src %v proto %d scope %d metric %d",
				r.Dst, r.Gw, r.LinkIndex, r.Src, r.Protocol, r.Scope, r.Priority))
		}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, k := range links {
			s.links = append(s.links, k.Attrs().Name)
		}
		return nil
	})
	if err != nil {
		l.t.Fatal(err)
	}
	slices.Sort(s.addrs)
	slices.Sort(s.routes)
	slices.Sort(s.links)
	return s
}

// usnetd is a running daemon.
type usnetd struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  strings.Builder
	done chan error
}

func (u *usnetd) logText() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.log.String()
}

// start runs usnetd inside the host namespace with env and waits until it
// says it is up.
func (l *e2eLab) start(env ...string) *usnetd {
	t := l.t
	t.Helper()
	argv := append(append([]string(nil), l.wrap...), l.exe())
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{mainEnv + "=1", "PATH=" + os.Getenv("PATH"), "LOG_FORMAT=json", "LOG_LEVEL=debug",
		"INTERFACES=" + l.ifname, "SOCKET_PATH=" + l.sock, "METRICS_ADDR=127.0.0.1:9464", "GORACE=atexit_sleep_ms=0"}, env...)
	if l.backend != "" {
		cmd.Env = append(cmd.Env, "BACKEND="+l.backend)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	u := &usnetd{cmd: cmd, done: make(chan error, 1)}
	if err := l.host.Start(cmd); err != nil {
		t.Fatal(err)
	}
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			u.mu.Lock()
			u.log.WriteString(sc.Text() + "\n")
			u.mu.Unlock()
			if strings.Contains(sc.Text(), `"message":"usnetd is up"`) {
				once.Do(func() { close(up) })
			}
		}
		u.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		// Not stopped by the test (a benchmark, a failure): SIGTERM, so
		// that usnetd removes its pins; SIGKILL would leave them under
		// /sys/fs/bpf/usnetd/ (the lab's interface is gone with the lab).
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-u.done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-u.done
			}
		}
	})
	select {
	case <-up:
	case err := <-u.done:
		t.Fatalf("usnetd exited before it was up: %v\n%s", err, u.logText())
	case <-time.After(120 * time.Second): // loading the eBPF programs takes seconds on a busy machine, more under -race
		t.Fatalf("usnetd not up after 120 s:\n%s", u.logText())
	}
	return u
}

// stop sends SIGTERM and checks the clean exit.
func (u *usnetd) stop(t testing.TB) {
	t.Helper()
	if err := u.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-u.done:
		if err != nil {
			t.Fatalf("usnetd exit after SIGTERM: %v\n%s", err, u.logText())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("usnetd did not stop after SIGTERM:\n%s", u.logText())
	}
}

// serveTCP runs a TCP echo server at addr inside ns until the test ends.
func serveTCP(t *testing.T, ns *netlab.NS, addr string) {
	t.Helper()
	ln, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// serveUDP runs a UDP echo server at addr inside ns until the test ends.
func serveUDP(t *testing.T, ns *netlab.NS, addr string) {
	t.Helper()
	pc, err := ns.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// tcpEcho dials addr from ns (from local source address src, if valid) and
// echoes a message; it returns the dial or echo error.
func tcpEcho(ns *netlab.NS, src netip.Addr, addr string, timeout time.Duration) error {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("hello usnetd")); err != nil {
		return err
	}
	buf := make([]byte, 12)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "hello usnetd" {
		return fmt.Errorf("echo %q", buf)
	}
	return nil
}

func udpEcho(ns *netlab.NS, addr string, timeout time.Duration) error {
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.Dial("udp", addr); return err }); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("echo %q", buf[:n])
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// scrape fetches the metrics inside the host namespace.
func (l *e2eLab) scrape() string {
	l.t.Helper()
	// The transport dials from its own goroutine: dial inside the namespace.
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.host.Dial(ctx, network, addr)
		}}}
	resp, err := c.Get("http://127.0.0.1:9464/metrics")
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		l.t.Fatal(err)
	}
	return string(body)
}

// checkNothingLeft checks that no XDP program, TCX link or pin is left on
// the host's interface, and no control socket file.
func (l *e2eLab) checkNothingLeft() {
	t := l.t
	t.Helper()
	if _, err := os.Stat(filepath.Join("/sys/fs/bpf/usnetd", l.ifname)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left (%v)", err)
	}
	lk, err := l.host.Link(l.ifname)
	if err != nil {
		t.Fatal(err)
	}
	if x := lk.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("XDP program %d still attached", x.ProgId)
	}
	err = l.host.Do(func() error {
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
	if _, err := os.Stat(l.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket file left (%v)", err)
	}
	// The NIC as it was: addresses, routes, and no links of usnetd's
	// (macvtap's helpers) left.
	after := l.nicState()
	for _, c := range []struct {
		what          string
		before, after []string
	}{{"addresses", l.before.addrs, after.addrs}, {"routes", l.before.routes, after.routes}, {"links", l.before.links, after.links}} {
		if !slices.Equal(c.before, c.after) {
			t.Errorf("%s of the host changed:\nbefore %q\nafter  %q", c.what, c.before, c.after)
		}
	}
}

// helperLinks reports which of the macvtap backend's helper links exist.
func (l *e2eLab) helperLinks() (macvtapLink, tapLink bool) {
	mv, tap := macvtap.Names(l.ifname)
	_, err1 := l.host.Link(mv)
	_, err2 := l.host.Link(tap)
	return err1 == nil, err2 == nil
}

// TestE2EKernelFirewall: with usnetd on the host's NIC, the kernel keeps
// exactly its own connections and the ports opened for it. With macvtap
// the kernel is a switch port: its own connections are learned by the
// switch from the TAP's frames, DEBUG_PORTS are the TAP port's rules, and
// a closed port's SYN is dropped by the switch (no_match).
func TestE2EKernelFirewall(t *testing.T) { forEachBackend(t, testE2EKernelFirewall) }

func testE2EKernelFirewall(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.backend = backend
	h := l.hostIP.String()
	serveTCP(t, l.host, h+":8022") // DEBUG_PORTS
	serveTCP(t, l.host, h+":8023") // DEBUG_PORTS with REMOTEIP = peerIP2
	serveTCP(t, l.host, h+":8024") // not opened
	serveTCP(t, l.peer, l.peerIP.String()+":9000")
	serveUDP(t, l.peer, l.peerIP.String()+":9001")

	notify := listenNotify(t)
	u := l.start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022,%s:TCP:8023:%s", l.ifname, l.ifname, l.peerIP2),
		"NOTIFY_SOCKET="+notify.path)
	notify.expect("READY=1")
	const answer, silence = 5 * time.Second, 700 * time.Millisecond

	t.Run("debug port reachable", func(t *testing.T) {
		if err := tcpEcho(l.peer, l.peerIP, h+":8022", answer); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("remote-ip port only from its remote", func(t *testing.T) {
		if err := tcpEcho(l.peer, l.peerIP2, h+":8023", answer); err != nil {
			t.Fatalf("from %s: %v", l.peerIP2, err)
		}
		if err := tcpEcho(l.peer, l.peerIP, h+":8023", silence); !isTimeout(err) {
			t.Fatalf("from %s: %v, want no answer at all", l.peerIP, err)
		}
	})
	t.Run("closed port gets no answer, not even RST", func(t *testing.T) {
		if err := tcpEcho(l.peer, l.peerIP, h+":8024", silence); !isTimeout(err) {
			t.Fatalf("%v, want a timeout (a RST would be 'connection refused')", err)
		}
	})
	t.Run("ping to the host is firewalled (until the host pings)", func(t *testing.T) {
		requireTool(t, "ping", "iputils-ping")
		out, err := l.peer.Command(context.Background(), "ping", "-c", "1", "-W", "1", h).CombinedOutput()
		if err == nil {
			t.Fatalf("ping from the peer got an answer:\n%s", out)
		}
	})
	t.Run("kernel's own TCP, UDP and ICMP get replies", func(t *testing.T) {
		if err := tcpEcho(l.host, netip.Addr{}, l.peerIP.String()+":9000", answer); err != nil {
			t.Fatalf("TCP: %v", err)
		}
		if err := udpEcho(l.host, l.peerIP.String()+":9001", answer); err != nil {
			t.Fatalf("UDP: %v", err)
		}
		requireTool(t, "ping", "iputils-ping")
		out, err := l.host.Command(context.Background(), "ping", "-c", "1", "-W", "5", l.peerIP.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("ping from the host: %v\n%s", err, out)
		}
	})
	if backend == "macvtap" {
		t.Run("the NIC's routes are on the TAP", func(t *testing.T) {
			if mv, tap := l.helperLinks(); !mv || !tap {
				t.Fatalf("macvtap %v, TAP %v", mv, tap)
			}
			nic, err := l.host.Link(l.ifname)
			if err != nil {
				t.Fatal(err)
			}
			now := l.nicState()
			for _, r := range now.routes {
				if strings.Contains(r, fmt.Sprintf(" dev %d ", nic.Attrs().Index)) {
					t.Errorf("route still on the NIC: %s", r)
				}
			}
			if len(now.routes) != len(l.before.routes) {
				t.Errorf("routes now %q, before %q", now.routes, l.before.routes)
			}
		})
	}
	t.Run("metrics", func(t *testing.T) {
		m := l.scrape()
		want := []string{"usnetd_port_rx_packets_total{", `kind="nic"`, "usnetd_rules{"}
		if backend == "macvtap" {
			// The kernel's port, the connections learned from its frames,
			// and the closed port's SYNs dropped by the switch.
			want = append(want, `kind="kernel"`)
			for _, series := range []string{
				`usnetd_rules{interface="` + l.ifname + `",kind="learned"}`,
				`usnetd_rules{interface="` + l.ifname + `",kind="registered"}`,
				`usnetd_drops_total{interface="` + l.ifname + `",reason="no_match"}`,
			} {
				if v, ok := metricValue(m, series); !ok || v < 1 {
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
		promtool, err := exec.LookPath("promtool")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
			}
			t.Skip("promtool not installed")
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(m)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	})
	u.stop(t)
	notify.expect("STOPPING=1")
	l.checkNothingLeft()
	mode := map[string]string{"afxdp": "xdp ", "macvtap": "macvtap (", "afpacket": "afpacket (tc ingress, "}[backend]
	if log := u.logText(); !strings.Contains(log, `"message":"interface claimed"`) || !strings.Contains(log, mode) {
		t.Errorf("no 'interface claimed' line with %q:\n%s", mode, log)
	}
}

// metricValue returns the value of the series (name and labels, exactly
// as exposed) in the metrics text m.
func metricValue(m, series string) (float64, bool) {
	for _, line := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// TestE2ERestartAfterKill: a usnetd killed with SIGKILL leaves its
// programs attached (the kernel stays firewalled); the next start repairs
// them instead of failing or stacking, and its SIGTERM leaves nothing.
// With macvtap, SIGKILL leaves the macvtap (which, unread, drops
// everything: the kernel is cut off, fail closed) and the persistent TAP
// with the NIC's routes; the next start moves them back and sets up
// afresh, and SIGTERM gives the NIC back as it was.
func TestE2ERestartAfterKill(t *testing.T) { forEachBackend(t, testE2ERestartAfterKill) }

func testE2ERestartAfterKill(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.backend = backend
	h := l.hostIP.String()
	serveTCP(t, l.host, h+":8022")
	env := fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.ifname)
	u := l.start(env)
	if err := u.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-u.done
	switch backend {
	case "macvtap":
		if mv, tap := l.helperLinks(); !mv || !tap {
			t.Fatalf("after SIGKILL: macvtap left %v, TAP left %v; want both", mv, tap)
		}
		if err := tcpEcho(l.peer, l.peerIP, h+":8022", 700*time.Millisecond); !isTimeout(err) {
			t.Fatalf("debug port after SIGKILL: %v, want no answer (the macvtap swallows all)", err)
		}
	default:
		// Still firewalled while nobody runs: the closed port stays closed,
		// the open one stays open (the XDP program is pinned).
		if err := tcpEcho(l.peer, l.peerIP, h+":8022", 5*time.Second); err != nil {
			t.Fatalf("debug port after SIGKILL: %v", err)
		}
	}
	u2 := l.start(env)
	if err := tcpEcho(l.peer, l.peerIP, h+":8022", 5*time.Second); err != nil {
		t.Fatalf("debug port after restart: %v", err)
	}
	if backend == "macvtap" && !strings.Contains(u2.logText(), "repaired the leftovers of a crashed run") {
		t.Errorf("the restart does not say that it repaired the leftovers:\n%s", u2.logText())
	}
	u2.stop(t)
	l.checkNothingLeft()
}

// notifySocket plays systemd's NOTIFY_SOCKET.
type notifySocket struct {
	t    *testing.T
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifySocket{t: t, path: path, msgs: make(chan string, 64)}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := pc.Read(buf)
			if err != nil {
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// expect waits for a datagram that contains state.
func (n *notifySocket) expect(state string) {
	n.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-n.msgs:
			if strings.Contains(m, state) {
				return
			}
		case <-deadline:
			n.t.Fatalf("no %s on NOTIFY_SOCKET", state)
		}
	}
}

// udpResponder is a minimal userspace network stack on a usnetd channel:
// it answers every IPv4 UDP datagram to port with the same payload, from
// the host's IP and MAC (it shares them with the kernel), and counts.
func udpResponder(t *testing.T, ch *os.File, mac net.HardwareAddr, port uint16) *atomic.Int64 {
	var answered atomic.Int64
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := ch.Read(buf)
			if err != nil {
				return
			}
			f := buf[:n]
			if n < 42 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 17 {
				continue // not IPv4 UDP (ARP copies, NDP, ...)
			}
			ihl := int(f[14]&0x0f) * 4
			udp := f[14+ihl:]
			if len(udp) < 8 || binary.BigEndian.Uint16(udp[2:]) != port {
				continue
			}
			out := append([]byte(nil), f...)
			copy(out[0:6], f[6:12]) // to the sender
			copy(out[6:12], mac)    // from the NIC's MAC
			ip := out[14:]
			copy(ip[12:16], f[14+16:14+20])
			copy(ip[16:20], f[14+12:14+16])
			ip[8] = 64
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:ihl]))
			u := out[14+ihl:]
			copy(u[0:2], udp[2:4])
			copy(u[2:4], udp[0:2])
			u[6], u[7] = 0, 0 // no UDP checksum (allowed for IPv4)
			if _, err := ch.Write(out); err == nil {
				answered.Add(1)
			}
		}
	}()
	return &answered
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// TestE2EEndpoint: a userspace stack attached through control/client on
// the host's IP answers UDP from the peer while the kernel keeps its own
// port; flows spread over both RX queues; PCAP_LOG records the switched
// frames and tcpdump reads them.
func TestE2EEndpoint(t *testing.T) { forEachBackend(t, testE2EEndpoint) }

func testE2EEndpoint(t *testing.T, backend string) {
	l := newE2ELab(t, 2)
	l.backend = backend
	h := l.hostIP.String()
	serveTCP(t, l.host, h+":8022")
	serveUDP(t, l.host, h+":7001") // a kernel UDP port that is NOT opened
	pcapFile := filepath.Join(t.TempDir(), "usnetd.pcap")
	// Two RX workers: AF_XDP has one per queue of the 2-queue veth; the
	// others take WORKERS.
	u := l.start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.ifname), "PCAP_LOG="+pcapFile, "WORKERS=2")

	c, err := client.Dial(client.Options{SocketPath: l.sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.RequestUDS(l.ifname)
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(7000)
	if err := c.AddMatch(wire.Match{DstAddr: l.hostIP, DstPort: &port, Protocol: 17}); err != nil {
		t.Fatal(err)
	}
	// The kernel's DEBUG_PORTS port cannot be taken.
	kport := uint16(8022)
	if err := c.AddMatch(wire.Match{DstAddr: l.hostIP, DstPort: &kport, Protocol: 6}); err == nil {
		t.Fatal("AddMatch of the kernel's DEBUG_PORTS port succeeded")
	}
	lk, err := l.host.Link(l.ifname)
	if err != nil {
		t.Fatal(err)
	}
	answered := udpResponder(t, ch, lk.Attrs().HardwareAddr, port)

	// 32 flows (source ports) from the peer, a few datagrams each.
	const flows = 32
	for i := range flows {
		if err := udpEcho(l.peer, h+":7000", 5*time.Second); err != nil {
			t.Fatalf("flow %d: %v (answered %d)\n%s", i, err, answered.Load(), u.logText())
		}
	}
	if err := tcpEcho(l.peer, l.peerIP, h+":8022", 5*time.Second); err != nil {
		t.Fatalf("the kernel lost its DEBUG_PORTS port: %v", err)
	}
	if err := udpEcho(l.peer, h+":7001", 700*time.Millisecond); !isTimeout(err) {
		t.Fatalf("a kernel UDP port that was not opened answered: %v", err)
	}
	m := l.scrape()
	for q := range 2 {
		want := fmt.Sprintf(`usnetd_port_rx_queue_packets_total{interface="%s",kind="nic",port="%s",port_id="1",queue="%d"} `, l.ifname, l.ifname, q)
		i := strings.Index(m, want)
		if i < 0 {
			t.Fatalf("no counter for queue %d:\n%s", q, grepLines(m, "rx_queue"))
		}
		if v := strings.Fields(m[i+len(want):])[0]; v == "0" {
			t.Errorf("queue %d received nothing: flows do not spread over the workers\n%s", q, grepLines(m, "rx_queue"))
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
	u.stop(t)
	l.checkNothingLeft()

	out, err := exec.Command(requireTool(t, "tcpdump", "tcpdump"), "-n", "-r", pcapFile, "udp port 7000").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	// (tcpdump decodes port 7000 as AFS Rx: count the lines, not "UDP".)
	if n := strings.Count(string(out), ".7000"); n < 2*flows {
		t.Fatalf("PCAP_LOG has %d UDP frames for port 7000, want %d (requests and answers):\n%s", n, 2*flows, out)
	}
}

func grepLines(s, sub string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
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
	requireTool(t, "setpriv", "util-linux")
	caps := unitCapabilities(t)
	t.Run("the unit's set", func(t *testing.T) {
		l := newE2ELab(t, 1)
		h := l.hostIP.String()
		serveTCP(t, l.host, h+":8022")
		l.wrap = []string{"setpriv", "--bounding-set", boundingSet(caps), "--inh-caps", "-all", "--"}
		u := l.start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.ifname), "ALLOW_GID=0")
		if err := tcpEcho(l.peer, l.peerIP, h+":8022", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		c, err := client.Dial(client.Options{SocketPath: l.sock, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		ch, err := c.RequestUDS(l.ifname)
		if err != nil {
			t.Fatalf("RequestUDS under the unit's capabilities: %v", err)
		}
		ch.Close()
		c.Close()
		u.stop(t)
		l.checkNothingLeft()
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
			l.wrap = []string{"setpriv", "--bounding-set", boundingSet(rest), "--inh-caps", "-all", "--"}
			if err := l.startFails(); err == "" {
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
		l.wrap = []string{"setpriv", "--bounding-set", boundingSet(rest), "--inh-caps", "-all", "--"}
		if err := l.startFails("ALLOW_GID=65534"); err == "" {
			t.Fatal("usnetd gave the control socket to ALLOW_GID without CAP_CHOWN")
		}
	})
}

// startFails runs usnetd expecting it to fail at start; it returns the
// error line, or "" if usnetd came up (and then stops it).
func (l *e2eLab) startFails(env ...string) string {
	t := l.t
	t.Helper()
	argv := append(append([]string(nil), l.wrap...), l.exe())
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{mainEnv + "=1", "PATH=" + os.Getenv("PATH"), "LOG_FORMAT=json",
		"INTERFACES=" + l.ifname, "SOCKET_PATH=" + l.sock, "METRICS_ADDR=", "GORACE=atexit_sleep_ms=0"}, env...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := l.host.Start(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			return ""
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		return lines[len(lines)-1]
	case <-time.After(120 * time.Second): // see start
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Signal(syscall.SIGQUIT) // the Go runtime prints every goroutine
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			t.Fatalf("usnetd did not stop after SIGTERM:\n%s", out.String())
		}
		if strings.Contains(out.String(), "usnetd is up") {
			return ""
		}
		t.Fatalf("usnetd neither failed nor came up:\n%s", out.String())
		return ""
	}
}

// exe is the program that start runs as usnetd.
func (l *e2eLab) exe() string {
	if l.bin != "" {
		return l.bin
	}
	return os.Args[0]
}

var (
	productOnce sync.Once
	productBin  string
	productErr  error
)

// productBinary returns usnetd built as operators build it (go build, no
// race detector), for the tests that measure its memory: under -race the
// test binary that start re-executes carries the race detector's shadow
// memory, several times the program's own.
func productBinary(t testing.TB) string {
	t.Helper()
	gobin := requireTool(t, "go", "golang-go (or Go from go.dev)")
	productOnce.Do(func() {
		dir, err := os.MkdirTemp("", "usnetd-product-")
		if err != nil {
			productErr = err
			return
		}
		productBin = filepath.Join(dir, "usnetd")
		if out, err := exec.Command(gobin, "build", "-o", productBin, ".").CombinedOutput(); err != nil {
			productErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if productErr != nil {
		t.Fatal(productErr)
	}
	return productBin
}
