package client

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/shm/ring"
	"github.com/usnetd/usnetd/control/wire"
)

// Errors of the client. They are wrapped with what was asked of whom, so
// test them with errors.Is.
var (
	// ErrRefused: usnetd answered "ER" (unknown interface, a rule that
	// is held already or overlaps another owner's, a limit, a privileged
	// port, access denied on an abstract socket, a malformed request...).
	// The server's log says which.
	ErrRefused = errors.New("usnetd refused the request")
	// ErrTimeout: no answer within Options.Timeout.
	ErrTimeout = errors.New("no answer from usnetd")
	// ErrNotRunning: nothing serves the socket path (no socket file, or
	// a stale one), or the server went away.
	ErrNotRunning = errors.New("usnetd is not running")
	// ErrAccessDenied: the socket's permissions do not let this user in
	// (usnetd lets root and the ALLOW_GID group in).
	ErrAccessDenied = errors.New("access to the usnetd control socket denied")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("usnetd client closed")
	// ErrProtocol: the answer was not one the request can have.
	ErrProtocol = errors.New("unexpected answer from usnetd")
)

// DefaultTimeout is how long a request waits for its answer by default.
const DefaultTimeout = 5 * time.Second

// Options configure Dial. Zero values mean the defaults.
type Options struct {
	// SocketPath is usnetd's control socket, a path or "@name";
	// default wire.DefaultSocketPath.
	SocketPath string
	// Abstract binds the client's socket to an abstract name
	// ("@usnet-client-PID-RANDOM") instead of a file.
	Abstract bool
	// Dir is where the client's socket file is made
	// ("usnet-client-PID-RANDOM", as the Rust client names it). By
	// default the first of $XDG_RUNTIME_DIR (as the Rust client), then
	// /run/user/UID if it exists, then the temporary directory, where the
	// socket can be bound and connected. usnetd must be able to reach it
	// (root can). Before binding, the sockets that clients killed before
	// they could remove them left in the directory are removed
	// (RemoveStale).
	Dir string
	// Timeout bounds the wait for each answer; default DefaultTimeout.
	Timeout time.Duration
}

// Client is a connection to usnetd's control socket. Its methods are safe
// for concurrent use; requests are sent one at a time, because the
// protocol's answers do not say which request they answer.
type Client struct {
	mu      sync.Mutex
	conn    *net.UnixConn
	local   string // bound path to remove at Close; "" for abstract
	laddr   string
	server  string
	timeout time.Duration
	buf     []byte
	oob     []byte
	closed  bool
	asked   bool // a RequestUDS was sent: usnetd may hold a channel and rules of ours
}

// Dial binds a private client socket and connects it to usnetd's control
// socket. Connecting makes the kernel deliver to the client only what the
// server sends, and finds out at once whether usnetd is there: a missing or
// stale socket is ErrNotRunning, missing permissions ErrAccessDenied.
func Dial(opt Options) (*Client, error) {
	if opt.SocketPath == "" {
		opt.SocketPath = wire.DefaultSocketPath
	}
	if opt.Timeout <= 0 {
		opt.Timeout = DefaultTimeout
	}
	raddr := &net.UnixAddr{Name: opt.SocketPath, Net: "unixgram"}
	newClient := func(conn *net.UnixConn, local, laddr string) *Client {
		return &Client{
			conn: conn, local: local, laddr: laddr, server: opt.SocketPath, timeout: opt.Timeout,
			buf: make([]byte, wire.MaxAnswerSize+1), oob: make([]byte, unix.CmsgSpace(4*4)),
		}
	}
	if opt.Abstract {
		laddr := "@" + clientName()
		conn, err := net.DialUnix("unixgram", &net.UnixAddr{Name: laddr, Net: "unixgram"}, raddr)
		if err != nil {
			return nil, dialError(opt.SocketPath, err)
		}
		return newClient(conn, "", laddr), nil
	}
	dirs := []string{opt.Dir}
	if opt.Dir == "" {
		dirs = defaultDirs()
	}
	var lastErr error
	for _, dir := range dirs {
		RemoveStale(dir)
		local := filepath.Join(dir, clientName())
		conn, err := net.DialUnix("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"}, raddr)
		if err != nil {
			os.Remove(local) // bound before the connect failed
			lastErr = err
			continue
		}
		// Anyone may write to the file; only the server can send to a
		// connected socket anyway. This lets a usnetd that does not run
		// as root, or runs without CAP_DAC_OVERRIDE
		// (deploy/usnetd.service), answer.
		_ = os.Chmod(local, 0o666)
		return newClient(conn, local, local), nil
	}
	return nil, dialError(opt.SocketPath, lastErr)
}

