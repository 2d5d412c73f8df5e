package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/testkit"
	"github.com/usnetd/usnetd/usnet"
)

// origClient is the original client library (usnet_sockets, "multi" API)
// on the wire: a datagram socket bound at a path of its own, requests as
// serde writes them, answers read into the buffers it reads them into (one
// byte with room for one descriptor for RequestUDS, two bytes for
// AddMatch, 1,000,000 bytes for QueryUsedPorts).
type origClient struct {
	t      *testing.T
	fd     int
	server string
}

func newOrigClient(t *testing.T, server string) *origClient {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), fmt.Sprintf("usnet-client-%d-%d", os.Getpid(), rand.Uint32()))
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &origClient{t: t, fd: fd, server: server}
}

func (c *origClient) send(msg string) {
	c.t.Helper()
	if err := unix.Sendto(c.fd, []byte(msg), 0, &unix.SockaddrUnix{Name: c.server}); err != nil {
		c.t.Fatalf("send %s: %v", msg, err)
	}
}

// recv reads one answer into a buffer of size bytes; it fails the test on
// a truncated answer, as the original panics on one.
func (c *origClient) recv(size int, oob []byte) ([]byte, []byte) {
	c.t.Helper()
	p := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(p, 10000); n == 0 {
		c.t.Fatal("no answer within 10 s")
	}
	buf := make([]byte, size)
	n, oobn, flags, _, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		c.t.Fatal(err)
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		c.t.Fatalf("answer truncated (flags %#x): longer than the original client's %d-byte buffer", flags, size)
	}
	return buf[:n], oob[:oobn]
}

// requestUDS is the original's start: {"RequestUDS":["IF",TID]}, the
// answer "$" with exactly one descriptor.
func (c *origClient) requestUDS(ifname string) *os.File {
	c.t.Helper()
	runtime.LockOSThread() // the original sends its thread id
	tid := unix.Gettid()
	runtime.UnlockOSThread()
	c.send(`{"RequestUDS":["` + ifname + `",` + strconv.Itoa(tid) + `]}`)
	b, oob := c.recv(1, make([]byte, unix.CmsgSpace(4)))
	cms, err := unix.ParseSocketControlMessage(oob)
	if string(b) != "$" || err != nil || len(cms) != 1 {
		c.t.Fatalf("RequestUDS answered %q (%d control messages, %v)", b, len(cms), err)
	}
	fds, err := unix.ParseUnixRights(&cms[0])
	if err != nil || len(fds) != 1 {
		c.t.Fatalf("RequestUDS: %d descriptors, %v", len(fds), err)
	}
	return os.NewFile(uintptr(fds[0]), "channel")
}

// addMatch sends AddMatch as the original writes it and returns the
// two-byte answer.
func (c *origClient) addMatch(dst netip.Addr, dport uint16, src netip.Addr, sport int, proto int) string {
	c.t.Helper()
	c.sendAddMatch(dst, dport, src, sport, proto)
	b, _ := c.recv(2, nil)
	return string(b)
}

// sendAddMatch sends AddMatch as the original writes it.
func (c *origClient) sendAddMatch(dst netip.Addr, dport uint16, src netip.Addr, sport int, proto int) {
	c.t.Helper()
	s, sp := "null", "null"
	if src.IsValid() {
		s, sp = `{"Ipv4":"`+src.String()+`"}`, strconv.Itoa(sport)
	}
	c.send(`{"AddMatch":{"dst_addr":{"Ipv4":"` + dst.String() + `"},"dst_port":` + strconv.Itoa(int(dport)) +
		`,"src_addr":` + s + `,"src_port":` + sp + `,"protocol":` + strconv.Itoa(proto) + `}}`)
}

// tcpSeg builds an Ethernet/IPv4/TCP segment.
func tcpSeg(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, seq uint32, syn, rst bool) []byte {
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, SYN: syn, RST: rst, Window: 64240}
	if err := tcp.SetNetworkLayerForChecksum(ip4); err != nil {
		t.Error(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip4, tcp); err != nil {
		t.Error(err)
	}
	return buf.Bytes()
}

// TestE2EOriginalClient replays what a program built on the original's
// client library does, message by message and socket by socket, from a
// raw client in the test process (sockets in the host namespace):
//
//   - TcpListener::bind / UdpSocket::bind on the NIC's address: a kernel
//     socket on that address and port as a reservation, then AddMatch:
//     OK, and the peer's traffic reaches the client's channel while the
//     reservation socket gets nothing; on 0.0.0.0 the reservation is on
//     127.0.0.1. A port that another process's socket holds is refused.
//   - TcpStream::connect, 5,000 times: AddMatch with the full 5-tuple
//     (never RemoveMatch), a SYN to the peer's kernel, its SYN-ACK back
//     into the channel, a RST: never ER under the default rule limit.
//   - QueryUsedPorts with 50,000 kernel sockets on the host: an answer
//     that fits the original's 1,000,000-byte buffer; QueryPortsInUse
//     holds every kernel port, and usnet's port for a listener on port 0
//     is one that no kernel socket holds.
func TestE2EOriginalClient(t *testing.T) { e2e.ForEachBackend(t, testE2EOriginalClient) }

