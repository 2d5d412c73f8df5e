package usnet

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// seg is a TCP segment (or UDP datagram, proto 17) the relay forwarded.
type seg struct {
	fromA        bool
	proto        uint8
	sport, dport uint16
	seq          uint32
	flags        uint8
	plen         int
	win          uint16
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// relay sits between two stacks: it forwards every frame, records the
// IPv4 TCP and UDP ones, and can hold back the frames from b to a (gate).
type relay struct {
	mu    sync.Mutex
	segs  []seg
	gated bool
	held  [][]byte
	toA   *os.File
	wg    sync.WaitGroup
}

func (r *relay) record(fromA bool, f []byte) {
	if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return
	}
	ip := f[14:]
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total > len(ip) || ihl < 20 || total < ihl+8 {
		return
	}
	l4 := ip[ihl:total]
	s := seg{fromA: fromA, proto: ip[9], sport: binary.BigEndian.Uint16(l4), dport: binary.BigEndian.Uint16(l4[2:])}
	switch s.proto {
	case 6:
		if len(l4) < 20 {
			return
		}
		off := int(l4[12]>>4) * 4
		s.seq = binary.BigEndian.Uint32(l4[4:])
		s.flags = l4[13]
		s.win = binary.BigEndian.Uint16(l4[14:])
		s.plen = len(l4) - off
	case 17:
		s.plen = len(l4) - 8
	default:
		return
	}
	r.mu.Lock()
	r.segs = append(r.segs, s)
	r.mu.Unlock()
}

// gate holds back (true) or releases (false) the frames from b to a.
func (r *relay) gate(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gated = on
	if !on {
		for _, f := range r.held {
			r.toA.Write(f)
		}
		r.held = nil
	}
}

// snapshot returns the segments recorded so far that match keep.
func (r *relay) snapshot(keep func(seg) bool) []seg {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []seg
	for _, s := range r.segs {
		if keep(s) {
			out = append(out, s)
		}
	}
	return out
}

// pollable makes a *os.File of a socket in the runtime's poller, so that
// Close wakes a Read.
func pollable(t *testing.T, fd int, name string) *os.File {
	t.Helper()
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), name)
}

// relayedPair is stackPair with a relay in the middle, both stacks opened.
func relayedPair(t *testing.T) (sa, sb *Stack, r *relay) {
	t.Helper()
	a, fa, b, fb := stackPair(t)
	fa.ch.Close()
	fb.ch.Close()
	var ends [2][2]int
	for i := range ends {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		ends[i] = [2]int{fds[0], fds[1]}
	}
	fa.ch = os.NewFile(uintptr(ends[0][0]), "chan-a")
	fb.ch = os.NewFile(uintptr(ends[1][0]), "chan-b")
	atRelayA := pollable(t, ends[0][1], "relay-a")
	atRelayB := pollable(t, ends[1][1], "relay-b")
	r = &relay{toA: atRelayA}
	fwd := func(from, to *os.File, fromA bool) {
		defer r.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := from.Read(buf)
			if err != nil {
				return
			}
			f := buf[:n]
			r.record(fromA, f)
			r.mu.Lock()
			if !fromA && r.gated {
				r.held = append(r.held, append([]byte(nil), f...))
				r.mu.Unlock()
				continue
			}
			r.mu.Unlock()
			to.Write(f)
		}
	}
	r.wg.Add(2)
	go fwd(atRelayA, atRelayB, true)
	go fwd(atRelayB, atRelayA, false)
	var err error
	if sa, err = Open(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if sb, err = Open(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sa.Close()
		sb.Close()
		atRelayA.Close()
		atRelayB.Close()
		r.wg.Wait()
	})
	return sa, sb, r
}

