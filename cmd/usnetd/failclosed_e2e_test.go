package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/usnetd/usnetd/backends/macvtap"
	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/testkit"
)

// End-to-end tests of failure handling: the kernel stays firewalled
// through failed starts, kills and (with KEEP_FIREWALL) clean stops, and
// usnetd follows the host's links and addresses.

const (
	answerWait  = 5 * time.Second        // an answer comes well within this
	silenceWait = 700 * time.Millisecond // a dropped SYN: no answer at all
)

// pinDir is where the firewall of the lab's NIC is pinned.
func (l *e2eLab) pinDir() string { return filepath.Join("/sys/fs/bpf/usnetd", l.Ifname) }

// holdMetricsPort binds the METRICS_ADDR that start uses, in the host
// namespace, until the returned function is called.
func (l *e2eLab) holdMetricsPort() (release func()) {
	l.T.Helper()
	ln, err := l.Host.Listen("tcp", "127.0.0.1:9464")
	if err != nil {
		l.T.Fatal(err)
	}
	return func() { ln.Close() }
}

// checkFiltered checks the kernel's firewall from the peer while no usnetd
// serves: with afxdp and afpacket the pinned firewall still lets the
// DEBUG_PORTS port in and drops the closed port's SYN; with macvtap the
// unread macvtap swallows everything (the kernel is cut off), and its
// helper links are there.
func (l *e2eLab) checkFiltered(t *testing.T, backend, when, debug, closed string) {
	t.Helper()
	if backend == "macvtap" {
		if mv, tap := l.HelperLinks(); !mv || !tap {
			t.Fatalf("%s: macvtap left %v, TAP left %v; want both", when, mv, tap)
		}
		if err := testkit.TCPEcho(l.Peer, l.PeerIP, debug, silenceWait); !testkit.IsTimeout(err) {
			t.Fatalf("%s: debug port: %v, want no answer (the macvtap swallows all)", when, err)
		}
		return
	}
	if _, err := os.Stat(filepath.Join(l.pinDir(), "kernel_rules")); err != nil {
		t.Errorf("%s: the firewall's pins: %v", when, err)
	}
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, debug, answerWait); err != nil {
		t.Fatalf("%s: debug port: %v", when, err)
	}
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, closed, silenceWait); !testkit.IsTimeout(err) {
		t.Fatalf("%s: closed port: %v, want no answer (the kernel unfiltered?)", when, err)
	}
}

// checkServing checks a running usnetd: the debug port answers, the closed
// one is silent.
func (l *e2eLab) checkServing(t *testing.T, when, debug, closed string) {
	t.Helper()
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, debug, answerWait); err != nil {
		t.Fatalf("%s: debug port: %v", when, err)
	}
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, closed, silenceWait); !testkit.IsTimeout(err) {
		t.Fatalf("%s: closed port: %v, want no answer", when, err)
	}
}

// TestE2EFailedStartFailsClosed: a start that fails after claiming the NIC
// (here: another process holds METRICS_ADDR) leaves the kernel firewalled,
// both on a fresh host and after a usnetd was killed with SIGKILL (whose
// firewall it took over); the next good start takes the firewall over, and
// its SIGTERM leaves nothing.
func TestE2EFailedStartFailsClosed(t *testing.T) {
	e2e.ForEachBackend(t, testE2EFailedStartFailsClosed)
}

func testE2EFailedStartFailsClosed(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.Backend = backend
	h := l.HostIP.String()
	debug, closed := h+":8022", h+":8024"
	testkit.ServeTCPEcho(t, l.Host, debug)
	testkit.ServeTCPEcho(t, l.Host, closed)
	env := []string{fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname), "BACKEND=" + backend}
	failing := append(slices.Clone(env), "METRICS_ADDR=127.0.0.1:9464")

	// A fresh host: the failed start leaves the firewall it attached.
	release := l.holdMetricsPort()
	msg := l.StartFails(failing...)
	if msg == "" || !strings.Contains(msg, "METRICS_ADDR") {
		t.Fatalf("start with METRICS_ADDR taken: %q, want a METRICS_ADDR error", msg)
	}
	l.checkFiltered(t, backend, "after a failed fresh start", debug, closed)
	release()

	// Killed, then a failed start: still filtered.
	u := l.Start(env...)
	l.checkServing(t, "running", debug, closed)
	if err := u.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-u.Done
	l.checkFiltered(t, backend, "after SIGKILL", debug, closed)
	release = l.holdMetricsPort()
	if msg := l.StartFails(failing...); msg == "" {
		t.Fatal("usnetd started with METRICS_ADDR taken")
	}
	l.checkFiltered(t, backend, "after SIGKILL and a failed start", debug, closed)
	release()

	// The next good start takes over; its clean stop removes everything.
	u = l.Start(env...)
	l.checkServing(t, "after the takeover", debug, closed)
	if backend != "macvtap" && !strings.Contains(u.LogText(), "replaced the program of an earlier instance's link") {
		t.Errorf("the start did not take the pinned links over:\n%s", u.LogText())
	}
	u.Stop(t)
	l.CheckNothingLeft()
}

