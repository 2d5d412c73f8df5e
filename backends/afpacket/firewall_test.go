package afpacket

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/usnetd/usnetd/firewall"
)

// What the port sends never passes tc egress (PACKET_QDISC_BYPASS), so the
// firewall's egress learner never takes an endpoint's flow for the
// kernel's: the kernel would see its replies (and answer them with RSTs or
// ICMP errors). The kernel's own datagram, as a control, is learned.
func TestSendBypassesEgressLearner(t *testing.T) {
	tl := newTestLab(t, 0)
	var fw *firewall.Firewall
	err := tl.host.Do(func() (err error) {
		fw, err = firewall.Attach(firewall.Options{Interface: tl.veth.A.Name, Hook: firewall.HookTC,
			PinRoot: "/sys/fs/bpf/usnetd-test-" + tl.lab.Name()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fw.Close(); err != nil {
			t.Error(err)
		}
	})
	p := tl.open(Options{})
	conn, err := tl.peer.ListenPacket("udp4", netip.AddrPortFrom(tl.peerIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()

	const n = 10
	bs := bufs(t, n)
	for i, b := range bs {
		b.SetLen(copy(b.Data(), udpFrame(t, tl.veth.A.MAC, tl.veth.B.MAC, tl.hostIP, 5000, tl.peerIP, to.Port(), payloadOf(i))))
	}
	if sent, err := p.Send(bs); sent != n || err != nil {
		t.Fatalf("Send: %d, %v", sent, err)
	}
	buf := make([]byte, 2048)
	for i := range n {
		_ = conn.SetReadDeadline(time.Now().Add(hang))
		if _, _, err := conn.ReadFrom(buf); err != nil {
			t.Fatalf("peer read %d: %v", i, err)
		}
	}
	c, err := fw.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"learn_new", "learn_refresh", "learn_covered", "learn_skipped", "learn_failed"} {
		if c[k] != 0 {
			t.Errorf("%s = %d: the port's frames went through tc egress", k, c[k])
		}
	}
	es, err := fw.KernelEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 0 {
		t.Errorf("kernel entries after the port sent: %v", es)
	}

	// Control: the kernel's own datagram is learned.
	hc, err := tl.host.ListenPacket("udp4", netip.AddrPortFrom(tl.hostIP, 5001).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	if _, err := hc.WriteTo([]byte("kernel"), net.UDPAddrFromAddrPort(to)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(hang))
	if _, _, err := conn.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	if es, err := fw.KernelEntries(); err != nil || len(es) != 1 || !es[0].Learned || es[0].Key.LocalPort != 5001 {
		t.Errorf("after the kernel sent: %v, %v; want its flow learned", es, err)
	}
}
