package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/netorder"
	"github.com/usnetd/usnetd/internal/testkit"
)

// Endpoint isolation, end to end: two endpoints A and B attach through the
// control socket (RequestUDS, the channel handed over as a descriptor),
// and the test writes frames by hand into A's channel, as an untrusted
// stack could. Each test is one attack, under every backend, and shows in
// the same run that the attack fails (the frame never reaches the peer or
// B; its drop reason is counted in /metrics) and that the legitimate
// traffic next to it works. Frames sent before a legitimate frame on the
// same channel would have arrived before it: "not seen once the later one
// was seen" is how absence is shown, not a timeout.

// isoLab is an e2e lab with usnetd running and the peer's traffic on its
// link captured.
type isoLab struct {
	*e2eLab
	u        *e2e.Usnetd
	hostMAC  net.HardwareAddr
	peerMAC  net.HardwareAddr
	atPeer   *recorder // frames the peer's eth0 received
	attached []*os.File
}

func newIsoLab(t *testing.T, backend string) *isoLab {
	t.Helper()
	l := newE2ELab(t, 1)
	l.Backend = backend
	return &isoLab{e2eLab: l}
}

// startIso starts usnetd (after the caller set up addresses and servers)
// and the capture at the peer.
func (l *isoLab) startIso(t *testing.T, env ...string) {
	t.Helper()
	l.u = l.Start(env...)
	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := l.Peer.Link("eth0")
	if err != nil {
		t.Fatal(err)
	}
	l.hostMAC, l.peerMAC = lk.Attrs().HardwareAddr, pk.Attrs().HardwareAddr
	l.atPeer = capture(t, l.Peer, "eth0")
}

// finish detaches everything, stops usnetd and checks that it left nothing.
func (l *isoLab) finish(t *testing.T) {
	t.Helper()
	for _, f := range l.attached {
		f.Close()
	}
	l.u.Stop(t)
	l.CheckNothingLeft()
}

// endpoint is an attached endpoint: its channel, and what it received.
type endpoint struct {
	name string
	ch   *os.File
	got  *recorder
}

// attach attaches an endpoint as the test process (root) and registers
// matches (UDP ports on the host's IP).
func (l *isoLab) attach(t *testing.T, name string, udpPorts ...uint16) *endpoint {
	t.Helper()
	c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch, err := c.RequestUDS(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range udpPorts {
		if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &p, Protocol: 17}); err != nil {
			t.Fatalf("%s: AddMatch UDP %d: %v", name, p, err)
		}
	}
	return l.track(t, name, ch)
}

func (l *isoLab) track(t *testing.T, name string, ch *os.File) *endpoint {
	ep := &endpoint{name: name, ch: pollable(t, ch), got: newRecorder()}
	l.attached = append(l.attached, ep.ch)
	go func() {
		buf := make([]byte, 4096)
		for {
			if err := ep.ch.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
				return
			}
			n, err := ep.ch.Read(buf)
			if err != nil {
				if os.IsTimeout(err) {
					continue
				}
				return
			}
			ep.got.add(buf[:n])
		}
	}()
	return ep
}

func (ep *endpoint) send(t *testing.T, frames ...[]byte) {
	t.Helper()
	for _, f := range frames {
		if _, err := ep.ch.Write(f); err != nil {
			t.Fatalf("%s: writing a frame: %v", ep.name, err)
		}
	}
}

// drops waits until usnetd counted at least n drops for reason (over all
// ports: the attacker is the only one sending such frames).
func (l *isoLab) drops(t *testing.T, reason string, n float64) {
	t.Helper()
	series := fmt.Sprintf(`usnetd_drops_total{interface="%s",reason="%s"}`, l.Ifname, reason)
	var v float64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if v, _ = e2e.MetricValue(l.Scrape(), series); v >= n {
			return
		}
	}
	t.Fatalf("%s = %v, want at least %v", series, v, n)
}

// recorder keeps the frames a capture or an endpoint received (bounded).
type recorder struct {
	mu     sync.Mutex
	frames [][]byte
	more   chan struct{}
}

const recorderMax = 20000

func newRecorder() *recorder { return &recorder{more: make(chan struct{}, 1)} }

func (r *recorder) add(f []byte) {
	r.mu.Lock()
	if len(r.frames) < recorderMax {
		r.frames = append(r.frames, append([]byte(nil), f...))
	}
	r.mu.Unlock()
	select {
	case r.more <- struct{}{}:
	default:
	}
}

