package control

// Who sent a message: the client's socket address exactly as the kernel
// reported it, and the credentials the kernel attached (SO_PASSCRED:
// SCM_CREDENTIALS, SO_PASSPIDFD: SCM_PIDFD). Nothing a client writes into
// a message is believed about its identity: the PID in a Request* is only
// accepted when the kernel's credentials say it is a thread of the sender.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// clientAddr is a client's Unix socket address: a path, or an abstract
// name (which may hold any bytes, NUL included: it is compared and answered
// to byte for byte, never cut at a NUL).
type clientAddr struct {
	abstract bool
	name     string // the path, or the abstract name without its leading NUL
}

// String is the address for logs and QueryStatus: the path, or "@" and the
// abstract name; bytes that are not printable are escaped as Go does.
func (a clientAddr) String() string {
	s := a.name
	if a.abstract {
		s = "@" + s
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			q := strconv.QuoteToASCII(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}

// sunPathOffset is offsetof(struct sockaddr_un, sun_path).
const sunPathOffset = 2

// parseSockaddrUnix reads the address recvmsg returned in rsa with length
// n. ok is false for an unnamed (unbound) sender, which cannot be answered.
func parseSockaddrUnix(rsa *unix.RawSockaddrUnix, n int) (a clientAddr, ok bool) {
	if n <= sunPathOffset || rsa.Family != unix.AF_UNIX {
		return clientAddr{}, false
	}
	l := min(n-sunPathOffset, len(rsa.Path))
	p := unsafe.Slice((*byte)(unsafe.Pointer(&rsa.Path[0])), l)
	if p[0] == 0 {
		return clientAddr{abstract: true, name: string(p[1:])}, true
	}
	if i := bytes.IndexByte(p, 0); i >= 0 {
		p = p[:i]
	}
	return clientAddr{name: string(p)}, true
}

// sockaddr returns the raw address of a and its length.
func (a clientAddr) sockaddr() (*unix.RawSockaddrUnix, uint32, error) {
	rsa := &unix.RawSockaddrUnix{Family: unix.AF_UNIX}
	path := unsafe.Slice((*byte)(unsafe.Pointer(&rsa.Path[0])), len(rsa.Path))
	if a.abstract {
		if len(a.name)+1 > len(path) {
			return nil, 0, errors.New("abstract name too long")
		}
		copy(path[1:], a.name)
		return rsa, uint32(sunPathOffset + 1 + len(a.name)), nil
	}
	if a.name == "" || len(a.name) >= len(path) {
		return nil, 0, errors.New("path empty or too long")
	}
	copy(path, a.name)
	return rsa, uint32(sunPathOffset + len(a.name) + 1), nil
}

// parseSocketPath turns SOCKET_PATH ("/run/usnetd.socket" or "@name") into
// an address.
func parseSocketPath(s string) (clientAddr, error) {
	a := clientAddr{name: s}
	if strings.HasPrefix(s, "@") {
		a = clientAddr{abstract: true, name: s[1:]}
	}
	if _, _, err := a.sockaddr(); err != nil {
		return a, fmt.Errorf("socket path %q: %v", s, err)
	}
	return a, nil
}

// received is one datagram as recvmsg gave it, with what the kernel
// attached.
type received struct {
	n, flags int
	from     clientAddr
	named    bool        // false: an unbound sender
	cred     *unix.Ucred // SCM_CREDENTIALS; nil if missing
	pidfd    int         // SCM_PIDFD; -1 if missing
	rights   int         // descriptors the client sent (closed already)
}

// recvmsg receives one datagram on fd without waiting (EAGAIN when there is
// none) into buf, with its control messages in oob. Descriptors a client
// sends (SCM_RIGHTS) are closed at once: the control protocol has no use
// for them. The SCM_PIDFD descriptor is the caller's to close.
func recvmsg(fd int, buf, oob []byte) (received, error) {
	r := received{pidfd: -1}
	var rsa unix.RawSockaddrUnix
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	msg := unix.Msghdr{
		Name:    (*byte)(unsafe.Pointer(&rsa)),
		Namelen: uint32(unsafe.Sizeof(rsa)),
		Iov:     &iov,
		Iovlen:  1,
		Control: &oob[0],
	}
	msg.SetControllen(len(oob))
	n, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)),
		unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC|unix.MSG_TRUNC)
	if e != 0 {
		return r, e
	}
	r.n, r.flags = int(n), int(msg.Flags)
	r.from, r.named = parseSockaddrUnix(&rsa, int(msg.Namelen))
	cmsgs, err := unix.ParseSocketControlMessage(oob[:msg.Controllen])
	if err != nil {
		r.flags |= unix.MSG_CTRUNC // unreadable control data counts as lost
		return r, nil
	}
	for i := range cmsgs {
		c := &cmsgs[i]
		if c.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch c.Header.Type {
		case unix.SCM_CREDENTIALS:
			if uc, err := unix.ParseUnixCredentials(c); err == nil {
				r.cred = uc
			}
		case unix.SCM_PIDFD:
			if len(c.Data) >= 4 {
				r.pidfd = int(*(*int32)(unsafe.Pointer(&c.Data[0])))
			}
		case unix.SCM_RIGHTS:
			fds, _ := unix.ParseUnixRights(c)
			for _, fd := range fds {
				unix.Close(fd)
			}
			r.rights += len(fds)
		}
	}
	return r, nil
}