// TestE2EKeepFirewall: with KEEP_FIREWALL=true a clean stop (SIGTERM)
// leaves the kernel filtered, and the next start takes the firewall over;
// without it, SIGTERM leaves nothing.
func TestE2EKeepFirewall(t *testing.T) { e2e.ForEachBackend(t, testE2EKeepFirewall) }

func testE2EKeepFirewall(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.Backend = backend
	h := l.HostIP.String()
	debug, closed := h+":8022", h+":8024"
	testkit.ServeTCPEcho(t, l.Host, debug)
	testkit.ServeTCPEcho(t, l.Host, closed)
	env := fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname)

	u := l.Start(env, "KEEP_FIREWALL=true")
	l.checkServing(t, "running", debug, closed)
	u.Stop(t)
	if !strings.Contains(u.LogText(), `"reason":"KEEP_FIREWALL=true"`) {
		t.Errorf("the stop does not say that it keeps the firewall:\n%s", u.LogText())
	}
	l.checkFiltered(t, backend, "after SIGTERM with KEEP_FIREWALL", debug, closed)
	if _, err := os.Stat(l.Sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket file left (%v)", err)
	}

	u = l.Start(env)
	l.checkServing(t, "after the takeover", debug, closed)
	u.Stop(t)
	l.CheckNothingLeft()
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, closed, answerWait); err != nil {
		t.Errorf("after SIGTERM without KEEP_FIREWALL the kernel is still filtered: %v", err)
	}
}

