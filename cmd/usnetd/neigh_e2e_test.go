package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/internal/netlab"
)

// TestE2EEndpointGetsNeighbourAnswers: an endpoint that shares the host's
// IP and MAC asks for the peer's MAC (ARP, and IPv6 neighbour
// solicitation) and gets the answers, which the XDP classifier passes to
// the kernel; usnetd's neighbour tap gives the endpoints a copy. Without
// it, a userspace stack on the shared MAC never resolves a neighbour and
// cannot answer even a SYN.
func TestE2EEndpointGetsNeighbourAnswers(t *testing.T) {
	l := newE2ELab(t, 1)
	sn6 := l.NetLab.Subnet6()
	host6, peer6 := netlab.Host(sn6, 1), netlab.Host(sn6, 2)
	if err := l.Host.AddAddr(l.Ifname, host6); err != nil {
		t.Fatal(err)
	}
	if err := l.Peer.AddAddr("eth0", peer6); err != nil {
		t.Fatal(err)
	}
	l.Before = l.NICState() // the NIC as usnetd finds it, IPv6 included
	u := l.Start()
	c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	blocking, err := c.RequestUDS(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	ch := pollable(t, blocking)
	t.Cleanup(func() { ch.Close() })
	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := l.Peer.Link("eth0")
	if err != nil {
		t.Fatal(err)
	}
	mac, peerMAC := lk.Attrs().HardwareAddr, pk.Attrs().HardwareAddr

	t.Run("ARP", func(t *testing.T) {
		req := arpRequest(mac, l.HostIP, l.PeerIP)
		reply := expectFrame(t, ch, req, func(f []byte) bool {
			return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 && // ARP reply
				bytes.Equal(f[28:32], l.PeerIP.AsSlice()) && bytes.Equal(f[32:38], mac)
		})
		if !bytes.Equal(reply[22:28], peerMAC) {
			t.Errorf("ARP reply says %s is at %s, want %s", l.PeerIP, net.HardwareAddr(reply[22:28]), peerMAC)
		}
	})
	t.Run("NDP", func(t *testing.T) {
		ns := neighbourSolicitation(mac, host6.Addr(), peer6.Addr())
		adv := expectFrame(t, ch, ns, func(f []byte) bool {
			return len(f) >= 14+40+24 && f[12] == 0x86 && f[13] == 0xdd && f[14+6] == 58 &&
				f[54] == 136 && bytes.Equal(f[54+8:54+24], peer6.Addr().AsSlice()) // advertisement of peer6
		})
		if !bytes.Equal(adv[6:12], peerMAC) {
			t.Errorf("neighbour advertisement from %s, want %s", net.HardwareAddr(adv[6:12]), peerMAC)
		}
	})
	st, err := c.QueryStatus()
	if err != nil || len(st.Endpoints) != 1 || st.Endpoints[0].RxPackets == 0 {
		t.Errorf("QueryStatus = %+v, %v", st, err)
	}
	c.Close()
	ch.Close()
	u.Stop(t)
	l.CheckNothingLeft()
}

// pollable returns f as a non-blocking file in Go's netpoller, so that
// read deadlines work; f is closed.
func pollable(t *testing.T, f *os.File) *os.File {
	t.Helper()
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), "channel")
}

// expectFrame sends req on the channel (retrying once a second, as a
// stack would) and returns the first frame read back that match accepts.
func expectFrame(t *testing.T, ch *os.File, req []byte, match func([]byte) bool) []byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		if _, err := ch.Write(req); err != nil {
			t.Fatal(err)
		}
		retry := time.Now().Add(time.Second)
		for time.Now().Before(retry) {
			if err := ch.SetReadDeadline(retry); err != nil {
				t.Fatal(err)
			}
			n, err := ch.Read(buf)
			if err != nil {
				break
			}
			if match(buf[:n]) {
				return append([]byte(nil), buf[:n]...)
			}
		}
	}
	t.Fatalf("no answer on the endpoint's channel within 5 s")
	return nil
}

// arpRequest asks who has target, from (mac, sender).
func arpRequest(mac net.HardwareAddr, sender, target netip.Addr) []byte {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	f[12], f[13] = 0x08, 0x06
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], mac)
	copy(a[14:18], sender.AsSlice())
	copy(a[24:28], target.AsSlice())
	return f
}

// neighbourSolicitation asks for target's MAC, from (mac, src), to
// target's solicited-node multicast group.
func neighbourSolicitation(mac net.HardwareAddr, src, target netip.Addr) []byte {
	t16 := target.As16()
	group := [16]byte{0xff, 0x02, 10: 0, 11: 1, 12: 0xff, 13: t16[13], 14: t16[14], 15: t16[15]}
	icmp := make([]byte, 32)
	icmp[0] = 135 // neighbour solicitation
	copy(icmp[8:24], t16[:])
	icmp[24], icmp[25] = 1, 1 // source link-layer address option, 8 bytes
	copy(icmp[26:32], mac)
	s16 := src.As16()
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	add(s16[:])
	add(group[:])
	sum += uint32(len(icmp)) + 58
	add(icmp)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(icmp[2:], ^uint16(sum))

	f := make([]byte, 14+40+len(icmp))
	copy(f[0:6], []byte{0x33, 0x33, 0xff, t16[13], t16[14], t16[15]})
	copy(f[6:12], mac)
	f[12], f[13] = 0x86, 0xdd
	ip := f[14:54]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(icmp)))
	ip[6], ip[7] = 58, 255
	copy(ip[8:24], s16[:])
	copy(ip[24:40], group[:])
	copy(f[54:], icmp)
	return f
}
