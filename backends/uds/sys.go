package uds

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// recvmmsg receives up to len(msgs) datagrams without waiting.
func recvmmsg(fd int, msgs []unix.Mmsghdr) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)),
		unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// peek reports whether a datagram is queued on fd, without taking it.
func peek(fd int) bool {
	_, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), 0, 0, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	return e != unix.EAGAIN && e != unix.EINTR
}

// sendmmsg sends up to len(msgs) datagrams without waiting.
func sendmmsg(fd int, msgs []unix.Mmsghdr) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)),
		unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// setBuffers sets the send and receive buffer of fd to size bytes, with
// the FORCE options (CAP_NET_ADMIN) so that net.core.wmem_max and rmem_max
// do not cap them, falling back to the plain options without the
// capability.
func setBuffers(fd, size int) error {
	for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
		err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], size)
		if errors.Is(err, unix.EPERM) {
			err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], size)
		}
		if err != nil {
			return fmt.Errorf("uds: socket buffer size %d: %w", size, err)
		}
	}
	return nil
}

// inode returns the inode number of the socket fd, which sock_diag knows
// it by.
func inode(fd int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	if st.Ino > 1<<32-1 {
		return 0, fmt.Errorf("socket inode %d does not fit sock_diag's 32 bits", st.Ino)
	}
	return uint32(st.Ino), nil
}

// The sock_diag protocol for AF_UNIX (linux/unix_diag.h).
const (
	udiagShowPeer  = 0x4 // UDIAG_SHOW_PEER
	unixDiagPeer   = 2   // UNIX_DIAG_PEER attribute: the peer's inode (u32)
	nlmsgHdrLen    = 16
	unixDiagReqLen = 24
	unixDiagMsgLen = 16
)

// errNoSocket is what sock_diag answers for a socket that does not exist
// (any more), or whose cookie belongs to an earlier socket of that inode.
var errNoSocket = errors.New("uds: no such socket")

// prober asks the kernel about one Unix socket through NETLINK_SOCK_DIAG.
// Not safe for concurrent use.
type prober struct {
	fd  int
	seq uint32
	buf [512]byte
}

func newProber() (*prober, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("uds: sock_diag socket: %w", err)
	}
	// The kernel answers within sendto; the timeout only guards a kernel
	// that does not.
	tv := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uds: sock_diag socket: %w", err)
	}
	return &prober{fd: fd}, nil
}

func (p *prober) close() { unix.Close(p.fd) }

// query asks for the socket with inode ino (and cookie, or any cookie if
// cookie is ^0). It returns the socket's cookie and, with show, its peer's
// inode (0: none). A socket that does not exist is errNoSocket.
func (p *prober) query(ino uint32, cookie uint64, show bool) (gotCookie uint64, peer uint32, err error) {
	p.seq++
	var req [nlmsgHdrLen + unixDiagReqLen]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], p.seq)
	r := req[nlmsgHdrLen:]
	r[0] = unix.AF_UNIX
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	ne.PutUint32(r[8:], ino)
	if show {
		ne.PutUint32(r[12:], udiagShowPeer)
	}
	ne.PutUint32(r[16:], uint32(cookie))
	ne.PutUint32(r[20:], uint32(cookie>>32))
	if err := unix.Sendto(p.fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, 0, fmt.Errorf("uds: sock_diag: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(p.fd, p.buf[:], 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("uds: sock_diag: %w", err)
		}
		m := p.buf[:n]
		if len(m) < nlmsgHdrLen || int(ne.Uint32(m[0:])) > len(m) || int(ne.Uint32(m[0:])) < nlmsgHdrLen {
			return 0, 0, errors.New("uds: sock_diag: short answer")
		}
		if ne.Uint32(m[8:]) != p.seq {
			continue // an answer to an earlier query that timed out
		}
		m = m[:ne.Uint32(m[0:])]
		switch ne.Uint16(m[4:]) {
		case unix.NLMSG_ERROR:
			if len(m) < nlmsgHdrLen+4 {
				return 0, 0, errors.New("uds: sock_diag: short error")
			}
			switch e := unix.Errno(-int32(ne.Uint32(m[nlmsgHdrLen:]))); e {
			case unix.ENOENT, unix.ESTALE:
				return 0, 0, errNoSocket
			default:
				return 0, 0, fmt.Errorf("uds: sock_diag: %w", e)
			}
		case unix.SOCK_DIAG_BY_FAMILY:
		default:
			return 0, 0, fmt.Errorf("uds: sock_diag: unexpected message type %d", ne.Uint16(m[4:]))
		}
		body := m[nlmsgHdrLen:]
		if len(body) < unixDiagMsgLen {
			return 0, 0, errors.New("uds: sock_diag: short unix_diag_msg")
		}
		gotCookie = uint64(ne.Uint32(body[8:])) | uint64(ne.Uint32(body[12:]))<<32
		for a := body[unixDiagMsgLen:]; len(a) >= 4; {
			l := int(ne.Uint16(a[0:]))
			if l < 4 || l > len(a) {
				break
			}
			if ne.Uint16(a[2:])&0x3fff == unixDiagPeer && l >= 8 {
				peer = ne.Uint32(a[4:])
			}
			a = a[min((l+3)&^3, len(a)):]
		}
		return gotCookie, peer, nil
	}
}
