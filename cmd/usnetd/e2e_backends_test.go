package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/usnetd/usnetd/internal/testkit"
	"github.com/vishvananda/netlink"
)

// End-to-end tests of what only some backends do (e2e_test.go runs the
// others once per backend).

// backendLog is what the "interface claimed" line says of a backend.
var backendLog = map[string]string{
	"afxdp":    `"backend":"afxdp (xdp `,
	"afpacket": `"backend":"afpacket (tc ingress, `,
}

// TestE2EAutoFallback: BACKEND=auto takes AF_XDP where it can; where it
// cannot (here: another program holds the interface's XDP hook, so the
// firewall's XDP attach is refused in native and generic mode), it falls
// back to afpacket, says why in the log, and the kernel is firewalled all
// the same.
func TestE2EAutoFallback(t *testing.T) {
	l := newE2ELab(t, 1)
	l.Backend = "auto"
	h := l.HostIP.String()
	testkit.ServeTCPEcho(t, l.Host, h+":8022") // DEBUG_PORTS
	testkit.ServeTCPEcho(t, l.Host, h+":8024") // not opened
	testkit.ServeTCPEcho(t, l.Peer, l.PeerIP.String()+":9000")
	env := fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname)
	const fallback = `AF_XDP is not available on this interface: falling back to BACKEND=afpacket`

	u := l.Start(env)
	u.Stop(t)
	if log := u.LogText(); !strings.Contains(log, backendLog["afxdp"]) || strings.Contains(log, fallback) {
		t.Fatalf("BACKEND=auto where AF_XDP works did not use afxdp:\n%s", log)
	}
	l.CheckNothingLeft()

	// Another XDP program (XDP_PASS), attached without a bpf_link.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "foreign_xdp", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	const xdpFlagsDrvMode = 1 << 2
	if err := l.Host.Do(func() error { return netlink.LinkSetXdpFdWithFlags(lk, prog.FD(), xdpFlagsDrvMode) }); err != nil {
		t.Fatal(err)
	}
	u = l.Start(env)
	log := u.LogText()
	if !strings.Contains(log, fallback) || !strings.Contains(log, backendLog["afpacket"]) {
		t.Errorf("no fallback to afpacket in the log:\n%s", log)
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, fallback) {
			t.Logf("%s", line)
		}
	}
	if !strings.Contains(log, `"reason":"`) || !strings.Contains(log, "XDP") {
		t.Errorf("the fallback line does not say why:\n%s", log)
	}
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8022", 5*time.Second); err != nil {
		t.Errorf("debug port: %v", err)
	}
	if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8024", 700*time.Millisecond); !testkit.IsTimeout(err) {
		t.Errorf("closed port: %v, want no answer at all", err)
	}
	if err := testkit.TCPEcho(l.Host, netip.Addr{}, l.PeerIP.String()+":9000", 5*time.Second); err != nil {
		t.Errorf("the kernel's own TCP: %v", err)
	}
	u.Stop(t)
	if err := l.Host.Do(func() error { return netlink.LinkSetXdpFdWithFlags(lk, -1, xdpFlagsDrvMode) }); err != nil {
		t.Fatal(err)
	}
	l.CheckNothingLeft()
}

// TestE2EAFPacketWorkers: with afpacket, WORKERS need not match the NIC's
// queues (the fanout group spreads flows over any number of workers).
func TestE2EAFPacketWorkers(t *testing.T) {
	l := newE2ELab(t, 1)
	l.Backend = "afpacket"
	h := l.HostIP.String()
	testkit.ServeTCPEcho(t, l.Host, h+":8022")
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname), "WORKERS=3")
	if log := u.LogText(); !strings.Contains(log, `"workers":3`) || !strings.Contains(log, "3 workers in fanout group") {
		t.Errorf("not 3 workers:\n%s", log)
	}
	for i := range 8 { // a few flows, to spread
		if err := testkit.TCPEcho(l.Peer, l.PeerIP, h+":8022", 5*time.Second); err != nil {
			t.Fatalf("connection %d to the debug port: %v", i, err)
		}
	}
	if m := l.Scrape(); !strings.Contains(m, `usnetd_port_rx_queue_packets_total{`) || !strings.Contains(m, `queue="2"`) {
		t.Errorf("no per-queue counters for 3 workers")
	}
	u.Stop(t)
	l.CheckNothingLeft()
}