// clientName is "usnet-client-PID-RANDOM", as the Rust client names its
// socket.
func clientName() string {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:]) // crypto/rand's Read never fails
	return "usnet-client-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:])
}

// defaultDirs lists where the client's socket may be bound, best first:
// $XDG_RUNTIME_DIR, /run/user/UID when it exists, the temporary directory.
func defaultDirs() []string {
	var ds []string
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		ds = append(ds, d)
	}
	d := "/run/user/" + strconv.Itoa(os.Getuid())
	if fi, err := os.Stat(d); err == nil && fi.IsDir() && (len(ds) == 0 || ds[0] != d) {
		ds = append(ds, d)
	}
	return append(ds, os.TempDir())
}

// RemoveStale removes the client sockets ("usnet-client-PID-RANDOM") in
// dir of processes that are gone, killed before they could remove theirs,
// going by the PID in the name. Files that are not sockets, and sockets of
// live processes, are left alone. Dial calls it.
func RemoveStale(dir string) {
	names, _ := filepath.Glob(filepath.Join(dir, "usnet-client-*-*"))
	for _, p := range names {
		var pid int
		var rest string
		if n, _ := fmt.Sscanf(filepath.Base(p), "usnet-client-%d-%s", &pid, &rest); n != 2 || pid <= 0 {
			continue
		}
		if fi, err := os.Lstat(p); err != nil || fi.Mode().Type() != os.ModeSocket {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			os.Remove(p)
		}
	}
}

// dialError names why the connect failed.
func dialError(path string, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("usnetd control socket %s: %w", path, err)
	}
	switch errno {
	case unix.ENOENT:
		return fmt.Errorf("%w: no socket at %s", ErrNotRunning, path)
	case unix.ECONNREFUSED:
		return fmt.Errorf("%w: nothing listens on %s (a stale socket)", ErrNotRunning, path)
	case unix.EACCES, unix.EPERM:
		return fmt.Errorf("%w: %s (run as root or as a member of usnetd's ALLOW_GID group)", ErrAccessDenied, path)
	}
	return fmt.Errorf("usnetd control socket %s: %w", path, err)
}

// LocalAddr is the client's own address: its socket path or "@name".
func (c *Client) LocalAddr() string { return c.laddr }

