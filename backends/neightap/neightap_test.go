package neightap

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/netorder"
	l4 "github.com/usnetd/usnetd/switch"
)

var (
	broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	testMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0x0e, 0x01}
)

// frame is an Ethernet frame of 64 bytes with ethertype et, from src.
func frame(src net.HardwareAddr, et uint16) []byte {
	b := make([]byte, 64)
	copy(b[0:6], broadcast)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], et)
	return b
}

// arp is an ARP request from src; mark goes into the sender's IP so that
// a test knows its own frames among the kernel's.
func arp(src net.HardwareAddr, mark byte) []byte {
	b := frame(src, l4.EtherTypeARP)
	a := b[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], src)
	copy(a[14:18], []byte{198, 18, 255, mark})
	copy(a[24:28], []byte{198, 18, 255, 254})
	return b
}

// icmp6 is an IPv6 packet from src with next header next and, right
// after the IPv6 header, the ICMPv6 type typ; mark is the last byte of
// the source address.
func icmp6(src net.HardwareAddr, next, typ, mark byte) []byte {
	b := frame(src, l4.EtherTypeIPv6)
	ip := b[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], 8)
	ip[6], ip[7] = next, 255
	copy(ip[8:24], net.ParseIP("2001:db8::ff00"))
	ip[23] = mark
	copy(ip[24:40], net.ParseIP("ff02::1"))
	ip[40] = typ
	return b
}

// udp4 is an IPv4/UDP frame from src.
func udp4(src net.HardwareAddr) []byte {
	b := frame(src, l4.EtherTypeIPv4)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, l4.ProtoUDP
	binary.BigEndian.PutUint16(ip[2:], 50)
	return b
}

// TestFilter runs the tap's classic BPF filter on a Unix datagram socket
// (the kernel applies a socket filter to those as well, at offset 0 of
// the datagram): what it accepts and refuses, and the edges of the
// neighbour-discovery types. No privileges needed.
func TestFilter(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	prog := unix.SockFprog{Len: uint16(len(Filter)), Filter: &Filter[0]}
	if err := unix.SetsockoptSockFprog(fds[1], unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		frame  []byte
		accept bool
	}{
		{"ARP", arp(testMAC, 1), true},
		{"router solicitation", icmp6(testMAC, l4.ProtoICMPv6, 133, 0), true},
		{"router advertisement", icmp6(testMAC, l4.ProtoICMPv6, 134, 0), true},
		{"neighbour solicitation", icmp6(testMAC, l4.ProtoICMPv6, 135, 0), true},
		{"neighbour advertisement", icmp6(testMAC, l4.ProtoICMPv6, 136, 0), true},
		{"redirect", icmp6(testMAC, l4.ProtoICMPv6, 137, 0), true},
		{"ICMPv6 type 132 (below)", icmp6(testMAC, l4.ProtoICMPv6, 132, 0), false},
		{"ICMPv6 type 138 (above)", icmp6(testMAC, l4.ProtoICMPv6, 138, 0), false},
		{"echo request", icmp6(testMAC, l4.ProtoICMPv6, 128, 0), false},
		{"type 135 in UDP, not ICMPv6", icmp6(testMAC, l4.ProtoUDP, 135, 0), false},
		{"IPv4 UDP", udp4(testMAC), false},
		{"short frame", []byte{1, 2, 3}, false},
	}
	buf := make([]byte, 2048)
	for _, c := range cases {
		if _, err := unix.Write(fds[0], c.frame); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		n, _, err := unix.Recvfrom(fds[1], buf, unix.MSG_DONTWAIT)
		got := err == nil
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.accept {
			t.Errorf("%s: accepted %v, want %v", c.name, got, c.accept)
		}
		if got && n != len(c.frame) {
			t.Errorf("%s: %d bytes, want %d", c.name, n, len(c.frame))
		}
	}
}

// rawSender returns a function that sends a frame out of link in ns
// through an AF_PACKET socket.
func rawSender(t *testing.T, ns *netlab.NS, link string) func([]byte) {
	t.Helper()
	l, err := ns.Link(link)
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	to := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Protocol: netorder.Htons(unix.ETH_P_ALL), Halen: 6}
	return func(b []byte) {
		t.Helper()
		if err := unix.Sendto(fd, b, 0, to); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTap opens the tap on a veth end in a lab: from the wire it reads
// ARP and neighbour discovery and nothing else, never what its own host
// sends; the wrapped port's queues work as before, and Close wakes a
// Recv that waits on the tap.
func TestTap(t *testing.T) {
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
	v, err := lab.Veth(host, "eth0", peer, "eth0", netlab.VethOpts{Up: true})
	if err != nil {
		t.Fatal(err)
	}
	inner := memory.New("eth0", l4.PortNIC, memory.Options{Poll: time.Millisecond})
	var p *Port
	if err := host.Do(func() (err error) { p, err = New(inner, v.A.Index); return err }); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.RxQueues() != 2 {
		t.Fatalf("RxQueues = %d, want the inner port's 1 and the tap", p.RxQueues())
	}
	pool, err := l4.NewBufPool(8, 0)
	if err != nil {
		t.Fatal(err)
	}
	bufs := make([]*l4.Buf, 4)
	if n := pool.NewCache().GetBatch(bufs); n != len(bufs) {
		t.Fatalf("%d buffers", n)
	}

	// Queue 0 is the inner port's.
	inner.Inject(0, udp4(testMAC))
	if n, err := p.Recv(0, bufs); n != 1 || err != nil {
		t.Fatalf("Recv(0) = %d, %v: the inner port's frame", n, err)
	}

	fromPeer := rawSender(t, peer, "eth0")
	fromHost := rawSender(t, host, "eth0")
	// Refused first, then what the host sends itself, then accepted: the
	// tap's queue is in order, so once the last accepted frame is read,
	// everything refused would have been read before it.
	fromPeer(udp4(testMAC))
	fromPeer(icmp6(testMAC, l4.ProtoICMPv6, 128, 1))
	fromHost(arp(testMAC, 2))
	fromPeer(arp(testMAC, 3))
	fromPeer(icmp6(testMAC, l4.ProtoICMPv6, 135, 4))
	var seen []string
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < 2 || seen[len(seen)-1] != "ndp 4" {
		if time.Now().After(deadline) {
			t.Fatalf("the tap read %v within 10 s, want arp 3 and ndp 4", seen)
		}
		n, err := p.Recv(1, bufs)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			continue
		}
		if n != 1 {
			t.Fatalf("Recv on the tap returned %d frames, want at most one", n)
		}
		f := bufs[0].Bytes()
		if string(f[6:12]) != string(testMAC) {
			continue // the kernels' own neighbour discovery
		}
		switch binary.BigEndian.Uint16(f[12:]) {
		case l4.EtherTypeARP:
			seen = append(seen, "arp "+string('0'+f[14+17]))
		case l4.EtherTypeIPv6:
			seen = append(seen, "ndp "+string('0'+f[14+23]))
		default:
			seen = append(seen, "other")
		}
	}
	if len(seen) != 2 || seen[0] != "arp 3" {
		t.Errorf("the tap read %v, want [arp 3 ndp 4]: no UDP, no echo request, nothing the host sent", seen)
	}

	// Close wakes a Recv waiting on the tap, and closes the inner port.
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := p.Recv(1, bufs[:1]); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(10 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, l4.ErrPortClosed) {
			t.Errorf("Recv after Close: %v, want ErrPortClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake the tap's Recv")
	}
	if _, err := inner.Recv(0, bufs[:1]); !errors.Is(err, l4.ErrPortClosed) {
		t.Errorf("inner port after Close: %v, want ErrPortClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