func (r *recorder) find(match func([]byte) bool) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.frames {
		if match(f) {
			return f
		}
	}
	return nil
}

// wait returns the first frame match accepts, waiting up to 10 s for it.
func (r *recorder) wait(t *testing.T, what string, match func([]byte) bool) []byte {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if f := r.find(match); f != nil {
			return f
		}
		select {
		case <-r.more:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("not seen within 10 s: %s", what)
		}
	}
}

// never fails when a frame match accepts was seen.
func (r *recorder) never(t *testing.T, what string, match func([]byte) bool) {
	t.Helper()
	if f := r.find(match); f != nil {
		t.Errorf("seen, must not be: %s\n% x", what, f)
	}
}

// capture records every frame that link in ns receives (not those it
// sends) until the test ends: an AF_PACKET socket opened in ns.
func capture(t *testing.T, ns *netlab.NS, link string) *recorder {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		lk, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		proto := int(netorder.Htons(unix.ETH_P_ALL))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		tv := unix.Timeval{Usec: 100000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: netorder.Htons(unix.ETH_P_ALL), Ifindex: lk.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("capture on %s: %v", link, err)
	}
	r := newRecorder()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 9000)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // the receive timeout: look at stop again
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			r.add(buf[:n])
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		unix.Close(fd)
	})
	return r
}

// Hand-written frames (IPv4; checksums computed, so that the peer's kernel
// takes them).

func ethFrame(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], etherType)
	return append(f, payload...)
}

// ip4 is an IPv4 packet; frag is the flags and fragment offset field.
func ip4(src, dst netip.Addr, proto byte, id, frag uint16, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0], h[8], h[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[4:], id)
	binary.BigEndian.PutUint16(h[6:], frag)
	copy(h[12:16], src.AsSlice())
	copy(h[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(h[10:], e2e.IPChecksum(h))
	return append(h, payload...)
}

// l4Checksum is the TCP/UDP checksum of seg (its checksum field zero)
// with the IPv4 pseudo-header.
func l4Checksum(src, dst netip.Addr, proto byte, seg []byte) uint16 {
	ps := make([]byte, 12, 12+len(seg)+1)
	copy(ps[0:4], src.AsSlice())
	copy(ps[4:8], dst.AsSlice())
	ps[9] = proto
	binary.BigEndian.PutUint16(ps[10:], uint16(len(seg)))
	ps = append(ps, seg...)
	if len(ps)%2 == 1 {
		ps = append(ps, 0)
	}
	return e2e.IPChecksum(ps)
}

func udpSeg(src, dst netip.Addr, sport, dport uint16, data []byte) []byte {
	u := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(data)))
	u = append(u, data...)
	c := l4Checksum(src, dst, 17, u)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return u
}

// udpFrame is a UDP datagram from (src, sport) to (dst, dport).
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, data string) []byte {
	return ethFrame(dstMAC, srcMAC, 0x0800, ip4(src, dst, 17, 1, 0, udpSeg(src, dst, sport, dport, []byte(data))))
}

// synFrame is a TCP SYN from (src, sport) to (dst, dport).
func synFrame(dstMAC, srcMAC net.HardwareAddr, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], 0x1000)
	t[12], t[13] = 5<<4, 0x02 // SYN
	binary.BigEndian.PutUint16(t[14:], 65535)
	binary.BigEndian.PutUint16(t[16:], l4Checksum(src, dst, 6, t))
	return ethFrame(dstMAC, srcMAC, 0x0800, ip4(src, dst, 6, 1, 0x4000, t))
}

// icmpError is an ICMP error (type, code; rest of header mtu) quoting the
// packet quoted.
func icmpError(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, typ, code byte, quoted []byte) []byte {
	m := make([]byte, 8, 8+len(quoted))
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint16(m[6:], 68) // next-hop MTU for "fragmentation needed"
	m = append(m, quoted...)
	binary.BigEndian.PutUint16(m[2:], e2e.IPChecksum(m))
	return ethFrame(dstMAC, srcMAC, 0x0800, ip4(src, dst, 1, 1, 0, m))
}

// quotedUDP is the start of a UDP packet from (src, sport) to (dst, dport),
// as an ICMP error quotes it.
func quotedUDP(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) []byte {
	return ip4(src, dst, 17, 7, 0, udpSeg(src, dst, sport, dport, []byte("quoted"))[:8])
}

func quotedTCP(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) []byte {
	t := make([]byte, 8)
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	return ip4(src, dst, 6, 7, 0x4000, t)
}

// Matchers on received frames.