// waitMetric polls the metrics until series has value want.
func (l *e2eLab) waitMetric(t *testing.T, series string, want float64) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second) // a busy machine; no speed is asserted
	for {
		v, ok := e2e.MetricValue(l.Scrape(), series)
		if ok && v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v (found %v), want %v", series, v, ok, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventuallyOK polls f until it returns nil, for up to 30 s.
func eventuallyOK(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second) // a busy machine; no speed is asserted
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestE2ELinkRecreated: the NIC is deleted and re-created with the same
// name (as a driver reload or a restarted container's veth does): while it
// is gone, usnetd says so (STATUS=, usnetd_interface_claimed 0) and an
// endpoint's channel stays attached; once it is back, usnetd claims it
// again (usnetd_interface_reattach_total), and when its addresses come the
// kernel is firewalled as before and the endpoint serves its port again.
//
// With macvtap the re-created NIC is claimed before it has addresses, so
// the TAP gets none, and the addresses and routes that come later stay on
// the NIC; the kernel still answers the debug port (an address of the NIC
// is local on the TAP too, and its answers leave through the NIC).
func TestE2ELinkRecreated(t *testing.T) { e2e.ForEachBackend(t, testE2ELinkRecreated) }

func testE2ELinkRecreated(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.Backend = backend
	h := l.HostIP.String()
	debug, closed := h+":8022", h+":8024"
	testkit.ServeTCPEcho(t, l.Host, "0.0.0.0:8022")
	testkit.ServeTCPEcho(t, l.Host, "0.0.0.0:8024")
	notify := e2e.ListenNotify(t)
	// A watchdog of 1 s: a keep-alive every 500 ms while healthy.
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname), "NOTIFY_SOCKET="+notify.Path, "WATCHDOG_USEC=1000000")
	t.Cleanup(func() { u.DumpIfFailed(t) })
	notify.Expect("READY=1")
	notify.Expect("WATCHDOG=1")
	l.checkServing(t, "before", debug, closed)
	claimed := fmt.Sprintf(`usnetd_interface_claimed{interface=%q}`, l.Ifname)
	reattached := fmt.Sprintf(`usnetd_interface_reattach_total{interface=%q}`, l.Ifname)
	l.waitMetric(t, claimed, 1)
	l.waitMetric(t, reattached, 0)

	c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, err := c.RequestUDS(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	udpPort := uint16(7000)
	if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &udpPort, Protocol: 17}); err != nil {
		t.Fatal(err)
	}

	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Host.Do(func() error { return netlink.LinkDel(lk) }); err != nil {
		t.Fatal(err)
	}
	notify.Expect("STATUS=unhealthy: interface " + l.Ifname + " gone")
	l.waitMetric(t, claimed, 0)
	// No keep-alive while the NIC is gone (after one that may have been
	// on its way when the NIC went).
	notify.Drain(750 * time.Millisecond)
	if got := notify.Drain(1500 * time.Millisecond); slices.ContainsFunc(got, func(m string) bool { return strings.Contains(m, "WATCHDOG=1") }) {
		t.Errorf("watchdog keep-alives while the NIC is gone: %q", got)
	}
	if !strings.Contains(u.LogText(), "interface gone") {
		t.Errorf("no log line for the gone interface:\n%s", u.LogText())
	}
	// The endpoint's channel is still attached while the NIC is gone.
	st, err := c.QueryStatus()
	if err != nil {
		t.Fatal(err)
	}
	if n := countEndpoints(st); n != 1 {
		t.Errorf("endpoints while the NIC is gone: %d, want 1 (%+v)", n, st)
	}

	veth, err := l.NetLab.Veth(l.Host, l.Ifname, l.Peer, "eth0", netlab.VethOpts{Queues: 1, Up: true})
	if err != nil {
		t.Fatal(err)
	}
	appeared := time.Now()
	l.waitMetric(t, reattached, 1)
	t.Logf("claimed again %v after the new link was up (polled every 50 ms; not asserted)", time.Since(appeared).Round(time.Millisecond))
	l.waitMetric(t, claimed, 1)
	notify.Expect("STATUS=serving " + l.Ifname)
	notify.Expect("WATCHDOG=1")
	if !strings.Contains(u.LogText(), "interface claimed again") {
		t.Errorf("no log line for the claim of the re-created NIC:\n%s", u.LogText())
	}
	for _, a := range []struct {
		ns   *netlab.NS
		link string
		p    netip.Prefix
	}{{l.Host, l.Ifname, prefixOf(l.HostIP)}, {l.Peer, "eth0", prefixOf(l.PeerIP)}, {l.Peer, "eth0", prefixOf(l.PeerIP2)}} {
		if err := a.ns.AddAddr(a.link, a.p); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Host.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), l.PeerIP, l.Ifname); err != nil {
		t.Fatal(err)
	}
	// Filtered again: the debug port answers once the address has come
	// (polled), the closed port's SYN is dropped.
	eventuallyOK(t, "debug port on the re-created NIC", func() error { return testkit.TCPEcho(l.Peer, l.PeerIP, debug, time.Second) })
	l.checkServing(t, "after the re-creation", debug, closed)
	if backend == "macvtap" {
		if mv, tap := l.HelperLinks(); !mv || !tap {
			t.Errorf("after the re-creation: macvtap %v, TAP %v; want both", mv, tap)
		}
	} else if _, err := os.Stat(filepath.Join(l.pinDir(), "kernel_rules")); err != nil {
		t.Errorf("pins of the new firewall: %v", err)
	}
	// The endpoint's channel, attached before the NIC went, serves its
	// port on the new NIC (from the new NIC's MAC, as a stack sharing the
	// NIC's MAC would after a re-creation).
	answered := e2e.UDPResponder(t, ch, veth.A.MAC, udpPort)
	eventuallyOK(t, "the endpoint's UDP port on the re-created NIC", func() error {
		return testkit.UDPEcho(l.Peer, netip.AddrPortFrom(l.HostIP, udpPort).String(), time.Second)
	})
	if answered.Load() == 0 {
		t.Error("the endpoint answered nothing")
	}
	st, err = c.QueryStatus()
	if err != nil {
		t.Fatal(err)
	}
	if n := countEndpoints(st); n != 1 {
		t.Errorf("endpoints after the re-creation: %d, want 1", n)
	}
	ch.Close()
	c.Close()
	if os.Getenv("E2E_DUMP") != "" {
		t.Logf("usnetd's log:\n%s", u.LogText())
	}
	u.Stop(t)
	// The NIC as it is now (a new link-local address, the routes added
	// here), less usnetd's: nothing of usnetd's may be left.
	l.Before = l.NICState()
	mv, tap := macvtap.Names(l.Ifname)
	l.Before.Links = slices.DeleteFunc(l.Before.Links, func(s string) bool { return s == mv || s == tap })
	l.CheckNothingLeft()
}

