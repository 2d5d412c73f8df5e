package firewall

// The kernel's socket inventory: which local ports the kernel's own network
// stack listens on or is connected from, read from /proc/net/{tcp,udp,...}
// of the calling thread's network namespace. The control plane uses it to
// refuse an endpoint a rule that would take the kernel's traffic; the
// housekeeping uses it to expire learned kernel rules whose socket is gone.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"runtime"
	"strconv"

	"github.com/usnetd/usnetd/internal/ipproto"
)

// IP protocol numbers of the sockets in the inventory (internal/ipproto's).
const (
	ProtoTCP     uint8 = ipproto.TCP
	ProtoUDP     uint8 = ipproto.UDP
	ProtoUDPLite uint8 = ipproto.UDPLite
)

// TCP states as /proc/net/tcp writes them (include/net/tcp_states.h).
const (
	TCPEstablished uint8 = 1
	TCPTimeWait    uint8 = 6
	TCPClose       uint8 = 7
	TCPListen      uint8 = 10
)

// Socket is one socket of the kernel's inventory.
type Socket struct {
	Proto uint8 // ProtoTCP, ProtoUDP or ProtoUDPLite
	// Local is the bound address and port. An IPv4-mapped address of an
	// IPv6 socket is unmapped to IPv4; the unspecified address (0.0.0.0
	// or ::) means every local address (see Wildcard).
	Local netip.AddrPort
	// Remote is the peer of a connected socket; the unspecified address
	// with port 0 when the socket is not connected (see Listening).
	Remote netip.AddrPort
	// State is the kernel's socket state (TCPListen, TCPEstablished, ...;
	// for UDP TCPClose when unconnected, TCPEstablished when connected).
	State uint8
	UID   uint32 // owner of the socket
	Inode uint64 // socket inode, 0 for TIME_WAIT and request sockets
}

// Listening reports whether the socket takes packets from any remote: it
// has no peer (a TCP listener, a bound but unconnected UDP socket).
func (s Socket) Listening() bool {
	return s.Remote.Port() == 0 && (!s.Remote.Addr().IsValid() || s.Remote.Addr().IsUnspecified())
}

// Wildcard reports whether the socket is bound to every local address.
// An IPv6 wildcard socket is treated as dual-stack (it receives IPv4 too)
// because /proc does not tell IPV6_V6ONLY.
func (s Socket) Wildcard() bool { return s.Local.Addr().IsUnspecified() }

// String formats s as "tcp 0.0.0.0:22 <- *" or "udp 198.18.0.1:53 <- 198.18.1.2:5353".
func (s Socket) String() string {
	name := ipproto.Name(s.Proto)
	r := "*"
	if !s.Listening() {
		r = s.Remote.String()
	}
	return name + " " + s.Local.String() + " <- " + r
}

// procFiles are the files of /proc/NET read by ProcSockets.
var procFiles = []struct {
	name  string
	proto uint8
	v6    bool
}{
	{"tcp", ProtoTCP, false},
	{"tcp6", ProtoTCP, true},
	{"udp", ProtoUDP, false},
	{"udp6", ProtoUDP, true},
	{"udplite", ProtoUDPLite, false},
	{"udplite6", ProtoUDPLite, true},
}

// ProcSockets returns the TCP, UDP and UDP-Lite sockets of the network
// namespace of the calling thread (/proc/thread-self/net): listening ones
// and connected ones. A goroutine that is not locked to its OS thread may
// run on any thread; in a process whose threads are in different network
// namespaces, call it with runtime.LockOSThread held on a thread of the
// namespace wanted. Files that do not exist (no IPv6, no UDP-Lite) are
// skipped.
func ProcSockets() ([]Socket, error) {
	runtime.LockOSThread() // all files from one thread, so one namespace
	defer runtime.UnlockOSThread()
	return ProcSocketsAt("/proc/thread-self/net")
}

