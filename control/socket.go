package control

// The control socket itself: binding it at SOCKET_PATH without stealing it
// from a usnetd that is alive, and removing it again.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
)

// DefaultSocketPath is where the original and this usnetd listen
// (wire.DefaultSocketPath).
const DefaultSocketPath = wire.DefaultSocketPath

// ErrAlreadyRunning is returned by NewServer when another usnetd serves the
// socket path already.
var ErrAlreadyRunning = errors.New("another usnetd is running")

// controlBufferSize is SO_SNDBUF and SO_RCVBUF of the control socket: room
// for the largest answer (QueryStatus) and a burst of requests.
const controlBufferSize = 1 << 20

// probeTimeout is how long NewServer waits for a usnetd already bound at the
// socket path to answer QueryUsedPorts.
const probeTimeout = 500 * time.Millisecond

// controlSocket is the bound control socket.
type controlSocket struct {
	file *os.File
	addr clientAddr
	lock *os.File // path sockets: SOCKET_PATH.lock, held (flock) while serving
	dev  uint64   // the socket file's device and inode, to remove only our own
	ino  uint64
}

// listenControl binds the control socket at addr: mode 0770 and, with
// hasGID, group gid. A path that holds a stale socket (nobody bound) is
// replaced; one on which a usnetd answers is ErrAlreadyRunning; anything
// else there is an error, never removed.
func listenControl(addr clientAddr, gid uint32, hasGID bool) (*controlSocket, error) {
	cs := &controlSocket{addr: addr}
	if !addr.abstract {
		if err := cs.takeLock(addr.name + ".lock"); err != nil {
			return nil, err
		}
		if err := clearStale(addr); err != nil {
			cs.lock.Close()
			return nil, err
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		cs.unlock()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	fail := func(err error) (*controlSocket, error) {
		unix.Close(fd)
		cs.unlock()
		return nil, err
	}
	for _, o := range [][2]int{{unix.SO_PASSCRED, 1}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], o[1]); err != nil {
			return fail(fmt.Errorf("control socket: SO_PASSCRED: %w", err))
		}
	}
	// SCM_PIDFD (Linux 6.5) names the sender's process without the PID
	// reuse race of pidfd_open; older kernels lack it and the server falls
	// back to pidfd_open.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSPIDFD, 1)
	for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], controlBufferSize); err != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], controlBufferSize)
		}
	}
	rsa, l, err := addr.sockaddr()
	if err != nil {
		return fail(err)
	}
	if err := bindRaw(fd, rsa, l); err != nil {
		if addr.abstract && errors.Is(err, unix.EADDRINUSE) {
			if answered, _ := probeServer(addr, probeTimeout); answered {
				return fail(fmt.Errorf("control socket %s: %w (it answers there)", addr, ErrAlreadyRunning))
			}
			return fail(fmt.Errorf("control socket %s: the abstract name is taken by a process that does not answer as usnetd", addr))
		}
		return fail(fmt.Errorf("control socket %s: bind: %w", addr, err))
	}
	if !addr.abstract {
		// Before chmod the socket has mode 0777 &^ umask; the server checks
		// every sender's credentials anyway (see allowed).
		if hasGID {
			if err := unix.Lchown(addr.name, -1, int(gid)); err != nil {
				os.Remove(addr.name)
				return fail(fmt.Errorf("control socket %s: chown to group %d: %w", addr, gid, err))
			}
		}
		if err := unix.Chmod(addr.name, 0o770); err != nil {
			os.Remove(addr.name)
			return fail(fmt.Errorf("control socket %s: chmod 0770: %w", addr, err))
		}
		var st unix.Stat_t
		if err := unix.Lstat(addr.name, &st); err != nil {
			return fail(fmt.Errorf("control socket %s: %w", addr, err))
		}
		cs.dev, cs.ino = st.Dev, st.Ino
	}
	cs.file = os.NewFile(uintptr(fd), "usnetd-control")
	return cs, nil
}

func bindRaw(fd int, rsa *unix.RawSockaddrUnix, l uint32) error {
	_, _, e := unix.Syscall(unix.SYS_BIND, uintptr(fd), uintptr(unsafe.Pointer(rsa)), uintptr(l))
	if e != 0 {
		return e
	}
	return nil
}

// takeLock holds an exclusive flock on path for the server's lifetime, so
// that two usnetd starting at once cannot both take the socket path.
func (cs *controlSocket) takeLock(path string) error {
	for range 10 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("control socket lock %s: %w", path, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return fmt.Errorf("control socket %s: %w (it holds %s)", filepath.Clean(path[:len(path)-len(".lock")]), ErrAlreadyRunning, path)
			}
			return fmt.Errorf("control socket lock %s: %w", path, err)
		}
		// The holder before us may have removed the file after we opened
		// it: the lock counts only if it is on the file at path.
		var a, b unix.Stat_t
		if unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat(path, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino {
			cs.lock = f
			return nil
		}
		f.Close()
	}
	return fmt.Errorf("control socket lock %s: the file keeps changing", path)
}

// unlock removes and releases the lock file.
func (cs *controlSocket) unlock() {
	if cs.lock == nil {
		return
	}
	os.Remove(cs.lock.Name())
	cs.lock.Close()
	cs.lock = nil
}

// clearStale makes way at a socket path: nothing there is fine; a socket
// nobody is bound to is removed; a live usnetd is ErrAlreadyRunning; a
// live socket that does not answer, or a file that is not a socket, is an
// error.
func clearStale(addr clientAddr) error {
	fi, err := os.Lstat(addr.name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", addr, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket %s: exists and is not a socket (%v); not removing it", addr, fi.Mode().Type())
	}
	answered, err := probeServer(addr, probeTimeout)
	switch {
	case answered:
		return fmt.Errorf("control socket %s: %w (it answers there)", addr, ErrAlreadyRunning)
	case errors.Is(err, unix.ECONNREFUSED):
		if err := os.Remove(addr.name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("control socket %s: removing the stale socket: %w", addr, err)
		}
		return nil
	case err == nil:
		return fmt.Errorf("control socket %s: a process is bound there but does not answer as usnetd; not taking it over", addr)
	}
	return fmt.Errorf("control socket %s: checking whether it is in use: %w", addr, err)
}

// probeServer sends QueryUsedPorts (which every usnetd, the original too,
// answers) to addr from an autobound socket and waits up to timeout for an
// answer. err is the send's error (ECONNREFUSED: nobody is bound there).
func probeServer(addr clientAddr, timeout time.Duration) (answered bool, err error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{}); err != nil { // autobind: an abstract name
		return false, err
	}
	if err := sendmsg(fd, []byte(`"QueryUsedPorts"`), nil, addr); err != nil {
		return false, err
	}
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		n, err := unix.Poll(p, int(left/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		return n > 0, nil
	}
}

// close closes the socket and removes its file (if it is still ours) and
// the lock.
func (cs *controlSocket) close() error {
	err := cs.file.Close()
	if !cs.addr.abstract {
		var st unix.Stat_t
		if unix.Lstat(cs.addr.name, &st) == nil && st.Dev == cs.dev && st.Ino == cs.ino {
			os.Remove(cs.addr.name)
		}
	}
	cs.unlock()
	return err
}