// sendmsg sends p (with oob) to a without waiting: a client whose socket
// buffer is full loses the answer rather than stalling the server.
func sendmsg(fd int, p, oob []byte, a clientAddr) error {
	rsa, l, err := a.sockaddr()
	if err != nil {
		return err
	}
	iov := unix.Iovec{}
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
	}
	msg := unix.Msghdr{Name: (*byte)(unsafe.Pointer(rsa)), Namelen: l, Iov: &iov, Iovlen: 1}
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	_, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	if e != 0 {
		return e
	}
	return nil
}

// procStatus is what the server reads from /proc/PID/status.
type procStatus struct {
	Tgid   int32     // the thread group (process) the task belongs to
	UID    [4]uint32 // real, effective, saved, filesystem
	GID    [4]uint32
	Groups []uint32
	CapEff uint64 // effective capabilities
}

// capNetBindService is CAP_NET_BIND_SERVICE (linux/capability.h).
const capNetBindService = 10

// errProcStatus is returned (wrapped) by parseProcStatus.
var errProcStatus = errors.New("malformed /proc/PID/status")

// parseProcStatus reads the fields of procStatus from the text of
// /proc/PID/status. Tgid, Uid, Gid and CapEff must be there; Groups may be
// empty. It never panics on any input.
func parseProcStatus(b []byte) (procStatus, error) {
	var st procStatus
	var seen [4]bool
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		key, val, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		f := bytes.Fields(val)
		var err error
		switch string(key) {
		case "Tgid":
			if seen[0] {
				return st, fmt.Errorf("%w: Tgid twice", errProcStatus)
			}
			seen[0] = true
			var v uint64
			if len(f) != 1 {
				err = errors.New("want one number")
			} else if v, err = strconv.ParseUint(string(f[0]), 10, 31); err == nil {
				st.Tgid = int32(v)
			}
		case "Uid", "Gid":
			k, dst := 1, &st.UID
			if key[0] == 'G' {
				k, dst = 2, &st.GID
			}
			if seen[k] {
				return st, fmt.Errorf("%w: %s twice", errProcStatus, key)
			}
			seen[k] = true
			if len(f) != 4 {
				err = errors.New("want four numbers")
				break
			}
			for i := range f {
				var v uint64
				if v, err = strconv.ParseUint(string(f[i]), 10, 32); err != nil {
					break
				}
				dst[i] = uint32(v)
			}
		case "Groups":
			st.Groups = st.Groups[:0]
			for _, g := range f {
				var v uint64
				if v, err = strconv.ParseUint(string(g), 10, 32); err != nil {
					break
				}
				st.Groups = append(st.Groups, uint32(v))
			}
		case "CapEff":
			if seen[3] {
				return st, fmt.Errorf("%w: CapEff twice", errProcStatus)
			}
			seen[3] = true
			if len(f) != 1 || len(f[0]) != 16 {
				err = errors.New("want 16 hex digits")
			} else {
				st.CapEff, err = strconv.ParseUint(string(f[0]), 16, 64)
			}
		}
		if err != nil {
			return st, fmt.Errorf("%w: %s: %v", errProcStatus, key, err)
		}
	}
	for i, name := range [4]string{"Tgid", "Uid", "Gid", "CapEff"} {
		if !seen[i] {
			return st, fmt.Errorf("%w: no %s", errProcStatus, name)
		}
	}
	return st, nil
}

// readProcStatus reads /proc/PID/status below procDir ("/proc"). pid may
// be a thread id: /proc/TID/status exists for every thread.
func readProcStatus(procDir string, pid int32) (procStatus, error) {
	if pid <= 0 {
		return procStatus{}, fmt.Errorf("pid %d", pid)
	}
	b, err := os.ReadFile(procDir + "/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return procStatus{}, err
	}
	return parseProcStatus(b)
}

// pidfdAlive reports whether the process of pidfd has not exited: a pidfd
// becomes readable when its process exits.
func pidfdAlive(pidfd int) bool {
	p := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err == nil && n == 0
}

// socketInodes returns the inodes of the sockets among the open files of
// process pid (the links "socket:[INODE]" in /proc/PID/fd below procDir)
// that are in want. Only the wanted inodes are looked for, so the cost is
// one readlink per open file and no allocation per socket.
func socketInodes(procDir string, pid int32, want map[uint64]bool) (map[uint64]bool, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d", pid)
	}
	dir := procDir + "/" + strconv.Itoa(int(pid)) + "/fd"
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	found := map[uint64]bool{}
	buf := make([]byte, 64)
	for _, n := range names {
		l, err := unix.Readlink(dir+"/"+n, buf)
		if err != nil {
			continue // closed meanwhile
		}
		ino, ok := parseSocketLink(buf[:l])
		if ok && want[ino] {
			found[ino] = true
		}
	}
	return found, nil
}

// parseSocketLink reads the inode of a /proc/PID/fd link "socket:[INODE]".
func parseSocketLink(b []byte) (uint64, bool) {
	const pre = "socket:["
	if len(b) < len(pre)+2 || string(b[:len(pre)]) != pre || b[len(b)-1] != ']' {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[len(pre):len(b)-1]), 10, 64)
	return v, err == nil
}