func isIPv4(f []byte) bool { return len(f) >= 34 && f[12] == 0x08 && f[13] == 0x00 }

func ip4Src(f []byte) netip.Addr { return netip.AddrFrom4([4]byte(f[26:30])) }
func ip4Dst(f []byte) netip.Addr { return netip.AddrFrom4([4]byte(f[30:34])) }

// l4At returns the transport header of an unfragmented (or first) IPv4
// packet with protocol proto, or nil.
func l4At(f []byte, proto byte) []byte {
	if !isIPv4(f) || f[23] != proto {
		return nil
	}
	ihl := int(f[14]&0x0f) * 4
	if binary.BigEndian.Uint16(f[20:22])&0x1fff != 0 || len(f) < 14+ihl+8 {
		return nil
	}
	return f[14+ihl:]
}

// udpTo matches a UDP datagram from src:sport to dst:dport whose payload
// contains data ("" for any).
func udpTo(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, data string) func([]byte) bool {
	return func(f []byte) bool {
		u := l4At(f, 17)
		return u != nil && ip4Src(f) == src && ip4Dst(f) == dst && binary.BigEndian.Uint16(u[0:]) == sport &&
			binary.BigEndian.Uint16(u[2:]) == dport && bytes.Contains(u[8:], []byte(data))
	}
}

// tcpFlags matches a TCP segment from src:sport to dst:dport with all of flags set.
func tcpFlags(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags byte) func([]byte) bool {
	return func(f []byte) bool {
		t := l4At(f, 6)
		return len(t) >= 14 && ip4Src(f) == src && ip4Dst(f) == dst && binary.BigEndian.Uint16(t[0:]) == sport &&
			binary.BigEndian.Uint16(t[2:]) == dport && t[13]&flags == flags
	}
}

// icmpAbout matches an ICMP error whose quoted packet has source port sport.
func icmpAbout(sport uint16) func([]byte) bool {
	return func(f []byte) bool {
		m := l4At(f, 1)
		if m == nil || len(m) < 8+20+4 || m[0] != 3 {
			return false
		}
		q := m[8:]
		qihl := int(q[0]&0x0f) * 4
		return len(q) >= qihl+4 && binary.BigEndian.Uint16(q[qihl:]) == sport
	}
}

// fragWithID matches an IPv4 fragment with identification id and fragment
// offset off (in 8-byte units).
func fragWithID(id, off uint16) func([]byte) bool {
	return func(f []byte) bool {
		return isIPv4(f) && binary.BigEndian.Uint16(f[18:20]) == id && binary.BigEndian.Uint16(f[20:22])&0x1fff == off
	}
}

// TestE2EIsolationAddMatchAndMAC: A may not register a rule for an address
// that is not the host's (a remote service's), and a frame of A's with the
// gateway's MAC as its source is dropped (src_mac) and teaches the switch
// nothing: B's SYN to that service leaves through the NIC, reaches the
// peer, and B gets the SYN-ACK; A gets nothing.
func TestE2EIsolationAddMatchAndMAC(t *testing.T) {
	e2e.ForEachBackend(t, testE2EIsolationAddMatchAndMAC)
}

