package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
)

// bootp is a BOOTP/DHCP message (op 1 request, 2 reply) with transaction
// id xid for client hardware address chaddr, of DHCP message type typ.
func bootp(op byte, xid uint32, chaddr net.HardwareAddr, typ byte) string {
	b := make([]byte, 240, 244)
	b[0], b[1], b[2] = op, 1, 6
	binary.BigEndian.PutUint32(b[4:], xid)
	copy(b[28:], chaddr)
	copy(b[236:], []byte{99, 130, 83, 99}) // the magic cookie
	b = append(b, 53, 1, typ, 255)
	return string(b)
}

// dhcpXID matches a DHCP message (UDP sport -> dport) with transaction id xid.
func dhcpXID(sport, dport uint16, xid uint32) func([]byte) bool {
	return func(f []byte) bool {
		u := l4At(f, 17)
		return len(u) >= 8+240 && binary.BigEndian.Uint16(u[0:]) == sport && binary.BigEndian.Uint16(u[2:]) == dport &&
			binary.BigEndian.Uint32(u[8+4:]) == xid
	}
}

// sendRaw sends frame out of link in ns through an AF_PACKET socket.
func sendRaw(t *testing.T, ns *netlab.NS, link string, frame []byte) {
	t.Helper()
	err := ns.Do(func() error {
		lk, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: lk.Index, Halen: 6}
		copy(sa.Addr[:], frame[0:6])
		return unix.Sendto(fd, frame, 0, sa)
	})
	if err != nil {
		t.Fatalf("sending a frame from %s %s: %v", ns, link, err)
	}
}

// TestE2EEndpointDHCP: an endpoint with a MAC of its own (ADD_MACS) sends a
// DHCP request from 0.0.0.0 and gets the answer that a DHCP server at the
// peer (a fake one: it answers UDP 67->68 to the request's chaddr) sends to
// its MAC; the answer does not reach the kernel. The kernel's own DHCP
// answers (to the NIC's MAC, chaddr the NIC's) still reach the kernel's
// port 68 (afxdp, afpacket: the eBPF classifier decides by MAC; with
// macvtap the kernel's TAP gets an answer only through the switch's mark,
// after a request of its own from 0.0.0.0, as before).
func TestE2EEndpointDHCP(t *testing.T) { e2e.ForEachBackend(t, testE2EEndpointDHCP) }

func testE2EEndpointDHCP(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	epMAC := net.HardwareAddr{0x02, 0x00, 0x5e, 0x00, 0x00, 0x42}
	// The kernel's DHCP client port.
	kpc, err := l.Host.ListenPacket("udp", "0.0.0.0:68")
	if err != nil {
		t.Fatal(err)
	}
	defer kpc.Close()
	kernelGot := newRecorder()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := kpc.ReadFrom(buf)
			if err != nil {
				return
			}
			kernelGot.add(buf[:n])
		}
	}()
	l.startIso(t, "ADD_MACS="+epMAC.String())
	ep := l.attach(t, "dhcp client")

	zero, bcast := netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255")
	const xid, kernelXID = 0x5eed0001, 0x5eed0002
	ep.send(t, udpFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, epMAC, zero, 68, bcast, 67, bootp(1, xid, epMAC, 1)))
	req := l.atPeer.wait(t, "the endpoint's DHCP request at the peer", dhcpXID(68, 67, xid))
	chaddr := net.HardwareAddr(l4At(req, 17)[8+28 : 8+34])
	if !bytes.Equal(chaddr, epMAC) {
		t.Fatalf("request's chaddr %v, want %v", chaddr, epMAC)
	}
	// The server answers to the client's MAC.
	sendRaw(t, l.Peer, "eth0", udpFrame(chaddr, l.peerMAC, l.PeerIP, 67, bcast, 68, bootp(2, xid, chaddr, 2)))
	ep.got.wait(t, "the DHCP answer at the endpoint", dhcpXID(67, 68, xid))

	if backend == "macvtap" {
		l.finish(t)
		return
	}
	// The kernel's own answer, after the endpoint's on the same link: the
	// kernel gets it, and (seen after it) not the endpoint's.
	sendRaw(t, l.Peer, "eth0", udpFrame(l.hostMAC, l.peerMAC, l.PeerIP, 67, bcast, 68, bootp(2, kernelXID, l.hostMAC, 2)))
	isXID := func(x uint32) func([]byte) bool {
		return func(p []byte) bool { return len(p) >= 8 && binary.BigEndian.Uint32(p[4:]) == x }
	}
	deadline := time.Now().Add(10 * time.Second)
	for kernelGot.find(isXID(kernelXID)) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if kernelGot.find(isXID(kernelXID)) == nil {
		t.Fatalf("the kernel's own DHCP answer did not reach its port 68\n%s", l.u.LogText())
	}
	kernelGot.never(t, "the endpoint's DHCP answer at the kernel", isXID(xid))
	l.finish(t)
}