// connected dials from a to a listener on b and returns both ends.
func connected(t *testing.T, sa, sb *Stack, port int) (ac, bc *TCPConn) {
	t.Helper()
	ln, err := sb.Listen("tcp4", net.JoinHostPort("", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	ac, err = sa.DialTCP(context.Background(), "tcp4", net.JoinHostPort("198.18.0.2", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("no connection accepted")
	}
	return ac, c.(*TCPConn)
}

// fromPort keeps the TCP segments a sent from local port p.
func fromPort(c *TCPConn) func(seg) bool {
	p := uint16(c.LocalAddr().(*net.TCPAddr).Port)
	return func(s seg) bool { return s.fromA && s.proto == 6 && s.sport == p }
}

// TestKeepAlive: with keep-alive on and a short idle time and interval,
// the idle connection sends probes (empty segments one before the next
// sequence number), the peer answers them and the connection stays; with
// the peer's answers held back, Count probes go unanswered and the
// connection is dropped. Without keep-alive an idle connection sends
// nothing.
func TestKeepAlive(t *testing.T) {
	sa, sb, r := relayedPair(t)
	quiet, _ := connected(t, sa, sb, 7001)
	ka, kb := connected(t, sa, sb, 7002)
	if err := ka.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 100 * time.Millisecond, Interval: 100 * time.Millisecond, Count: 3}); err != nil {
		t.Fatal(err)
	}
	if !ka.ep.SocketOptions().GetKeepAlive() {
		t.Error("keep-alive not on after SetKeepAliveConfig")
	}
	// Data first, so that the sequence number is known.
	if _, err := ka.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(kb, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	probes := func(c *TCPConn) int {
		ss := r.snapshot(fromPort(c))
		var next uint32
		n := 0
		for _, s := range ss {
			if s.plen > 0 {
				next = s.seq + uint32(s.plen)
			} else if s.plen == 0 && s.flags&(tcpSYN|tcpFIN|tcpRST) == 0 && next != 0 && s.seq == next-1 {
				n++
			}
		}
		return n
	}
	qBefore := len(r.snapshot(fromPort(quiet)))
	waitFor(t, "three keep-alive probes", func() bool { return probes(ka) >= 3 })
	if n := len(r.snapshot(fromPort(quiet))); n != qBefore {
		t.Errorf("the connection without keep-alive sent %d segments while idle", n-qBefore)
	}
	// Answered probes keep the connection: it still carries data.
	if _, err := kb.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(ka, make([]byte, 1)); err != nil {
		t.Fatalf("connection with answered keep-alives: %v", err)
	}
	// A peer that no longer answers: Count probes, then the connection goes.
	r.gate(true)
	defer r.gate(false)
	ka.SetReadDeadline(time.Now().Add(time.Minute))
	_, err := ka.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
		t.Fatalf("read on a connection whose peer stopped answering keep-alives: %v, want a connection error", err)
	}
	t.Logf("dead peer: %v after %d probes", err, probes(ka))
}

// TestNoDelay: with Nagle's algorithm (SetNoDelay(false)) small writes
// wait while a segment is unacknowledged: with the peer's ACKs held back,
// 20 one-byte writes leave as one segment. With SetNoDelay(true), the
// default, they leave at once, one segment each (up to the congestion
// window).
func TestNoDelay(t *testing.T) {
	sa, sb, r := relayedPair(t)
	dataSeqs := func(c *TCPConn) int {
		seqs := map[uint32]bool{}
		for _, s := range r.snapshot(fromPort(c)) {
			if s.plen > 0 {
				seqs[s.seq] = true
			}
		}
		return len(seqs)
	}
	run := func(noDelay bool, port int) int {
		ac, bc := connected(t, sa, sb, port)
		defer ac.Close()
		defer bc.Close()
		if ac.ep.SocketOptions().GetDelayOption() {
			t.Fatal("a new connection delays (Nagle on); net's default is no delay")
		}
		if err := ac.SetNoDelay(noDelay); err != nil {
			t.Fatal(err)
		}
		if got := !ac.ep.SocketOptions().GetDelayOption(); got != noDelay {
			t.Fatalf("SetNoDelay(%v): gVisor's delay option says no delay = %v", noDelay, got)
		}
		r.gate(true)
		for range 20 {
			if _, err := ac.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		if noDelay {
			waitFor(t, "segments without delay", func() bool { return dataSeqs(ac) >= 5 })
		} else {
			time.Sleep(150 * time.Millisecond) // what would leave without Nagle has left by now
		}
		n := dataSeqs(ac)
		r.gate(false)
		if _, err := io.ReadFull(bc, make([]byte, 20)); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := run(false, 7003); n != 1 {
		t.Errorf("Nagle: 20 small writes with the first unacknowledged left in %d segments, want 1", n)
	}
	if n := run(true, 7004); n < 5 {
		t.Errorf("no delay: 20 small writes left in %d segments, want one each up to the congestion window", n)
	}
}

// inFlight writes from ac to bc (which does not read) until the stack
// stops sending, and returns how many bytes left a on the wire and how
// many the Write accepted (deadline: a second).
func inFlight(t *testing.T, r *relay, ac *TCPConn) (wire, written int) {
	t.Helper()
	ac.SetWriteDeadline(time.Now().Add(time.Second))
	written, err := ac.Write(make([]byte, 16<<20))
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("write to a peer that does not read: %d bytes, %v; want a timeout", written, err)
	}
	// Bytes sent: the span of sequence numbers of the data segments
	// (retransmissions count once).
	var first uint32
	for i, s := range r.snapshot(func(s seg) bool { return fromPort(ac)(s) && s.plen > 0 }) {
		if i == 0 {
			first = s.seq
		}
		wire = max(wire, int(s.seq-first)+s.plen)
	}
	return wire, written
}

// TestTCPBuffers: SetReadBuffer bounds the window the reader advertises,
// so that a writer's data in flight to a reader that does not read stays
// within it; SetWriteBuffer bounds how much a Write hands to the stack
// beyond that. Both read back from gVisor.
func TestTCPBuffers(t *testing.T) {
	sa, sb, r := relayedPair(t)
	type result struct{ wire, written int }
	run := func(port, rcv, snd int) result {
		ac, bc := connected(t, sa, sb, port)
		defer ac.Close()
		defer bc.Close()
		if err := bc.SetReadBuffer(rcv); err != nil {
			t.Fatal(err)
		}
		if err := ac.SetWriteBuffer(snd); err != nil {
			t.Fatal(err)
		}
		if got := bc.ep.SocketOptions().GetReceiveBufferSize(); got != int64(rcv) {
			t.Errorf("SetReadBuffer(%d): gVisor has %d", rcv, got)
		}
		if got := ac.ep.SocketOptions().GetSendBufferSize(); got != int64(snd) {
			t.Errorf("SetWriteBuffer(%d): gVisor has %d", snd, got)
		}
		w, n := inFlight(t, r, ac)
		return result{w, n}
	}
	small := run(7005, 16<<10, 16<<10)
	large := run(7006, 1<<20, 4<<20)
	t.Logf("read/write buffers 16 KiB: %d bytes sent, %d written; 1 MiB/4 MiB: %d sent, %d written", small.wire, small.written, large.wire, large.written)
	if small.wire > 64<<10 {
		t.Errorf("16 KiB read buffer: %d bytes in flight to a reader that does not read", small.wire)
	}
	if large.wire < 256<<10 {
		t.Errorf("1 MiB read buffer: only %d bytes in flight", large.wire)
	}
	if small.written > small.wire+64<<10 {
		t.Errorf("16 KiB write buffer: Write took %d bytes, %d of them sent", small.written, small.wire)
	}
	if large.written < large.wire+2<<20 {
		t.Errorf("4 MiB write buffer: Write took only %d bytes, %d of them sent", large.written, large.wire)
	}
	// Out of range: clamped to the stack's limits.
	ac, bc := connected(t, sa, sb, 7007)
	defer ac.Close()
	defer bc.Close()
	ac.SetReadBuffer(1)
	lo, _ := ac.ep.SocketOptions().ReceiveBufferLimits()
	if got := ac.ep.SocketOptions().GetReceiveBufferSize(); got != lo {
		t.Errorf("SetReadBuffer(1): %d, want the minimum %d", got, lo)
	}
	if err := ac.SetWriteBuffer(-1); err == nil {
		t.Error("SetWriteBuffer(-1) succeeded")
	}
}

// TestLinger: SetLinger(0) makes Close reset the connection (the peer's
// read fails with ECONNRESET, an RST is on the wire); without it the peer
// reads EOF after a FIN.
func TestLinger(t *testing.T) {
	sa, sb, r := relayedPair(t)
	flags := func(c *TCPConn) (f uint8) {
		for _, s := range r.snapshot(fromPort(c)) {
			f |= s.flags
		}
		return f
	}
	ac, bc := connected(t, sa, sb, 7008)
	if err := ac.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if l := ac.ep.SocketOptions().GetLinger(); !l.Enabled || l.Timeout != 0 {
		t.Errorf("SetLinger(0): gVisor has %+v", l)
	}
	ac.Close()
	if _, err := bc.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) && (err == nil || err == io.EOF) {
		t.Errorf("peer of a connection closed with SetLinger(0) read %v, want a reset", err)
	}
	if f := flags(ac); f&tcpRST == 0 || f&tcpFIN != 0 {
		t.Errorf("SetLinger(0) Close: flags %#x on the wire, want RST and no FIN", f)
	}
	bc.Close()

	ac, bc = connected(t, sa, sb, 7009)
	ac.SetLinger(-1)
	ac.Close()
	if _, err := bc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("peer of a connection closed gracefully read %v, want EOF", err)
	}
	if f := flags(ac); f&tcpFIN == 0 || f&tcpRST != 0 {
		t.Errorf("graceful Close: flags %#x on the wire, want FIN and no RST", f)
	}
	bc.Close()
}

