package firewall

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const tcp4Fixture = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 651 1 000000003def7d33 100 0 0 10 0
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 21534 1 0000000000000000 100 0 0 10 0
   2: 010012C6:A112 020112C6:0016 01 00000000:00000000 02:00000A3B 00000000  1000        0 99 2 0000000000000000 20 4 30 10 -1
   3: 010012C6:A113 020112C6:0016 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
`

const tcp6Fixture = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1 0000000000000000 100 0 0 10 0
   1: B80D0120000000000000000001000000:01BB B80D0120000000000000000002000000:D431 01 00000000:00000000 00:00000000 00000000    33        0 8 1 0000000000000000 20 4 0 10 -1
   2: 0000000000000000FFFF0000010012C6:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9 2 0000000000000000 0
`

func littleEndian() bool { return binary.NativeEndian.Uint16([]byte{1, 0}) == 1 }

func TestParseProcNetFixtures(t *testing.T) {
	if !littleEndian() {
		t.Skip("fixtures are written in little-endian word order")
	}
	ap := netip.MustParseAddrPort
	got, err := ParseProcNet([]byte(tcp4Fixture), ProtoTCP, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{
		{Proto: 6, Local: ap("0.0.0.0:22"), Remote: ap("0.0.0.0:0"), State: TCPListen, UID: 0, Inode: 651},
		{Proto: 6, Local: ap("127.0.0.1:631"), Remote: ap("0.0.0.0:0"), State: TCPListen, UID: 101, Inode: 21534},
		{Proto: 6, Local: ap("198.18.0.1:41234"), Remote: ap("198.18.1.2:22"), State: TCPEstablished, UID: 1000, Inode: 99},
		{Proto: 6, Local: ap("198.18.0.1:41235"), Remote: ap("198.18.1.2:22"), State: TCPTimeWait, UID: 0, Inode: 0},
	}
	if !slices.Equal(got, want) {
		t.Errorf("tcp:\n got %v\nwant %v", got, want)
	}
	if !got[0].Listening() || !got[0].Wildcard() || got[1].Wildcard() || got[2].Listening() {
		t.Error("Listening/Wildcard wrong")
	}
	if s := got[2].String(); s != "tcp 198.18.0.1:41234 <- 198.18.1.2:22" {
		t.Errorf("String() = %q", s)
	}

	got, err = ParseProcNet([]byte(tcp6Fixture), ProtoUDP, true)
	if err != nil {
		t.Fatal(err)
	}
	want = []Socket{
		{Proto: 17, Local: ap("[::]:80"), Remote: ap("[::]:0"), State: TCPListen, Inode: 7},
		{Proto: 17, Local: ap("[2001:db8::1]:443"), Remote: ap("[2001:db8::2]:54321"), State: TCPEstablished, UID: 33, Inode: 8},
		// IPv4-mapped: unmapped.
		{Proto: 17, Local: ap("198.18.0.1:53"), Remote: ap("[::]:0"), State: TCPClose, Inode: 9},
	}
	if !slices.Equal(got, want) {
		t.Errorf("tcp6:\n got %v\nwant %v", got, want)
	}
}

func TestParseProcNetRejects(t *testing.T) {
	hdr := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	good := "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 651 1\n"
	for _, c := range []struct{ name, line string }{
		{"too few fields", "   0: 00000000:0016 00000000:0000 0A\n"},
		{"no slot colon", "   0 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 651\n"},
		{"short address", "   0: 000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 651\n"},
		{"IPv6 length in IPv4 file", "   0: 00000000000000000000000000000000:0050 00000000:0000 0A 0:0 0:0 0 0 0 7\n"},
		{"not hex", "   0: 0000000G:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 651\n"},
		{"signed word", "   0: +0000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 651\n"},
		{"port too long", "   0: 00000000:00016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 651\n"},
		{"bad state", "   0: 00000000:0016 00000000:0000 XY 00000000:00000000 00:00000000 00000000 0 0 651\n"},
		{"uid out of range", "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 4294967296 0 651\n"},
		{"inode negative", "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 -1\n"},
	} {
		_, err := ParseProcNet([]byte(hdr+good+c.line), ProtoTCP, false)
		if !errors.Is(err, ErrProcNet) || !strings.Contains(err.Error(), "line 3") {
			t.Errorf("%s: err = %v, want ErrProcNet at line 3", c.name, err)
		}
	}
	// Only a header, blank lines, no trailing newline: fine.
	for _, in := range []string{"", hdr, hdr + "\n\n", hdr + strings.TrimSuffix(good, "\n")} {
		if _, err := ParseProcNet([]byte(in), ProtoTCP, false); err != nil {
			t.Errorf("ParseProcNet(%q): %v", in, err)
		}
	}
}

func TestProcSocketsAtMissingFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tcp"), []byte(tcp4Fixture), 0o600); err != nil {
		t.Fatal(err)
	}
	ss, err := ProcSocketsAt(dir)
	if err != nil || len(ss) != 4 {
		t.Fatalf("ProcSocketsAt = %v, %v; want the 4 sockets of tcp", ss, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "udp"), []byte("hdr\ngarbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ProcSocketsAt(dir); !errors.Is(err, ErrProcNet) {
		t.Fatalf("ProcSocketsAt with a bad udp file: %v, want ErrProcNet", err)
	}
}

// TestInventoryLive opens real sockets and finds them in the inventory of
// this thread's namespace.
func TestProcSocketsLive(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	uc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ln6 net.Listener
	if l, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln6 = l
		defer l.Close()
	}

	ss, err := ProcSockets()
	if err != nil {
		t.Fatal(err)
	}
	has := func(proto uint8, local, remote string, listening bool) {
		t.Helper()
		for _, s := range ss {
			if s.Proto == proto && s.Local.String() == local && s.Listening() == listening &&
				(listening || s.Remote.String() == remote) {
				return
			}
		}
		t.Errorf("inventory lacks proto %d %s <- %s (listening %v)", proto, local, remote, listening)
	}
	has(ProtoTCP, ln.Addr().String(), "", true)
	has(ProtoUDP, uc.LocalAddr().String(), "", true)
	has(ProtoTCP, c.LocalAddr().String(), c.RemoteAddr().String(), false)
	has(ProtoTCP, s.LocalAddr().String(), s.RemoteAddr().String(), false)
	if ln6 != nil {
		has(ProtoTCP, ln6.Addr().String(), "", true)
	}
}