// ProcSocketsAt is ProcSockets on the files of dir (a /proc/PID/net directory,
// or a test fixture).
func ProcSocketsAt(dir string) ([]Socket, error) {
	var all []Socket
	for _, f := range procFiles {
		b, err := os.ReadFile(dir + "/" + f.name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("socket inventory: %w", err)
		}
		ss, err := ParseProcNet(b, f.proto, f.v6)
		if err != nil {
			return nil, fmt.Errorf("socket inventory: %s/%s: %w", dir, f.name, err)
		}
		all = append(all, ss...)
	}
	return all, nil
}

// ErrProcNet is returned (wrapped, with the line number) by ParseProcNet
// for a line it cannot read.
var ErrProcNet = errors.New("malformed /proc/net line")

// ParseProcNet parses the contents of /proc/net/tcp, udp or udplite (v6
// false) or of their IPv6 variants (v6 true): a header line, then one line
// per socket with the columns "sl local_address rem_address st tx_queue:
// rx_queue tr:tm->when retrnsmt uid timeout inode ...". Addresses are hex
// in the kernel's byte order (this machine's: the kernel writes each 32-bit
// word of the address as a native integer); ports and the state are hex
// numbers. Every socket gets protocol proto.
//
// It never panics on any input; a line that does not parse is an error
// naming the line.
func ParseProcNet(b []byte, proto uint8, v6 bool) ([]Socket, error) {
	var out []Socket
	line := 0
	for len(b) > 0 {
		var l []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			l, b = b[:i], b[i+1:]
		} else {
			l, b = b, nil
		}
		line++
		if line == 1 {
			continue // the header
		}
		f := bytes.Fields(l)
		if len(f) == 0 {
			continue
		}
		s, err := parseLine(f, proto, v6)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w: %v", line, ErrProcNet, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseLine(f [][]byte, proto uint8, v6 bool) (Socket, error) {
	s := Socket{Proto: proto}
	if len(f) < 10 {
		return s, fmt.Errorf("%d fields, want at least 10", len(f))
	}
	if len(f[0]) < 2 || f[0][len(f[0])-1] != ':' {
		return s, fmt.Errorf("slot %q", f[0])
	}
	var err error
	if s.Local, err = parseAddrPort(f[1], v6); err != nil {
		return s, fmt.Errorf("local address: %v", err)
	}
	if s.Remote, err = parseAddrPort(f[2], v6); err != nil {
		return s, fmt.Errorf("remote address: %v", err)
	}
	st, err := strconv.ParseUint(string(f[3]), 16, 8)
	if err != nil || len(f[3]) != 2 {
		return s, fmt.Errorf("state %q", f[3])
	}
	s.State = uint8(st)
	uid, err := strconv.ParseUint(string(f[7]), 10, 32)
	if err != nil {
		return s, fmt.Errorf("uid %q", f[7])
	}
	s.UID = uint32(uid)
	if s.Inode, err = strconv.ParseUint(string(f[9]), 10, 64); err != nil {
		return s, fmt.Errorf("inode %q", f[9])
	}
	return s, nil
}

// parseAddrPort reads "0100007F:0277" (IPv4) or 32 hex digits and a port
// (IPv6).
func parseAddrPort(b []byte, v6 bool) (netip.AddrPort, error) {
	n := 8
	if v6 {
		n = 32
	}
	if len(b) != n+5 || b[n] != ':' {
		return netip.AddrPort{}, fmt.Errorf("%q: want %d hex digits, ':' and 4 hex digits", b, n)
	}
	var raw [16]byte
	for w := 0; w < n/8; w++ {
		v, err := strconv.ParseUint(string(b[w*8:w*8+8]), 16, 32)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("%q: not hex", b[w*8:w*8+8])
		}
		binary.NativeEndian.PutUint32(raw[w*4:], uint32(v))
	}
	port, err := strconv.ParseUint(string(b[n+1:]), 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: not hex", b[n+1:])
	}
	var a netip.Addr
	if v6 {
		a = netip.AddrFrom16(raw).Unmap()
	} else {
		a = netip.AddrFrom4([4]byte(raw[:4]))
	}
	return netip.AddrPortFrom(a, uint16(port)), nil
}