func testE2EIsolationAddMatchAndMAC(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	service := l.PeerIP2
	testkit.ServeTCPEcho(t, l.Peer, netip.AddrPortFrom(service, 8443).String())
	l.startIso(t)
	c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	chA, err := c.RequestUDS(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	a := l.track(t, "A", chA)
	b := l.attach(t, "B")

	// The attack: a rule for the service's address...
	port := uint16(8443)
	if err := c.AddMatch(wire.Match{DstAddr: service, DstPort: &port, Protocol: 6}); err == nil {
		t.Fatal("AddMatch for a remote address succeeded")
	}
	if v, _ := e2e.MetricValue(l.Scrape(), `usnetd_control_refused_total{reason="address"}`); v != 1 {
		t.Errorf("usnetd_control_refused_total{reason=\"address\"} = %v, want 1", v)
	}
	// ...and a frame from the gateway's MAC.
	a.send(t, udpFrame(l.peerMAC, l.peerMAC, l.HostIP, 45001, l.PeerIP, 9, "from the gateway's MAC"))
	l.drops(t, "src_mac", 1)
	if v, _ := e2e.MetricValue(l.Scrape(), fmt.Sprintf(`usnetd_local_macs{interface="%s"}`, l.Ifname)); v != 1 {
		t.Errorf("usnetd_local_macs = %v, want 1 (the NIC's)", v)
	}
	// The legitimate side: A's rule for the host's own address.
	if err := c.AddMatch(wire.Match{DstAddr: l.HostIP, DstPort: &port, Protocol: 6}); err != nil {
		t.Errorf("AddMatch for the host's address: %v", err)
	}
	// B's SYN to the service reaches the peer, and the answer reaches B.
	b.send(t, synFrame(l.peerMAC, l.hostMAC, l.HostIP, 45000, service, 8443))
	l.atPeer.wait(t, "B's SYN at the peer", tcpFlags(l.HostIP, 45000, service, 8443, 0x02))
	b.got.wait(t, "the service's SYN-ACK at B", tcpFlags(service, 8443, l.HostIP, 45000, 0x12))
	l.atPeer.never(t, "A's frame from the gateway's MAC", udpTo(l.HostIP, 45001, l.PeerIP, 9, ""))
	a.got.never(t, "the service's answer at A", tcpFlags(service, 8443, l.HostIP, 45000, 0))
	l.finish(t)
}

// TestE2EIsolationForgedDNS: B asks a resolver (the peer) from :40000; A
// writes an answer "from the resolver" into B's flow. It is dropped
// (src_ip: not an address A may use); B gets the resolver's real answers
// and never A's, and A's own datagram to B's port, written after the
// forged one (and so queued behind it), arrives.
func TestE2EIsolationForgedDNS(t *testing.T) { e2e.ForEachBackend(t, testE2EIsolationForgedDNS) }

func testE2EIsolationForgedDNS(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	resolver := l.PeerIP2
	testkit.ServeUDPEcho(t, l.Peer, netip.AddrPortFrom(resolver, 53).String()) // answers with the question
	l.startIso(t)
	a := l.attach(t, "A")
	b := l.attach(t, "B", 8053)

	b.send(t, udpFrame(l.peerMAC, l.hostMAC, l.HostIP, 40000, resolver, 53, "first question of B"))
	b.got.wait(t, "the resolver's first answer at B", udpTo(resolver, 53, l.HostIP, 40000, "first question of B"))
	// The attack, to the host's MAC so that it would be switched locally
	// into B's flow; then A's legitimate datagram to B's port, on the same
	// way.
	a.send(t,
		udpFrame(l.hostMAC, l.hostMAC, resolver, 53, l.HostIP, 40000, "forged by A"),
		udpFrame(l.hostMAC, l.hostMAC, l.HostIP, 45053, l.HostIP, 8053, "A to B"),
	)
	l.drops(t, "src_ip", 1)
	b.got.wait(t, "A's datagram to B's port", udpTo(l.HostIP, 45053, l.HostIP, 8053, "A to B"))
	b.send(t, udpFrame(l.peerMAC, l.hostMAC, l.HostIP, 40000, resolver, 53, "second question of B"))
	b.got.wait(t, "the resolver's second answer at B", udpTo(resolver, 53, l.HostIP, 40000, "second question of B"))
	b.got.never(t, "A's forged answer at B", udpTo(resolver, 53, l.HostIP, 40000, "forged by A"))
	l.atPeer.never(t, "A's forged answer on the wire", udpTo(resolver, 53, l.HostIP, 40000, "forged by A"))
	// The answers are B's alone.
	a.got.never(t, "the answers at A", udpTo(resolver, 53, l.HostIP, 40000, ""))
	l.finish(t)
}

// TestE2EIsolationSourceAndPrivilegedPort: A, attached by a process
// without CAP_NET_BIND_SERVICE (uid 65534), sends from a foreign source IP
// (src_ip) and from TCP :700 to an NFS server (src_port_privileged): none
// of it leaves the NIC, and the server's "reply" to :700 reaches no one.
// A's SYN from its own unprivileged port leaves and is answered, and a
// datagram to its registered port reaches it.
func TestE2EIsolationSourceAndPrivilegedPort(t *testing.T) {
	e2e.ForEachBackend(t, testE2EIsolationSourceAndPrivilegedPort)
}

func testE2EIsolationSourceAndPrivilegedPort(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	nfs := netip.AddrPortFrom(l.PeerIP, 2049)
	testkit.ServeTCPEcho(t, l.Peer, nfs.String())
	// A socket path that uid 65534 can reach (t.TempDir's parents are 0700).
	dir := worldDir(t, 0o755)
	l.Sock = filepath.Join(dir, "usnetd.socket")
	l.startIso(t, "ALLOW_GID=65534")
	a := l.attachUnprivileged(t, "A", 7000)

	a.send(t,
		udpFrame(l.peerMAC, l.hostMAC, l.PeerIP2, 45002, l.PeerIP, 9999, "from a foreign source"),
		synFrame(l.peerMAC, l.hostMAC, l.HostIP, 700, nfs.Addr(), nfs.Port()),
	)
	l.drops(t, "src_ip", 1)
	l.drops(t, "src_port_privileged", 1)
	// The legitimate side: from an unprivileged port, and its registered one.
	a.send(t, synFrame(l.peerMAC, l.hostMAC, l.HostIP, 40700, nfs.Addr(), nfs.Port()))
	l.atPeer.wait(t, "A's SYN from :40700 at the peer", tcpFlags(l.HostIP, 40700, nfs.Addr(), nfs.Port(), 0x02))
	a.got.wait(t, "the SYN-ACK to :40700 at A", tcpFlags(nfs.Addr(), nfs.Port(), l.HostIP, 40700, 0x12))
	l.atPeer.never(t, "A's frame from a foreign source", udpTo(l.PeerIP2, 45002, l.PeerIP, 9999, ""))
	l.atPeer.never(t, "A's SYN from :700", tcpFlags(l.HostIP, 700, nfs.Addr(), nfs.Port(), 0x02))
	// The server writes to :700, then to A's registered port.
	pc, err := l.Peer.ListenPacket("udp", netip.AddrPortFrom(l.PeerIP, 2049).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for _, p := range []uint16{700, 7000} {
		if _, err := pc.WriteTo([]byte("to "+strconv.Itoa(int(p))), &net.UDPAddr{IP: l.HostIP.AsSlice(), Port: int(p)}); err != nil {
			t.Fatal(err)
		}
	}
	a.got.wait(t, "the datagram to A's registered port", udpTo(l.PeerIP, 2049, l.HostIP, 7000, "to 7000"))
	a.got.never(t, "the reply to :700 at A", udpTo(l.PeerIP, 2049, l.HostIP, 700, ""))
	l.finish(t)
}

// TestE2EIsolationICMPErrorsAndFragments: A injects "fragmentation needed,
// MTU 68" into B's flow, sends an ICMP error about the kernel's SSH flow
// out of the NIC, a later fragment without its first, and a later fragment
// into B's fragmented datagram: none arrives (icmp_error_foreign,
// frag_foreign). B's flow keeps working, A's ICMP error about its own
// flow leaves, and each sender's own fragmented datagram leaves whole.
func TestE2EIsolationICMPErrorsAndFragments(t *testing.T) {
	e2e.ForEachBackend(t, testE2EIsolationICMPErrorsAndFragments)
}

func testE2EIsolationICMPErrorsAndFragments(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	h := l.HostIP.String()
	testkit.ServeTCPEcho(t, l.Host, h+":8022") // the kernel's "SSH"
	echo := netip.AddrPortFrom(l.PeerIP, 7)
	testkit.ServeUDPEcho(t, l.Peer, echo.String())
	l.startIso(t, fmt.Sprintf("DEBUG_PORTS=%s:TCP:8022", l.Ifname))
	a := l.attach(t, "A", 7000)
	b := l.attach(t, "B")

	// B's flow to the peer's echo server works.
	b.send(t, udpFrame(l.peerMAC, l.hostMAC, l.HostIP, 41000, echo.Addr(), echo.Port(), "B before"))
	b.got.wait(t, "the echo of B's datagram", udpTo(echo.Addr(), echo.Port(), l.HostIP, 41000, "B before"))

	// The attacks.
	a.send(t,
		// Into B's flow: switched locally to B if it got through.
		icmpError(l.hostMAC, l.hostMAC, l.HostIP, l.HostIP, 3, 4, quotedUDP(l.HostIP, 41000, echo.Addr(), echo.Port())),
		// About the kernel's SSH flow, out of the NIC.
		icmpError(l.peerMAC, l.hostMAC, l.HostIP, l.PeerIP, 3, 3, quotedTCP(l.PeerIP, 50022, l.HostIP, 8022)),
		// A later fragment whose first fragment never was.
		ethFrame(l.peerMAC, l.hostMAC, 0x0800, ip4(l.HostIP, echo.Addr(), 17, 0x4242, 3, make([]byte, 16))),
	)
	l.drops(t, "icmp_error_foreign", 2)
	l.drops(t, "frag_foreign", 1)

	// The legitimate side: an error about A's own flow (a datagram that
	// came to its port 7000) leaves; A's own fragmented datagram leaves.
	a.send(t, icmpError(l.peerMAC, l.hostMAC, l.HostIP, l.PeerIP, 3, 3, quotedUDP(l.PeerIP, 5555, l.HostIP, 7000)))
	first, later := fragmented(l.HostIP, 42000, echo, 0x4343, l.peerMAC, l.hostMAC)
	a.send(t, first, later)
	l.atPeer.wait(t, "A's ICMP error about its own flow", icmpAbout(5555))
	l.atPeer.wait(t, "A's first fragment", fragWithID(0x4343, 0))
	l.atPeer.wait(t, "A's later fragment", fragWithID(0x4343, 3))
	l.atPeer.never(t, "A's ICMP error about the kernel's flow", icmpAbout(50022))
	l.atPeer.never(t, "A's lone later fragment", fragWithID(0x4242, 3))
	b.got.never(t, "A's error in B's flow", icmpAbout(41000))

	// B's datagram, and A's fragment injected into it.
	bFirst, bLater := fragmented(l.HostIP, 41000, echo, 0x4444, l.peerMAC, l.hostMAC)
	b.send(t, bFirst)
	a.send(t, ethFrame(l.peerMAC, l.hostMAC, 0x0800, ip4(l.HostIP, echo.Addr(), 17, 0x4444, 5, make([]byte, 16))))
	l.drops(t, "frag_foreign", 2)
	b.send(t, bLater, udpFrame(l.peerMAC, l.hostMAC, l.HostIP, 41000, echo.Addr(), echo.Port(), "B after"))
	b.got.wait(t, "the echo of B's second datagram", udpTo(echo.Addr(), echo.Port(), l.HostIP, 41000, "B after"))
	l.atPeer.wait(t, "B's later fragment", fragWithID(0x4444, 3))
	l.atPeer.never(t, "A's fragment in B's datagram", fragWithID(0x4444, 5))
	l.finish(t)
}

// fragmented is a UDP datagram from (src, sport) to dst in two fragments:
// the first with the UDP header and 16 bytes, the later at offset 24 (3
// units) with 8 bytes.
func fragmented(src netip.Addr, sport uint16, dst netip.AddrPort, id uint16, dstMAC, srcMAC net.HardwareAddr) (first, later []byte) {
	seg := udpSeg(src, dst.Addr(), sport, dst.Port(), []byte("fragmented datagram!")) // 8 + 20 bytes
	seg = append(seg, make([]byte, 32-len(seg))...)
	// The checksum covers the whole datagram: recompute it over 32 bytes.
	binary.BigEndian.PutUint16(seg[4:], 32)
	seg[6], seg[7] = 0, 0
	binary.BigEndian.PutUint16(seg[6:], l4Checksum(src, dst.Addr(), 17, seg))
	first = ethFrame(dstMAC, srcMAC, 0x0800, ip4(src, dst.Addr(), 17, id, 0x2000, seg[:24]))
	later = ethFrame(dstMAC, srcMAC, 0x0800, ip4(src, dst.Addr(), 17, id, 3, seg[24:]))
	return first, later
}

// TestE2EIsolationNeighboursAndHostConfig: A's ARP claiming the peer's
// second address, ARP with the peer's MAC as sender, a neighbour
// advertisement for the peer's IPv6 address, a router advertisement, a
// DHCP server answer and EAPOL never reach the wire (neigh_spoof,
// host_config); A's gratuitous ARP for the host's own address, its
// neighbour solicitation and its DHCP request do.
func TestE2EIsolationNeighboursAndHostConfig(t *testing.T) {
	e2e.ForEachBackend(t, testE2EIsolationNeighboursAndHostConfig)
}

func testE2EIsolationNeighboursAndHostConfig(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	sn6 := l.NetLab.Subnet6()
	host6, peer6 := netlab.Host(sn6, 1), netlab.Host(sn6, 2)
	if err := l.Host.AddAddr(l.Ifname, host6); err != nil {
		t.Fatal(err)
	}
	if err := l.Peer.AddAddr("eth0", peer6); err != nil {
		t.Fatal(err)
	}
	l.Before = l.NICState() // the NIC as usnetd finds it, IPv6 included
	l.startIso(t)
	a := l.attach(t, "A")
	h6, p6 := host6.Addr(), peer6.Addr()

	a.send(t,
		arpFrame(l.hostMAC, l.hostMAC, l.PeerIP2, l.PeerIP, 2),                     // "the peer's second address is at my MAC"
		arpFrame(l.hostMAC, l.peerMAC, l.HostIP, l.PeerIP, 2),                      // the peer's MAC as sender
		ndFrame(l.hostMAC, h6, netip.MustParseAddr("ff02::1"), 136, p6, l.hostMAC), // "the peer's address is at my MAC"
		ndFrame(l.hostMAC, h6, netip.MustParseAddr("ff02::1"), 134, netip.Addr{}, l.hostMAC),
		udpFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, l.hostMAC, l.HostIP, 67,
			netip.MustParseAddr("255.255.255.255"), 68, "DHCP offer by A"),
		ethFrame(net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 3}, l.hostMAC, 0x888e, []byte{2, 1, 0, 0, 'e', 'a', 'p', 'o', 'l'}),
	)
	l.drops(t, "neigh_spoof", 3)
	l.drops(t, "host_config", 3)
	// The legitimate side.
	a.send(t,
		arpFrame(l.hostMAC, l.hostMAC, l.HostIP, l.HostIP, 1), // gratuitous ARP
		neighbourSolicitation(l.hostMAC, h6, p6),
		udpFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, l.hostMAC, netip.MustParseAddr("0.0.0.0"), 68,
			netip.MustParseAddr("255.255.255.255"), 67, "DHCP discover by A"),
	)
	l.atPeer.wait(t, "A's gratuitous ARP", arpClaim(l.HostIP, l.hostMAC))
	l.atPeer.wait(t, "A's neighbour solicitation", ndOf(135, p6))
	l.atPeer.wait(t, "A's DHCP request", udpTo(netip.MustParseAddr("0.0.0.0"), 68, netip.MustParseAddr("255.255.255.255"), 67, "DHCP discover by A"))
	l.atPeer.never(t, "ARP claiming the peer's second address", arpClaim(l.PeerIP2, l.hostMAC))
	l.atPeer.never(t, "ARP with the peer's MAC", arpClaim(l.HostIP, l.peerMAC))
	l.atPeer.never(t, "the neighbour advertisement for the peer's address", ndOf(136, p6))
	l.atPeer.never(t, "the router advertisement", ndOf(134, netip.Addr{}))
	l.atPeer.never(t, "A's DHCP answer", udpTo(l.HostIP, 67, netip.MustParseAddr("255.255.255.255"), 68, ""))
	l.atPeer.never(t, "A's EAPOL", func(f []byte) bool { return len(f) >= 14 && f[12] == 0x88 && f[13] == 0x8e })
	l.finish(t)
}