// RequestUDS asks for a packet channel on the NIC iface: one end of a Unix
// datagram socket pair, one Ethernet frame per datagram. The caller owns
// the file. The PID sent is this process's.
func (c *Client) RequestUDS(iface string) (*os.File, error) {
	msg, err := wire.EncodeRequest(wire.RequestUDS{Interface: iface, PID: int32(os.Getpid())})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = true
	data, fds, err := c.roundTrip(msg)
	if err != nil {
		return nil, fmt.Errorf("RequestUDS %s: %w", iface, err)
	}
	if string(data) == wire.RawFD && len(fds) == 1 {
		return os.NewFile(uintptr(fds[0]), "usnetd-channel-"+iface), nil
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	if string(data) == wire.RawER {
		return nil, fmt.Errorf("RequestUDS %s: %w", iface, ErrRefused)
	}
	return nil, fmt.Errorf("RequestUDS %s: %w: %.40q with %d descriptors", iface, ErrProtocol, data, len(fds))
}

// RequestSHM asks for a shared-memory packet channel on the NIC iface
// (backends/shm/ring has its layout) and maps it. The caller owns the
// endpoint and closes it. A usnetd without shared-memory channels answers
// ErrRefused (this one with the feature off, or an older one) or nothing
// (the Rust original: ErrTimeout).
func (c *Client) RequestSHM(iface string) (*ring.Endpoint, error) {
	msg, err := wire.EncodeRequest(wire.RequestSHM{Interface: iface, PID: int32(os.Getpid())})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = true
	data, fds, err := c.roundTrip(msg)
	if err != nil {
		return nil, fmt.Errorf("RequestSHM %s: %w", iface, err)
	}
	if string(data) == wire.RawFD && len(fds) == 2 {
		ep, err := ring.OpenEndpoint(fds[0], fds[1])
		if err != nil {
			return nil, fmt.Errorf("RequestSHM %s: %w: %v", iface, ErrProtocol, err)
		}
		return ep, nil
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	if string(data) == wire.RawER {
		return nil, fmt.Errorf("RequestSHM %s: %w", iface, ErrRefused)
	}
	return nil, fmt.Errorf("RequestSHM %s: %w: %.40q with %d descriptors", iface, ErrProtocol, data, len(fds))
}

// Channel is a packet channel from usnetd: exactly one of SHM and UDS is
// set.
type Channel struct {
	SHM *ring.Endpoint // a shared-memory channel (RequestSHM)
	UDS *os.File       // a Unix datagram channel (RequestUDS)
}

// Kind is "shm" or "uds".
func (ch Channel) Kind() string {
	if ch.SHM != nil {
		return "shm"
	}
	return "uds"
}

// Close closes the channel.
func (ch Channel) Close() error {
	if ch.SHM != nil {
		return ch.SHM.Close()
	}
	if ch.UDS != nil {
		return ch.UDS.Close()
	}
	return nil
}

// RequestChannel asks for a shared-memory channel and, when usnetd refuses
// it or does not answer (a usnetd without it), for a Unix datagram
// channel.
func (c *Client) RequestChannel(iface string) (Channel, error) {
	ep, err := c.RequestSHM(iface)
	if err == nil {
		return Channel{SHM: ep}, nil
	}
	if !errors.Is(err, ErrRefused) && !errors.Is(err, ErrTimeout) {
		return Channel{}, err
	}
	f, uerr := c.RequestUDS(iface)
	if uerr != nil {
		return Channel{}, fmt.Errorf("%w (after %v)", uerr, err)
	}
	return Channel{UDS: f}, nil
}

// AddMatch registers a rule for the client's oldest channel (so
// RequestUDS first).
func (c *Client) AddMatch(m wire.Match) error {
	msg, err := wire.EncodeRequest(wire.AddMatch{Match: m})
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	a, err := c.ask(msg)
	if err != nil {
		return fmt.Errorf("AddMatch %s: %w", m, err)
	}
	switch a.(type) {
	case wire.AnswerOK:
		return nil
	case wire.AnswerER:
		return fmt.Errorf("AddMatch %s: %w", m, ErrRefused)
	}
	return fmt.Errorf("AddMatch %s: %w: %s", m, ErrProtocol, a.Type())
}

// RemoveMatch removes one of the client's rules. usnetd does not answer
// it, so success is not confirmed.
func (c *Client) RemoveMatch(m wire.Match) error {
	msg, err := wire.EncodeRequest(wire.RemoveMatch{Match: m})
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.send(msg); err != nil {
		return fmt.Errorf("RemoveMatch: %w", err)
	}
	return nil
}

// QueryUsedPorts asks which local ports are in use: by rules of usnetd's
// switch and by the kernel's sockets.
func (c *Client) QueryUsedPorts() (wire.UsedPorts, error) {
	msg, _ := wire.EncodeRequest(wire.QueryUsedPorts{})
	c.mu.Lock()
	defer c.mu.Unlock()
	a, err := c.ask(msg)
	if err != nil {
		return wire.UsedPorts{}, fmt.Errorf("QueryUsedPorts: %w", err)
	}
	switch v := a.(type) {
	case wire.UsedPorts:
		return v, nil
	case wire.AnswerER:
		return wire.UsedPorts{}, fmt.Errorf("QueryUsedPorts: %w", ErrRefused)
	}
	return wire.UsedPorts{}, fmt.Errorf("QueryUsedPorts: %w: %s", ErrProtocol, a.Type())
}

// QueryPortsInUse asks which local ports of protocol proto are in use on
// usnetd's interfaces: by its rules and by the kernel's sockets. The
// answer has a fixed size (one bit per port) however many sockets the
// host has. A usnetd older than this client does not answer it
// (ErrTimeout).
func (c *Client) QueryPortsInUse(proto uint8) (*wire.PortSet, error) {
	msg, _ := wire.EncodeRequest(wire.QueryPortsInUse{Protocol: proto})
	c.mu.Lock()
	defer c.mu.Unlock()
	a, err := c.ask(msg)
	if err != nil {
		return nil, fmt.Errorf("QueryPortsInUse: %w", err)
	}
	switch v := a.(type) {
	case wire.PortsInUse:
		if v.Protocol != proto {
			return nil, fmt.Errorf("QueryPortsInUse: %w: answer for protocol %d", ErrProtocol, v.Protocol)
		}
		return v.Ports, nil
	case wire.AnswerER:
		return nil, fmt.Errorf("QueryPortsInUse: %w", ErrRefused)
	}
	return nil, fmt.Errorf("QueryPortsInUse: %w: %s", ErrProtocol, a.Type())
}

// QueryStatus asks for usnetd's state: interfaces, endpoints, rules.
// A usnetd older than this client does not answer it (ErrTimeout).
func (c *Client) QueryStatus() (wire.Status, error) {
	msg, _ := wire.EncodeRequest(wire.QueryStatus{})
	c.mu.Lock()
	defer c.mu.Unlock()
	a, err := c.ask(msg)
	if err != nil {
		return wire.Status{}, fmt.Errorf("QueryStatus: %w", err)
	}
	switch v := a.(type) {
	case wire.Status:
		return v, nil
	case wire.AnswerER:
		return wire.Status{}, fmt.Errorf("QueryStatus: %w", ErrRefused)
	}
	return wire.Status{}, fmt.Errorf("QueryStatus: %w: %s", ErrProtocol, a.Type())
}

// Close sends DeleteClient (usnetd drops the client's channels and rules)
// if the client ever sent RequestUDS (a client that only queried holds
// nothing to delete), closes the socket and removes its file. It is
// idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.asked {
		msg, _ := wire.EncodeRequest(wire.DeleteClient{})
		_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
		_, _ = c.conn.Write(msg) // best effort: usnetd may be gone
	}
	err := c.conn.Close()
	if c.local != "" {
		if rerr := os.Remove(c.local); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// ask sends msg and decodes the answer. Descriptors that come with it are
// closed.
func (c *Client) ask(msg []byte) (wire.Answer, error) {
	data, fds, err := c.roundTrip(msg)
	if err != nil {
		return nil, err
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	a, err := wire.DecodeAnswer(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return a, nil
}

// roundTrip sends msg and receives one answer with its descriptors.
// Answers left over from a request that timed out are thrown away first.
func (c *Client) roundTrip(msg []byte) ([]byte, []int, error) {
	if c.closed {
		return nil, nil, ErrClosed
	}
	c.drain()
	if err := c.send(msg); err != nil {
		return nil, nil, err
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	n, oobn, flags, _, err := c.conn.ReadMsgUnix(c.buf, c.oob)
	if err != nil {
		return nil, nil, c.ioError(err)
	}
	fds := parseRights(c.oob[:oobn])
	if flags&unix.MSG_TRUNC != 0 || n > wire.MaxAnswerSize {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, nil, fmt.Errorf("%w: answer longer than %d bytes", ErrProtocol, wire.MaxAnswerSize)
	}
	return c.buf[:n], fds, nil
}

func (c *Client) send(msg []byte) error {
	if c.closed {
		return ErrClosed
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := c.conn.Write(msg); err != nil {
		return c.ioError(err)
	}
	return nil
}

// drain reads what is queued without waiting: answers to requests whose
// wait timed out would otherwise be taken for the next request's.
// (A read deadline in the past would not do: Go does not even try the
// read then; hence a raw read with MSG_DONTWAIT.)
func (c *Client) drain() {
	rc, err := c.conn.SyscallConn()
	if err != nil {
		return
	}
	_ = c.conn.SetReadDeadline(time.Time{}) // RawConn.Read, too, fails at once past a deadline
	for {
		var rerr error
		var oobn int
		err := rc.Read(func(fd uintptr) bool {
			_, oobn, _, _, rerr = unix.Recvmsg(int(fd), c.buf, c.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			return true // never wait
		})
		if err != nil || rerr != nil {
			return
		}
		for _, fd := range parseRights(c.oob[:oobn]) {
			unix.Close(fd)
		}
	}
}

func (c *Client) ioError(err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w within %v (%s)", ErrTimeout, c.timeout, c.server)
	case errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ENOTCONN):
		return fmt.Errorf("%w: %s went away", ErrNotRunning, c.server)
	case errors.Is(err, net.ErrClosed):
		return ErrClosed
	}
	return fmt.Errorf("%s: %w", c.server, err)
}

func parseRights(oob []byte) []int {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range cms {
		if f, err := unix.ParseUnixRights(&cms[i]); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}
