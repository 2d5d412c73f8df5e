package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/ipproto"
)

// IP protocol numbers of the sockets in the inventory.
const (
	ProtoTCP     uint8 = ipproto.TCP
	ProtoUDP     uint8 = ipproto.UDP
	ProtoUDPLite uint8 = ipproto.UDPLite
)

// Socket states as sock_diag reports them (include/net/tcp_states.h). A UDP
// socket is TCPClose when unconnected, TCPEstablished when connected.
const (
	TCPEstablished uint8 = 1
	TCPSynRecv     uint8 = 3
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
	State  uint8  // TCPListen, TCPEstablished, ...
	UID    uint32 // owner of the socket (0 for TIME_WAIT and request sockets)
	Inode  uint64 // socket inode, 0 for TIME_WAIT and request sockets
}

// Listening reports whether the socket takes packets from any remote: it
// has no peer (a TCP listener, a bound but unconnected UDP socket).
func (s Socket) Listening() bool {
	return s.Remote.Port() == 0 && (!s.Remote.Addr().IsValid() || s.Remote.Addr().IsUnspecified())
}

// Wildcard reports whether the socket is bound to every local address.
// An IPv6 wildcard socket is treated as dual-stack (it receives IPv4 too):
// the dump does not say whether IPV6_V6ONLY is set, and erring towards
// "the kernel's" only refuses a rule or keeps an entry longer.
func (s Socket) Wildcard() bool { return s.Local.Addr().IsUnspecified() }

// String formats s as "tcp 0.0.0.0:22 <- *" or "udp 198.18.0.1:53 <- 198.18.1.2:5353".
func (s Socket) String() string {
	r := "*"
	if !s.Listening() {
		r = s.Remote.String()
	}
	return ipproto.Name(s.Proto) + " " + s.Local.String() + " <- " + r
}

// Conn is a sock_diag netlink socket. Its methods may be called from any
// goroutine; dumps are serialised.
type Conn struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// Open opens a sock_diag socket in the network namespace of the calling
// thread (lock the goroutine to a thread of the namespace wanted when the
// process has threads in several).
func Open() (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sockdiag: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sockdiag: bind: %w", err)
	}
	return &Conn{fd: fd, buf: make([]byte, 64<<10)}, nil
}

// ErrClosed is returned by a Conn's methods after Close.
var ErrClosed = errors.New("sockdiag: closed")

// Close closes the socket.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// Sockets returns every TCP, UDP and UDP-Lite socket of the Conn's
// namespace, IPv4 and IPv6, in every state (TIME_WAIT and request sockets
// included). A protocol whose diag module the kernel lacks (UDP-Lite,
// IPv6 when disabled) is skipped.
func (c *Conn) Sockets() ([]Socket, error) {
	var out []Socket
	for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoUDPLite} {
		for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
			ss, err := c.dump(fam, proto, allStates, nil, out)
			if err != nil {
				if skippable(err, proto, fam) {
					continue
				}
				return nil, err
			}
			out = ss
		}
	}
	return out, nil
}

// SocketsOnPort returns the sockets of protocol proto (ProtoTCP, ProtoUDP
// or ProtoUDPLite) whose local port is port, IPv4 and IPv6: the kernel
// filters (an inet_diag bytecode), so the cost does not grow with the
// sockets on other ports that the process has to read.
func (c *Conn) SocketsOnPort(proto uint8, port uint16) ([]Socket, error) {
	var out []Socket
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		ss, err := c.dump(fam, proto, allStates, portFilter(port), out)
		if err != nil {
			if skippable(err, proto, fam) {
				continue
			}
			return nil, err
		}
		out = ss
	}
	return out, nil
}

// TCPFlow returns the kernel's TCP sockets that a rule for the one
// connection local ↔ remote collides with: the listeners on local's port
// (a dump of listening sockets only: it walks the small listening hash,
// not every connection as SocketsOnPort does, which costs milliseconds on
// a host with a large connection table) and the socket of exactly that
// address pair, in any state, if there is one (a lookup, not a dump).
// Sockets that are only bound, neither listening nor connected, are not
// included: the kernel delivers nothing to them.
func (c *Conn) TCPFlow(local, remote netip.AddrPort) ([]Socket, error) {
	var out []Socket
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		ss, err := c.dump(fam, ProtoTCP, 1<<TCPListen, portFilter(local.Port()), out)
		if err != nil {
			if skippable(err, ProtoTCP, fam) {
				continue
			}
			return nil, err
		}
		out = ss
	}
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if local.Addr().Is4() != remote.Addr().Is4() {
		return out, nil
	}
	s, ok, err := c.lookup(local, remote)
	if err != nil {
		return nil, err
	}
	if ok && !slices.Contains(out, s) {
		out = append(out, s)
	}
	return out, nil
}