func testE2EOriginalClient(t *testing.T, backend string) {
	l := newE2ELab(t, 1)
	l.Backend = backend
	testkit.ServeTCPEcho(t, l.Peer, l.PeerIP.String()+":80")
	u := l.Start()
	hostLink, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	peerLink, err := l.Peer.Link("eth0")
	if err != nil {
		t.Fatal(err)
	}
	hostMAC, peerMAC := hostLink.Attrs().HardwareAddr, peerLink.Attrs().HardwareAddr
	h := l.HostIP.String()

	c := newOrigClient(t, l.Sock)
	ch := c.requestUDS(l.Ifname)
	defer ch.Close()

	// The channel's reader: counts what reaches each local port, and
	// answers the peer's SYN-ACKs to the connects with a RST, as a stack
	// whose connect was given up would.
	var (
		mu      sync.Mutex
		perPort = map[uint16]int{}
		acked   atomic.Int64
		pending = map[uint16]uint32{} // connects waiting for their SYN-ACK: port -> ISN
	)
	chFD, err := unix.Dup(int(ch.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		defer unix.Close(chFD)
		b := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			p := []unix.PollFd{{Fd: int32(chFD), Events: unix.POLLIN}}
			if n, _ := unix.Poll(p, 50); n == 0 {
				continue
			}
			n, _, err := unix.Recvfrom(chFD, b, unix.MSG_DONTWAIT)
			if err != nil {
				if p[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
					return // the channel is gone
				}
				continue
			}
			f := b[:n]
			if n < 34 || f[12] != 0x08 || f[13] != 0x00 {
				continue
			}
			ihl := int(f[14]&0x0f) * 4
			if n < 14+ihl+4 {
				continue
			}
			l4h := f[14+ihl:]
			sport, dport := binary.BigEndian.Uint16(l4h[0:]), binary.BigEndian.Uint16(l4h[2:])
			mu.Lock()
			perPort[dport]++
			isn, waiting := pending[dport]
			if waiting && f[23] == 6 && len(l4h) >= 14 && l4h[13]&0x12 == 0x12 && binary.BigEndian.Uint32(l4h[8:]) == isn+1 {
				delete(pending, dport)
				mu.Unlock()
				rst := tcpSeg(t, hostMAC, peerMAC, l.HostIP, l.PeerIP, dport, sport, isn+1, false, true)
				if _, err := unix.Write(chFD, rst); err == nil {
					acked.Add(1)
				}
				continue
			}
			mu.Unlock()
		}
	}()
	defer func() { close(stop); <-stopped }()

	// 1. Binds: the reservations, then AddMatch.
	tcpRes, err := l.Host.Listen("tcp4", h+":7100")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpRes.Close()
	udpRes, err := l.Host.ListenPacket("udp4", h+":7101")
	if err != nil {
		t.Fatal(err)
	}
	defer udpRes.Close()
	tcpAny, err := l.Host.Listen("tcp4", "127.0.0.1:7102") // bind 0.0.0.0: the reservation on 127.0.0.1
	if err != nil {
		t.Fatal(err)
	}
	defer tcpAny.Close()
	udpAny, err := l.Host.ListenPacket("udp4", "127.0.0.1:7103")
	if err != nil {
		t.Fatal(err)
	}
	defer udpAny.Close()
	for _, b := range []struct {
		port  uint16
		proto int
	}{{7100, 6}, {7101, 17}, {7102, 6}, {7103, 17}} {
		if a := c.addMatch(l.HostIP, b.port, netip.Addr{}, 0, b.proto); a != "OK" {
			t.Fatalf("bind %d/%d: AddMatch over the client's own reservation answered %q\n%s", b.port, b.proto, a, u.LogText())
		}
	}
	// Another process's socket still refuses.
	other, err := l.Host.Listen("tcp4", h+":7104")
	if err != nil {
		t.Fatal(err)
	}
	of, err := other.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sleep", "600")
	holder.ExtraFiles = []*os.File{of}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	of.Close()
	other.Close()
	if a := c.addMatch(l.HostIP, 7104, netip.Addr{}, 0, 6); a != "ER" {
		t.Fatalf("AddMatch over another process's kernel socket answered %q, want ER", a)
	}

	// 2. The peer's traffic reaches the channel, not the reservations.
	for _, port := range []string{"7100", "7102"} {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		conn, err := l.Peer.Dial(ctx, "tcp4", h+":"+port)
		cancel()
		if err == nil {
			conn.Close() // nobody in the channel answers: a handshake would be the kernel's
			t.Errorf("TCP connect to %s:%s completed: the kernel's reservation answered", h, port)
		}
	}
	for _, port := range []string{"7101", "7103"} {
		pc, err := l.Peer.ListenPacket("udp4", l.PeerIP.String()+":0")
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := pc.WriteTo([]byte("to the client"), &net.UDPAddr{IP: l.HostIP.AsSlice(), Port: atoi(t, port)}); err != nil {
				t.Fatal(err)
			}
		}
		pc.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		ok := perPort[7100] > 0 && perPort[7101] >= 3 && perPort[7102] > 0 && perPort[7103] >= 3
		got := fmt.Sprint(perPort)
		mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the channel got %s, want the SYNs to 7100/7102 and 3 datagrams each to 7101/7103\n%s", got, u.LogText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = tcpRes.(*net.TCPListener).SetDeadline(time.Now().Add(300 * time.Millisecond))
	if conn, err := tcpRes.Accept(); err == nil {
		conn.Close()
		t.Error("the kernel's TCP reservation accepted a connection")
	}
	_ = udpRes.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, _, err := udpRes.ReadFrom(make([]byte, 100)); err == nil {
		t.Error("the kernel's UDP reservation received a datagram")
	}

	began := time.Now()
	// 3. 5,000 connects, at most 64 waiting for their SYN-ACK at a time.
	// Each is an AddMatch and then its SYN; the threads of a program
	// connect at once, so the client sends up to 8 AddMatch before it
	// reads their answers (in order, on its one socket; usnetd never waits
	// for a client, and a Unix datagram socket queues at most
	// net.unix.max_dgram_qlen, 10 by default).
	const connects, window, burst = 5000, 64, 8
	refused, resent := 0, 0
	var addMatchTime time.Duration
	retry := time.Now()
	for i := 0; i < connects; i += burst {
		n := min(burst, connects-i)
		deadline := time.Now().Add(30 * time.Second)
		for int64(i+n)-acked.Load() > window {
			if time.Now().After(deadline) {
				t.Fatalf("connect %d: SYN-ACKs stopped coming (%d answered)\n%s", i, acked.Load(), u.LogText())
			}
			if time.Since(retry) > time.Second { // SYNs lost (ARP): send them again
				retry = time.Now()
				resent++
				mu.Lock()
				for p, isn := range pending {
					_, _ = ch.Write(tcpSeg(t, hostMAC, peerMAC, l.HostIP, l.PeerIP, p, 80, isn, true, false))
				}
				mu.Unlock()
			}
			time.Sleep(time.Millisecond)
		}
		am := time.Now()
		for k := range n {
			c.sendAddMatch(l.HostIP, uint16(20000+i+k), l.PeerIP, 80, 6)
		}
		answers := make([]string, n)
		for k := range n {
			b, _ := c.recv(2, nil)
			answers[k] = string(b)
		}
		addMatchTime += time.Since(am)
		for k, a := range answers {
			port := uint16(20000 + i + k)
			if a != "OK" {
				refused++
				if refused <= 3 {
					t.Errorf("connect #%d: AddMatch answered %q", i+k+1, a)
				}
				acked.Add(1)
				continue
			}
			isn := rand.Uint32()
			mu.Lock()
			pending[port] = isn
			mu.Unlock()
			if _, err := ch.Write(tcpSeg(t, hostMAC, peerMAC, l.HostIP, l.PeerIP, port, 80, isn, true, false)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if refused > 0 {
		t.Fatalf("%d of %d connects refused", refused, connects)
	}

	t.Logf("%d connects in %v (AddMatch %v of it; SYNs sent again %d times)", connects, time.Since(began).Round(time.Millisecond), addMatchTime.Round(time.Millisecond), resent)
	began = time.Now()
	// 4. 50,000 kernel sockets on the host.
	free := map[uint16]bool{}
	for p := uint16(64000); p < 64010; p++ {
		free[p] = true
	}
	kernelTCP := openKernelSockets(t, l, free, 50000)
	t.Logf("50,000 kernel sockets opened in %v", time.Since(began).Round(time.Millisecond))
	began = time.Now()
	c.send(`"QueryUsedPorts"`)
	b, _ := c.recv(1_000_000, nil)
	t.Logf("QueryUsedPorts answered in %v", time.Since(began).Round(time.Millisecond))
	if !json.Valid(b) || !strings.HasPrefix(string(b), `{"QueryUsedPortsAnswer":`) {
		t.Fatalf("QueryUsedPorts: %d bytes, not the answer: %.200s", len(b), b)
	}
	if want := fmt.Sprintf(`[6,{"Ipv4":"%s"},7100]`, h); !strings.Contains(string(b), want) {
		t.Errorf("QueryUsedPorts lacks the client's rule %s", want)
	}
	t.Logf("QueryUsedPorts with %d kernel sockets: %d bytes", 50000, len(b))
	c.send(`{"QueryPortsInUse":6}`)
	b, _ = c.recv(wire.MaxAnswerSize, nil)
	a, err := wire.DecodeAnswer(b)
	pu, ok := a.(wire.PortsInUse)
	if err != nil || !ok {
		t.Fatalf("QueryPortsInUse: %T %v", a, err)
	}
	missing := 0
	for _, p := range kernelTCP {
		if !pu.Ports.Has(p) {
			missing++
		}
	}
	if missing > 0 || pu.Ports.Has(64005) || !pu.Ports.Has(7100) {
		t.Fatalf("QueryPortsInUse misses %d of the %d kernel TCP ports (64005: %v, 7100: %v)", missing, len(kernelTCP), pu.Ports.Has(64005), pu.Ports.Has(7100))
	}
	// usnet's listener on port 0 takes a port no kernel socket holds.
	cfg := &usnet.Config{Interface: l.Ifname, SocketPath: l.Sock, MAC: hostMAC,
		Addrs: []netip.Prefix{netip.PrefixFrom(l.HostIP, 24)}}
	ln, err := cfg.Listen("tcp4", h+":0")
	if err != nil {
		t.Fatalf("usnet Listen on port 0 with 50,000 kernel sockets: %v", err)
	}
	lp := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	if !free[lp] {
		t.Fatalf("usnet chose port %d, which is not one of the ports the kernel left free", lp)
	}

	// The connects' rules are gone; the four binds' stay.
	cc, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	deadline = time.Now().Add(10 * time.Second)
	for {
		st, err := cc.QueryStatus()
		if err != nil {
			t.Fatal(err)
		}
		n := -1
		for _, ep := range st.Endpoints {
			if ep.PID == int32(os.Getpid()) && ep.Channels == 1 {
				n = len(ep.Rules)
			}
		}
		if n == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client holds %d rules, want its 4 binds' (the connects' ended)", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.send(`"DeleteClient"`)
	u.Stop(t)
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// openKernelSockets opens n kernel sockets in the lab's host namespace:
// TCP listeners on the host's address on every port from 1024 up and above
// the kernel's ephemeral range but the ports in free (and those taken
// already), then bound UDP sockets. It returns the TCP ports. A process
// may hold only RLIMIT_NOFILE descriptors (its hard limit may be below n,
// and raising it needs CAP_SYS_RESOURCE): the sockets are handed in
// batches to child processes (sleep) that hold them until the test ends.
func openKernelSockets(t *testing.T, l *e2eLab, free map[uint16]bool, n int) []uint16 {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < lim.Max { // Go raises it at start; make sure
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	batch := int(min(lim.Cur, 1<<20)) - 2000
	if batch < 1000 {
		t.Fatalf("RLIMIT_NOFILE %d: too low to open %d sockets in batches", lim.Cur, n)
	}
	var (
		fds      []int
		held     int
		tcpPorts []uint16
	)
	hand := func() {
		if len(fds) == 0 {
			return
		}
		files := make([]*os.File, len(fds))
		for i, fd := range fds {
			files[i] = os.NewFile(uintptr(fd), "socket")
		}
		cmd := exec.Command("sleep", "3600")
		cmd.ExtraFiles = files
		err := cmd.Start()
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			t.Fatalf("handing %d sockets to a child: %v", len(files), err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		held += len(fds)
		fds = fds[:0]
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	lo, hi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			lo, hi = atoi(t, f[0]), atoi(t, f[1])
		}
	}
	ip := l.HostIP.As4()
	var openErr error
	open := func(typ int, port int) bool {
		fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			openErr = err
			return false
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: ip}); err != nil {
			unix.Close(fd)
			return false
		}
		if typ == unix.SOCK_STREAM {
			if err := unix.Listen(fd, 1); err != nil {
				unix.Close(fd)
				return false
			}
		}
		fds = append(fds, fd)
		if len(fds) == batch {
			hand()
		}
		return true
	}
	err := l.Host.Do(func() error {
		for p := 1024; p <= 65535 && held+len(fds) < n && openErr == nil; p++ {
			if p >= lo && p <= hi || free[uint16(p)] {
				continue
			}
			if open(unix.SOCK_STREAM, p) {
				tcpPorts = append(tcpPorts, uint16(p))
			}
		}
		for p := 1024; p <= 65535 && held+len(fds) < n && openErr == nil; p++ {
			open(unix.SOCK_DGRAM, p)
		}
		return openErr
	})
	hand()
	if err != nil || held < n {
		t.Fatalf("opened %d of %d kernel sockets: %v", held, n, err)
	}
	return tcpPorts
}