// arpFrame is an ARP message (op 1 request, 2 reply) with sender (sha,
// spa), broadcast, from src.
func arpFrame(src, sha net.HardwareAddr, spa, tpa netip.Addr, op uint16) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], 0x0800)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:14], sha)
	copy(a[14:18], spa.AsSlice())
	copy(a[24:28], tpa.AsSlice())
	return ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src, 0x0806, a)
}

// arpClaim matches an ARP message whose sender is (spa, sha).
func arpClaim(spa netip.Addr, sha net.HardwareAddr) func([]byte) bool {
	return func(f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && bytes.Equal(f[22:28], sha) && bytes.Equal(f[28:32], spa.AsSlice())
	}
}

// ndFrame is an ICMPv6 neighbour discovery message of type typ from (mac,
// src) to dst with target target (when valid) and a link-layer address
// option (source for 133-135, target for 136-137) with lla.
func ndFrame(mac net.HardwareAddr, src, dst netip.Addr, typ byte, target netip.Addr, lla net.HardwareAddr) []byte {
	body := make([]byte, 8)
	switch typ {
	case 134:
		body = make([]byte, 16)
		body[4] = 64
		binary.BigEndian.PutUint16(body[6:], 1800)
	case 135, 136:
		body = make([]byte, 24)
		if typ == 136 {
			body[4] = 0x20 // override
		}
		t16 := target.As16()
		copy(body[8:24], t16[:])
	}
	body[0] = typ
	opt := byte(1)
	if typ == 136 {
		opt = 2
	}
	body = append(body, opt, 1)
	body = append(body, lla...)
	s16, d16 := src.As16(), dst.As16()
	ps := make([]byte, 0, 40+len(body))
	ps = append(ps, s16[:]...)
	ps = append(ps, d16[:]...)
	ps = binary.BigEndian.AppendUint32(ps, uint32(len(body)))
	ps = append(ps, 0, 0, 0, 58)
	ps = append(ps, body...)
	binary.BigEndian.PutUint16(body[2:], e2e.IPChecksum(ps))
	ip := make([]byte, 40, 40+len(body))
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(body)))
	ip[6], ip[7] = 58, 255
	copy(ip[8:24], s16[:])
	copy(ip[24:40], d16[:])
	return ethFrame(net.HardwareAddr{0x33, 0x33, d16[12], d16[13], d16[14], d16[15]}, mac, 0x86dd, append(ip, body...))
}