// lookup asks the kernel for the TCP socket of exactly local ↔ remote
// (SOCK_DIAG_BY_FAMILY without NLM_F_DUMP: one answer, the socket or
// ENOENT). The kernel's lookup also falls back to a listener on the port.
func (c *Conn) lookup(local, remote netip.AddrPort) (Socket, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return Socket{}, false, ErrClosed
	}
	fam := uint8(unix.AF_INET6)
	if local.Addr().Is4() {
		fam = unix.AF_INET
	}
	c.seq++
	req := request(c.seq, fam, ProtoTCP, nil)
	ne := binary.NativeEndian
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST) // one socket, not a dump
	id := req[nlmsgHdrLen+8:]                 // struct inet_diag_sockid
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	src, dst := local.Addr().As16(), remote.Addr().As16()
	if fam == unix.AF_INET {
		a, b := local.Addr().As4(), remote.Addr().As4()
		copy(id[sockIDAddrOffs:], a[:])
		copy(id[sockIDAddrOffs+16:], b[:])
	} else {
		copy(id[sockIDAddrOffs:], src[:])
		copy(id[sockIDAddrOffs+16:], dst[:])
	}
	ne.PutUint32(id[40:], 0xffffffff) // idiag_cookie: INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return Socket{}, false, fmt.Errorf("sockdiag: send: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Socket{}, false, fmt.Errorf("sockdiag: recv: %w", err)
		}
		got, done, err := ParseDump(c.buf[:n], c.seq, ProtoTCP, nil)
		switch {
		case errors.Is(err, unix.ENOENT):
			return Socket{}, false, nil
		case err != nil:
			return Socket{}, false, fmt.Errorf("sockdiag: TCP lookup %v <- %v: %w", local, remote, err)
		case len(got) > 0:
			return got[0], true, nil
		case done:
			return Socket{}, false, nil
		}
		// a datagram of an earlier request: read on
	}
}

// skippable: the kernel has no diag handler for this protocol or family
// (ENOENT: udp_diag without UDP-Lite, no IPv6).
func skippable(err error, proto, fam uint8) bool {
	return errors.Is(err, unix.ENOENT) && (proto == ProtoUDPLite || fam == unix.AF_INET6) ||
		errors.Is(err, unix.EAFNOSUPPORT)
}

// ErrInterrupted is returned when the kernel's socket tables changed under
// every attempt of a dump (NLM_F_DUMP_INTR).
var ErrInterrupted = errors.New("sockdiag: dump interrupted")

// dump runs one inet_diag dump, retrying an interrupted one, and appends
// the sockets to dst.
func (c *Conn) dump(family, proto uint8, states uint32, bytecode []byte, dst []Socket) ([]Socket, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil, ErrClosed
	}
	n0 := len(dst)
	for range 4 {
		dst = dst[:n0]
		c.seq++
		req := request(c.seq, family, proto, bytecode)
		binary.NativeEndian.PutUint32(req[nlmsgHdrLen+4:], states)
		if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, fmt.Errorf("sockdiag: send: %w", err)
		}
		var err error
		dst, err = c.receive(c.seq, proto, dst)
		if errors.Is(err, ErrInterrupted) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sockdiag: %s dump (family %d): %w", ipproto.Name(proto), family, err)
		}
		return dst, nil
	}
	return nil, ErrInterrupted
}

// receive reads the answers to request seq until NLMSG_DONE. After an
// interrupted dump it still reads to the end, so that the socket is clean
// for the next request.
func (c *Conn) receive(seq uint32, proto uint8, dst []Socket) ([]Socket, error) {
	var firstErr error
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return dst, fmt.Errorf("recv: %w", err)
		}
		var done bool
		dst, done, err = ParseDump(c.buf[:n], seq, proto, dst)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if done || err != nil && !errors.Is(err, ErrInterrupted) {
			return dst, firstErr
		}
	}
}

// Sockets opens a Conn in the calling thread's namespace, dumps every
// socket (Conn.Sockets) and closes it.
func Sockets() ([]Socket, error) {
	runtime.LockOSThread()
	c, err := Open()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Sockets()
}

// Netlink and inet_diag layout (include/uapi/linux/netlink.h,
// inet_diag.h).
const (
	nlmsgHdrLen    = 16
	reqV2Len       = 56 // struct inet_diag_req_v2
	diagMsgLen     = 72 // struct inet_diag_msg
	attrBytecode   = 1  // INET_DIAG_REQ_BYTECODE
	bcSGE          = 2  // INET_DIAG_BC_S_GE
	bcSLE          = 3  // INET_DIAG_BC_S_LE
	nlmFDumpIntr   = 0x10
	allStates      = 0xffffffff
	sockIDAddrOffs = 4 // of src in struct inet_diag_sockid (after sport, dport)
)

