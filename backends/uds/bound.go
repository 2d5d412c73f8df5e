package uds

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A bound port (Listen) is a Unix datagram socket bound at a path in the
// file system rather than one end of a socket pair: any process that may
// write the socket file sends frames to it, one Ethernet frame per
// datagram, and receives the port's frames at the address it last sent
// from. It is the framing of QEMU's -netdev dgram backend and of many
// userspace stacks.
//
// Peer address: every received datagram whose sender has a name (a socket
// bound to a path or an abstract name) makes that name the peer. Frames
// are sent to the peer as it is at the time of the send; until a named
// sender has sent a frame, and while the peer's socket is gone or its
// buffer full, frames are dropped and counted (TxDropped), never queued.
// Datagrams from an unnamed socket are received but do not change the
// peer (nothing can be sent back to it). A bound port never reports its
// peer closed: peers come and go.

// boundPeer is a peer address, immutable once published.
type boundPeer struct {
	sa  unix.RawSockaddrUnix
	len uint32
}

// Listen binds a Unix datagram socket at path and returns a port over it.
// A socket file already at path (a stale one, left by a killed usnetd) is
// replaced; anything else there is an error. The file is made with mode
// 0600, then given group gid (unless gid < 0) and mode perm, so that it is
// never more open than perm. Close removes the file, if it is still this
// port's.
func Listen(path string, perm fs.FileMode, gid int, opt Options) (*Port, error) {
	opt.fill()
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("uds: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("uds: removing the stale socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("uds: %w", err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("uds: socket: %w", err)
	}
	// The mode of the socket's inode is the file's at bind (less the
	// umask): nobody but the owner may send before the chmod below.
	if err := unix.Fchmod(fd, 0o600); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uds: fchmod: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uds: bind %s: %w", path, err)
	}
	fail := func(err error) (*Port, error) {
		unix.Close(fd)
		_ = os.Remove(path)
		return nil, fmt.Errorf("uds: %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(path, perm); err != nil {
		return fail(err)
	}
	var sys unix.Stat_t
	if err := unix.Lstat(path, &sys); err != nil {
		return fail(err)
	}
	p, err := newPort(fd, 0, opt)
	if err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	p.bound = &boundState{path: path, dev: sys.Dev, ino: sys.Ino}
	return p, nil
}

// boundState is what a bound port has beyond a paired one.
type boundState struct {
	path     string
	dev, ino uint64 // of the socket file, so that Close removes its own only
	names    []unix.RawSockaddrUnix
}

// Path is the socket file of a bound port ("" for a paired one).
func (p *Port) Path() string {
	if p.bound == nil {
		return ""
	}
	return p.bound.path
}

// Peer returns the peer address of a bound port: the name of the last
// named sender, "" while there is none. An abstract name starts with '@'.
func (p *Port) Peer() string {
	pa := p.peerAddr.Load()
	if pa == nil {
		return ""
	}
	n := int(pa.len) - int(unsafe.Offsetof(pa.sa.Path))
	b := make([]byte, 0, n)
	for i := range n {
		c := byte(pa.sa.Path[i])
		if i == 0 && c == 0 {
			c = '@'
		} else if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}

// prepareNames points the messages' names at the port's address buffers
// (bound ports only).
func (b *boundState) prepareNames(msgs []unix.Mmsghdr) {
	if cap(b.names) < len(msgs) {
		b.names = make([]unix.RawSockaddrUnix, len(msgs))
	}
	for i := range msgs {
		msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		msgs[i].Hdr.Namelen = uint32(unsafe.Sizeof(b.names[i]))
	}
}

// learnPeer makes the name of received message i the peer, if it has one
// and it differs from the peer now (an allocation only then).
func (p *Port) learnPeer(msgs []unix.Mmsghdr, i int) {
	n := msgs[i].Hdr.Namelen
	if n <= uint32(unsafe.Offsetof(unix.RawSockaddrUnix{}.Path)) || n > uint32(unsafe.Sizeof(unix.RawSockaddrUnix{})) {
		return // unnamed sender
	}
	sa := &p.bound.names[i]
	if cur := p.peerAddr.Load(); cur != nil && cur.len == n && sameName(&cur.sa, sa, n) {
		return
	}
	p.peerAddr.Store(&boundPeer{sa: *sa, len: n})
}

func sameName(a, b *unix.RawSockaddrUnix, n uint32) bool {
	ab := unsafe.Slice((*byte)(unsafe.Pointer(a)), n)
	bb := unsafe.Slice((*byte)(unsafe.Pointer(b)), n)
	return string(ab) == string(bb)
}

// removeFile removes a bound port's socket file if it is still the one
// Listen made.
func (b *boundState) removeFile() {
	var st unix.Stat_t
	if err := unix.Lstat(b.path, &st); err == nil && st.Dev == b.dev && st.Ino == b.ino {
		_ = os.Remove(b.path)
	}
}