// ndOf matches a neighbour discovery message of type typ (with target
// target, when valid).
func ndOf(typ byte, target netip.Addr) func([]byte) bool {
	return func(f []byte) bool {
		if len(f) < 14+40+8 || f[12] != 0x86 || f[13] != 0xdd || f[14+6] != 58 || f[54] != typ {
			return false
		}
		if !target.IsValid() {
			return true
		}
		t16 := target.As16()
		return len(f) >= 54+24 && bytes.Equal(f[54+8:54+24], t16[:])
	}
}

// Attaching as an unprivileged process: the test binary, copied where
// uid 65534 may run it, re-executed with attachEnv set; it attaches an
// endpoint, hands the channel to the test over fd 3 and stays alive (the
// endpoint's lifetime is the process's) until its stdin closes.

const (
	attachEnv      = "USNETD_E2E_ATTACH"       // the control socket
	attachIfEnv    = "USNETD_E2E_ATTACH_IF"    // the interface
	attachDirEnv   = "USNETD_E2E_ATTACH_DIR"   // where the client's socket goes
	attachMatchEnv = "USNETD_E2E_ATTACH_MATCH" // IP:PORT for a UDP AddMatch, or ""
)

func init() {
	if os.Getenv(attachEnv) != "" {
		os.Exit(attachMain())
	}
}