// request builds a SOCK_DIAG_BY_FAMILY dump request for every state, with
// an optional filter bytecode.
func request(seq uint32, family, proto uint8, bytecode []byte) []byte {
	n := nlmsgHdrLen + reqV2Len
	if bytecode != nil {
		n += 4 + len(bytecode)
	}
	b := make([]byte, n)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(n))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(b[8:], seq)
	r := b[nlmsgHdrLen:]
	r[0], r[1] = family, proto
	ne.PutUint32(r[4:], allStates)
	if bytecode != nil {
		a := b[nlmsgHdrLen+reqV2Len:]
		ne.PutUint16(a[0:], uint16(4+len(bytecode)))
		ne.PutUint16(a[2:], attrBytecode)
		copy(a[4:], bytecode)
	}
	return b
}

// portFilter is the bytecode "local port >= port && local port <= port":
// two compare ops of 8 bytes each; a failed compare jumps past the end
// plus 4 (reject), a passed one to the next op (accept at the end).
func portFilter(port uint16) []byte {
	b := make([]byte, 16)
	ne := binary.NativeEndian
	op := func(at int, code uint8, remain int) {
		b[at], b[at+1] = code, 8
		ne.PutUint16(b[at+2:], uint16(remain+4))
		ne.PutUint16(b[at+6:], port) // the second op's "no" holds the port
	}
	op(0, bcSGE, 16)
	op(8, bcSLE, 8)
	return b
}

// ErrMessage is returned (wrapped) by ParseDump for bytes that are not a
// well-formed answer.
var ErrMessage = errors.New("sockdiag: malformed netlink message")

// ParseDump parses one datagram of the kernel's answer to the dump request
// with sequence number seq and appends its sockets (protocol proto) to
// dst. done is true at NLMSG_DONE. A netlink error message gives its errno
// (wrapped); a message flagged NLM_F_DUMP_INTR gives ErrInterrupted (the
// sockets are still appended; the caller reads on to NLMSG_DONE and
// repeats the dump). Messages of other sequence numbers are skipped.
// It never panics on any input.
func ParseDump(b []byte, seq uint32, proto uint8, dst []Socket) (out []Socket, done bool, err error) {
	ne := binary.NativeEndian
	var intr bool
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return dst, false, fmt.Errorf("%w: %d trailing bytes", ErrMessage, len(b))
		}
		l := int(ne.Uint32(b[0:]))
		typ := ne.Uint16(b[4:])
		flags := ne.Uint16(b[6:])
		mseq := ne.Uint32(b[8:])
		if l < nlmsgHdrLen || l > len(b) {
			return dst, false, fmt.Errorf("%w: length %d of %d bytes", ErrMessage, l, len(b))
		}
		body := b[nlmsgHdrLen:l]
		next := (l + 3) &^ 3
		if next > len(b) {
			next = len(b)
		}
		b = b[next:]
		if mseq != seq {
			continue
		}
		if flags&nlmFDumpIntr != 0 {
			intr = true
		}
		switch typ {
		case unix.NLMSG_DONE:
			if intr {
				return dst, true, ErrInterrupted
			}
			return dst, true, nil
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return dst, false, fmt.Errorf("%w: short error message", ErrMessage)
			}
			e := int32(ne.Uint32(body))
			if e == 0 {
				continue // an ACK
			}
			if e > 0 || e < -4095 {
				return dst, false, fmt.Errorf("%w: error code %d", ErrMessage, e)
			}
			return dst, true, unix.Errno(-e)
		case unix.SOCK_DIAG_BY_FAMILY:
			s, err := parseDiagMsg(body, proto)
			if err != nil {
				return dst, false, err
			}
			dst = append(dst, s)
		}
	}
	if intr {
		return dst, false, ErrInterrupted
	}
	return dst, false, nil
}

// parseDiagMsg reads struct inet_diag_msg (attributes after it are
// ignored).
func parseDiagMsg(b []byte, proto uint8) (Socket, error) {
	if len(b) < diagMsgLen {
		return Socket{}, fmt.Errorf("%w: inet_diag_msg of %d bytes", ErrMessage, len(b))
	}
	ne := binary.NativeEndian
	fam := b[0]
	id := b[4:52]
	sport := binary.BigEndian.Uint16(id[0:])
	dport := binary.BigEndian.Uint16(id[2:])
	var src, dst netip.Addr
	switch fam {
	case unix.AF_INET:
		src = netip.AddrFrom4([4]byte(id[sockIDAddrOffs : sockIDAddrOffs+4]))
		dst = netip.AddrFrom4([4]byte(id[sockIDAddrOffs+16 : sockIDAddrOffs+20]))
	case unix.AF_INET6:
		src = netip.AddrFrom16([16]byte(id[sockIDAddrOffs : sockIDAddrOffs+16])).Unmap()
		dst = netip.AddrFrom16([16]byte(id[sockIDAddrOffs+16 : sockIDAddrOffs+32])).Unmap()
	default:
		return Socket{}, fmt.Errorf("%w: address family %d", ErrMessage, fam)
	}
	return Socket{
		Proto:  proto,
		Local:  netip.AddrPortFrom(src, sport),
		Remote: netip.AddrPortFrom(dst, dport),
		State:  b[1],
		UID:    ne.Uint32(b[64:]),
		Inode:  uint64(ne.Uint32(b[68:])),
	}, nil
}