func prefixOf(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 24) }

// countEndpoints counts the channels of the endpoints QueryStatus lists.
func countEndpoints(st wire.Status) int {
	n := 0
	for _, e := range st.Endpoints {
		n += e.Channels
	}
	return n
}

// kernelRuleKeys returns the keys of the pinned firewall's kernel_rules
// map (afxdp, afpacket).
func (l *e2eLab) kernelRuleKeys(t *testing.T) [][]byte {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(l.pinDir(), "kernel_rules"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var keys [][]byte
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, slices.Clone(k))
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestE2EAddressFollow: an address added to the NIC gets the DEBUG_PORTS
// (in the switch's table, which QueryUsedPorts shows, and in the
// firewall's map) within moments, and loses them when it is removed; the
// kernel answers the debug port on the new address, and a closed port
// stays closed there.
func TestE2EAddressFollow(t *testing.T) { e2e.ForEachBackend(t, testE2EAddressFollow) }

func testE2EAddressFollow(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.Backend = backend
	testkit.ServeTCPEcho(t, l.Host, "0.0.0.0:8022")
	testkit.ServeTCPEcho(t, l.Host, "0.0.0.0:8024")
	// 8023 is open but has no socket: QueryUsedPorts lists it for its rule.
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022,%s:TCP:8023", l.Ifname, l.Ifname))
	c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	newIP := l.HostIP.Next().Next().Next() // .4: the peer has .2 and .3
	listed := func(a netip.Addr, port uint16) (bool, error) {
		up, err := c.QueryUsedPorts()
		if err != nil {
			return false, err
		}
		for _, e := range up.Listening {
			if e.Protocol == 6 && e.Addr == a && e.Port == port {
				return true, nil
			}
		}
		return false, nil
	}
	inMap := func() int {
		n := 0
		for _, k := range l.kernelRuleKeys(t) {
			if bytes.Contains(k, newIP.AsSlice()) {
				n++
			}
		}
		return n
	}
	if ok, err := listed(newIP, 8023); err != nil || ok {
		t.Fatalf("8023 on %v listed before the address exists: %v %v", newIP, ok, err)
	}

	if err := l.Host.AddAddr(l.Ifname, prefixOf(newIP)); err != nil {
		t.Fatal(err)
	}
	eventuallyOK(t, "DEBUG_PORTS on the added address", func() error {
		for _, p := range []uint16{8022, 8023} {
			if ok, err := listed(newIP, p); err != nil || !ok {
				return fmt.Errorf("QueryUsedPorts: %v:%d listed %v (%v)", newIP, p, ok, err)
			}
		}
		return nil
	})
	if backend != "macvtap" {
		if n := inMap(); n != 2 {
			t.Errorf("firewall map entries on %v: %d, want 2", newIP, n)
		}
	}
	dbg, closed := netip.AddrPortFrom(newIP, 8022).String(), netip.AddrPortFrom(newIP, 8024).String()
	l.checkServing(t, "on the added address", dbg, closed)
	// The old address still works.
	l.checkServing(t, "on the first address", l.HostIP.String()+":8022", l.HostIP.String()+":8024")

	if err := l.Host.Do(func() error {
		lk, err := netlink.LinkByName(l.Ifname)
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(prefixOf(newIP).String())
		if err != nil {
			return err
		}
		return netlink.AddrDel(lk, a)
	}); err != nil {
		t.Fatal(err)
	}
	eventuallyOK(t, "DEBUG_PORTS gone from the removed address", func() error {
		if ok, err := listed(newIP, 8023); err != nil || ok {
			return fmt.Errorf("QueryUsedPorts: %v:8023 still listed (%v)", newIP, err)
		}
		return nil
	})
	if backend != "macvtap" {
		if n := inMap(); n != 0 {
			t.Errorf("firewall map entries on the removed %v: %d, want 0", newIP, n)
		}
	}
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, dbg, silenceWait); err == nil {
		t.Errorf("the debug port answers on the removed address")
	}
	l.checkServing(t, "on the first address, after", l.HostIP.String()+":8022", l.HostIP.String()+":8024")
	c.Close()
	u.Stop(t)
	l.CheckNothingLeft()
}