func attachMain() int {
	c, err := client.Dial(client.Options{SocketPath: os.Getenv(attachEnv), Dir: os.Getenv(attachDirEnv)})
	if err != nil {
		fmt.Println("error=" + err.Error())
		return 1
	}
	defer c.Close()
	ch, err := c.RequestUDS(os.Getenv(attachIfEnv))
	if err != nil {
		fmt.Println("error=" + err.Error())
		return 1
	}
	if m := os.Getenv(attachMatchEnv); m != "" {
		ap := netip.MustParseAddrPort(m)
		p := ap.Port()
		if err := c.AddMatch(wire.Match{DstAddr: ap.Addr(), DstPort: &p, Protocol: 17}); err != nil {
			fmt.Println("error=" + err.Error())
			return 1
		}
	}
	if err := unix.Sendmsg(3, []byte("$"), unix.UnixRights(int(ch.Fd())), nil, 0); err != nil {
		fmt.Println("error=" + err.Error())
		return 1
	}
	ch.Close()
	fmt.Println("attached")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// worldDir makes a directory with mode perm outside t.TempDir.
func worldDir(t *testing.T, perm os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "usnetd-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// attachUnprivileged attaches an endpoint from a process with uid and gid
// 65534 and no capabilities, registering UDP udpPort on the host's IP.
func (l *isoLab) attachUnprivileged(t *testing.T, name string, udpPort uint16) *endpoint {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	binDir := worldDir(t, 0o755)
	bin := filepath.Join(binDir, "attach.test")
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err == nil {
		_, err = io.Copy(dst, src)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
	}
	src.Close()
	if err != nil {
		t.Fatal(err)
	}
	clientDir := worldDir(t, 0o777)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	carrier := os.NewFile(uintptr(pair[1]), "carrier")
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = []string{attachEnv + "=" + l.Sock, attachIfEnv + "=" + l.Ifname, attachDirEnv + "=" + clientDir,
		attachMatchEnv + "=" + netip.AddrPortFrom(l.HostIP, udpPort).String(), "PATH=" + os.Getenv("PATH")}
	cmd.ExtraFiles = []*os.File{carrier}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var out strings.Builder
	cmd.Stderr = &out
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	carrier.Close()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line := make([]byte, 256)
	n, _ := io.ReadAtLeast(stdout, line, 1)
	if !strings.HasPrefix(string(line[:n]), "attached") {
		t.Fatalf("the unprivileged client: %q %s", line[:n], out.String())
	}
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(pair[0], make([]byte, 1), oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	cms, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cms) != 1 {
		t.Fatalf("control message: %v", err)
	}
	fds, err := unix.ParseUnixRights(&cms[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("no channel from the unprivileged client: %v", err)
	}
	return l.track(t, name, os.NewFile(uintptr(fds[0]), "channel "+name))
}