// TestHalfClose: after CloseWrite the peer reads EOF and can still send;
// after CloseRead reads return EOF at once.
func TestHalfClose(t *testing.T) {
	sa, sb, _ := relayedPair(t)
	ac, bc := connected(t, sa, sb, 7010)
	defer ac.Close()
	defer bc.Close()
	ac.Write([]byte("req"))
	if err := ac.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(bc)
	if err != nil || string(got) != "req" {
		t.Fatalf("peer read %q, %v; want \"req\" then EOF", got, err)
	}
	if _, err := bc.Write([]byte("resp")); err != nil {
		t.Fatalf("peer write after our CloseWrite: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(ac, buf); err != nil || string(buf) != "resp" {
		t.Fatalf("read after CloseWrite: %q, %v", buf, err)
	}
	if err := ac.CloseRead(); err != nil {
		t.Fatal(err)
	}
	ac.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := ac.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read after CloseRead: %d, %v; want EOF", n, err)
	}
}

// TestUDPBuffers: a UDP socket's read buffer bounds the datagrams it
// queues: with the smallest one most of 40 datagrams sent to a reader
// that does not read are dropped, with 1 MiB none. SetWriteBuffer reads
// back from gVisor.
func TestUDPBuffers(t *testing.T) {
	sa, sb, _ := relayedPair(t)
	run := func(port, rcv int) int {
		pc, err := sb.ListenPacket("udp4", ":"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		uc := pc.(*UDPConn)
		if err := uc.SetReadBuffer(rcv); err != nil {
			t.Fatal(err)
		}
		lo, _ := uc.ep.SocketOptions().ReceiveBufferLimits()
		if got := uc.ep.SocketOptions().GetReceiveBufferSize(); got != max(int64(rcv), lo) {
			t.Errorf("SetReadBuffer(%d): gVisor has %d", rcv, got)
		}
		dc, err := sa.DialUDP(context.Background(), "udp4", "198.18.0.2:"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		defer dc.Close()
		if err := dc.SetWriteBuffer(64 << 10); err != nil {
			t.Fatal(err)
		}
		if got := dc.ep.SocketOptions().GetSendBufferSize(); got != 64<<10 {
			t.Errorf("SetWriteBuffer(64 KiB): gVisor has %d", got)
		}
		for range 40 {
			if _, err := dc.Write(make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
		}
		// Every datagram has reached the socket (queued or dropped)
		// before the reader reads.
		stats := uc.ep.Stats().(*tcpip.TransportEndpointStats)
		waitFor(t, "40 datagrams at the socket", func() bool { return stats.PacketsReceived.Value() >= 40 })
		dropped := int(stats.ReceiveErrors.ReceiveBufferOverflow.Value())
		n := 0
		buf := make([]byte, 2000)
		for {
			pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, _, err := pc.ReadFrom(buf); err != nil {
				break
			}
			n++
		}
		if n+dropped != 40 {
			t.Errorf("read buffer %d: %d datagrams read and %d dropped for a full buffer, of 40", rcv, n, dropped)
		}
		return n
	}
	small, large := run(7011, 0), run(7012, 1<<20)
	t.Logf("40 datagrams of 1000 bytes: %d queued with the smallest read buffer, %d with 1 MiB", small, large)
	if small > 10 {
		t.Errorf("smallest read buffer queued %d of 40 datagrams", small)
	}
	if large != 40 {
		t.Errorf("1 MiB read buffer queued %d of 40 datagrams", large)
	}
}

// TestKeepAliveSettings: SetKeepAlivePeriod and SetKeepAliveConfig set
// what gVisor reads back, with net's meaning of zero (Go's defaults) and
// negative (unchanged) values; SetKeepAlive(false) turns probes off.
func TestKeepAliveSettings(t *testing.T) {
	sa, sb, _ := relayedPair(t)
	ac, bc := connected(t, sa, sb, 7013)
	defer ac.Close()
	defer bc.Close()
	type ka struct {
		on             bool
		idle, interval time.Duration
		count          int
	}
	read := func() ka {
		var idle tcpip.KeepaliveIdleOption
		var intv tcpip.KeepaliveIntervalOption
		if terr := ac.ep.GetSockOpt(&idle); terr != nil {
			t.Fatal(terr)
		}
		if terr := ac.ep.GetSockOpt(&intv); terr != nil {
			t.Fatal(terr)
		}
		n, terr := ac.ep.GetSockOptInt(tcpip.KeepaliveCountOption)
		if terr != nil {
			t.Fatal(terr)
		}
		return ka{ac.ep.SocketOptions().GetKeepAlive(), time.Duration(idle), time.Duration(intv), n}
	}
	steps := []struct {
		what string
		do   func() error
		want ka
	}{
		{"SetKeepAlive(true)", func() error { return ac.SetKeepAlive(true) }, ka{true, 2 * time.Hour, 75 * time.Second, 9}},
		{"SetKeepAlivePeriod(300ms)", func() error { return ac.SetKeepAlivePeriod(300 * time.Millisecond) }, ka{true, 300 * time.Millisecond, 75 * time.Second, 9}},
		{"SetKeepAlivePeriod(-1)", func() error { return ac.SetKeepAlivePeriod(-1) }, ka{true, 300 * time.Millisecond, 75 * time.Second, 9}},
		{"SetKeepAlivePeriod(0)", func() error { return ac.SetKeepAlivePeriod(0) }, ka{true, 15 * time.Second, 75 * time.Second, 9}},
		{"SetKeepAliveConfig{Enable, 1s, 2s, 4}", func() error {
			return ac.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: 2 * time.Second, Count: 4})
		}, ka{true, time.Second, 2 * time.Second, 4}},
		{"SetKeepAliveConfig{Enable, -1, -1, -1}", func() error {
			return ac.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1})
		}, ka{true, time.Second, 2 * time.Second, 4}},
		{"SetKeepAliveConfig{Enable}", func() error { return ac.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true}) }, ka{true, 15 * time.Second, 15 * time.Second, 9}},
		{"SetKeepAlive(false)", func() error { return ac.SetKeepAlive(false) }, ka{false, 15 * time.Second, 15 * time.Second, 9}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		if got := read(); got != s.want {
			t.Errorf("%s: gVisor has %+v, want %+v", s.what, got, s.want)
		}
	}
}
