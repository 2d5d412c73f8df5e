package firewall

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/netlab"
	l4 "github.com/usnetd/usnetd/switch"
)

// The TC hook on an skb whose linear data ends before the headers do: it
// reads them with bpf_skb_load_bytes and decides as on a linear one. The peer sends
// 5000-byte UDP datagrams from a raw packet socket: the kernel builds such
// an skb from page fragments with only the Ethernet header linear, and the
// veth hands it over as it is (BPF_PROG_TEST_RUN only builds linear skbs,
// so this path needs the lab).
func TestTCNonLinear(t *testing.T) {
	l := newLabVeth(t, netlab.VethOpts{Up: true, MTU: 9000})
	open, err := l.host.ListenPacket("udp4", netip.AddrPortFrom(l.h4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	closed, err := l.host.ListenPacket("udp4", netip.AddrPortFrom(l.h4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer closed.Close()
	openPort := uint16(open.LocalAddr().(*net.UDPAddr).Port)
	closedPort := uint16(closed.LocalAddr().(*net.UDPAddr).Port)
	fw := l.attach(t, Options{Hook: HookTC, Allow: []Allowed{{Key: l4.ListenKey(la(l.h4), l4.ProtoUDP, openPort), Sticky: true}}})

	var fd int
	if err := l.peer.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Ifindex: l.peerIndex, Halen: 6}
	copy(to.Addr[:], l.hostMAC)
	payload := make([]byte, 5000)
	for i := range payload {
		payload[i] = byte(i)
	}
	send := func(port uint16) {
		t.Helper()
		eth := &layers.Ethernet{SrcMAC: macPeer, DstMAC: l.hostMAC, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: l.p4.AsSlice(), DstIP: l.h4.AsSlice()}
		udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(port)}
		_ = udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, ip, udp, gopacket.Payload(payload)); err != nil {
			t.Fatal(err)
		}
		if err := unix.Sendto(fd, buf.Bytes(), 0, to); err != nil {
			t.Fatalf("raw send: %v", err)
		}
	}

	before := counters(t, fw)
	send(openPort)
	got := make([]byte, 9000)
	_ = open.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := open.ReadFrom(got)
	if err != nil || n != len(payload) || got[4999] != payload[4999] {
		t.Fatalf("open port: %d bytes, %v", n, err)
	}
	send(closedPort)
	_ = closed.SetReadDeadline(time.Now().Add(hang))
	if n, _, err := closed.ReadFrom(got); err == nil {
		t.Fatalf("closed port got %d bytes", n)
	}
	c := counters(t, fw)
	d := map[string]uint64{}
	for k, v := range c {
		d[k] = v - before[k]
	}
	t.Logf("counters moved by %v", d)
	if d["pass_allowed"] < 1 || d["tc_dropped"] < 1 || d["parse_error"] != 0 {
		t.Errorf("counters moved by %v: want one pass_allowed, one tc_dropped, no parse_error", d)
	}
}
