package usnet

// The client side of usnetd's control protocol, as much of it as a stack
// needs. It is small enough to keep here, so that usnet depends on the
// wire codec of package control only.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
)

// Attacher is a stack's connection to usnetd: the requests of the control
// protocol that a stack makes. Close sends DeleteClient and releases the
// connection; it is called once, when the stack is torn down. The methods
// are called from one goroutine at a time.
type Attacher interface {
	// RequestUDS asks for a packet channel on the interface: one end of a
	// socketpair(AF_UNIX, SOCK_DGRAM), one Ethernet frame per datagram.
	RequestUDS(iface string) (*os.File, error)
	// AddMatch registers a rule for the stack's channel.
	AddMatch(wire.Match) error
	// RemoveMatch removes one of the stack's rules.
	RemoveMatch(wire.Match) error
	// QueryUsedPorts lists the ports that usnetd has rules for.
	QueryUsedPorts() (wire.UsedPorts, error)
	// Close sends DeleteClient: the channel and the rules go.
	Close() error
}

// ErrRefused is wrapped by the errors of the control client when usnetd
// answers "ER".
var ErrRefused = errors.New("usnet: usnetd refused the request")

// controlTimeout bounds the wait for an answer. usnetd always answers
// RequestUDS and AddMatch; a server that does not is broken, and the
// client then fails every later request rather than read a stale answer.
const controlTimeout = 5 * time.Second

// controlClient speaks the control protocol over a Unix datagram socket
// bound to a path of its own (usnetd sends its answers there) and
// connected to usnetd's socket. The path is removed on Close and on every
// failure after it was bound; paths left by processes that were killed are
// removed by the next DialControl.
type controlClient struct {
	mu      sync.Mutex
	conn    *net.UnixConn
	path    string
	socket  string        // usnetd's socket, for ChannelMTU's own connection
	timeout time.Duration // for an answer; 0: controlTimeout
	broken  error
}

// channelMTUer is an Attacher that can say what MTU a channel on an
// interface carries (0: it does not know).
type channelMTUer interface {
	ChannelMTU(iface string) (int, error)
}

// statusTimeout bounds the wait for a QueryStatus answer: the original
// usnetd does not know the request and never answers it.
const statusTimeout = time.Second

// ChannelMTU asks usnetd (QueryStatus) for the MTU its channels on iface
// carry. It uses a connection of its own, closed afterwards: a server that
// does not know QueryStatus leaves it unanswered, and a late answer must
// not be taken for the answer to a later request.
func (c *controlClient) ChannelMTU(iface string) (int, error) {
	a, err := DialControl(c.socket)
	if err != nil {
		return 0, err
	}
	q := a.(*controlClient)
	q.timeout = statusTimeout
	defer q.closeQuietly()
	ans, _, err := q.request(wire.QueryStatus{}, true)
	if err != nil {
		return 0, err
	}
	st, ok := ans.(wire.Status)
	if !ok {
		return 0, fmt.Errorf("usnet: QueryStatus answered %s", ans.Type())
	}
	for _, in := range st.Interfaces {
		if in.Name == iface {
			return in.MTU, nil
		}
	}
	return 0, nil
}

// closeQuietly closes the socket and removes its file without telling
// usnetd (a connection that never attached has nothing to delete).
func (c *controlClient) closeQuietly() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
		os.Remove(c.path)
	}
	c.broken = net.ErrClosed
}

// DialControl connects to usnetd's control socket at socketPath. It is the
// default of Config.Attach.
func DialControl(socketPath string) (Attacher, error) {
	raddr := &net.UnixAddr{Name: socketPath, Net: "unixgram"}
	var lastErr error
	for _, dir := range clientDirs() {
		removeStale(dir)
		var rnd [6]byte
		rand.Read(rnd[:])
		path := filepath.Join(dir, fmt.Sprintf("usnet-client-%d-%s", os.Getpid(), hex.EncodeToString(rnd[:])))
		conn, err := net.DialUnix("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"}, raddr)
		if err != nil {
			os.Remove(path) // bind may have succeeded before connect failed
			lastErr = err
			continue
		}
		// usnetd sends its answers here. It runs as root but without
		// CAP_DAC_OVERRIDE (deploy/usnetd.service), so the socket must be
		// writable by others; only the server it is connected to can send
		// to it anyway.
		_ = os.Chmod(path, 0o666)
		return &controlClient{conn: conn, path: path, socket: socketPath}, nil
	}
	return nil, fmt.Errorf("usnet: connect to usnetd at %s: %w", socketPath, lastErr)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// removeStale removes the client sockets in dir of processes that are gone
// (killed before they could remove theirs), going by the PID in the name.
func removeStale(dir string) {
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

// clientDirs lists where the client's socket may be bound, best first: the
// user's runtime directory (as the Rust client), then the temp directory.
func clientDirs() []string {
	var ds []string
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		ds = append(ds, d)
	}
	if d := fmt.Sprintf("/run/user/%d", os.Getuid()); fileExists(d) {
		ds = append(ds, d)
	}
	return append(ds, os.TempDir())
}

// request sends req and, if want, waits for one answer with at most one
// descriptor.
func (c *controlClient) request(req wire.Request, want bool) (wire.Answer, *os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, nil, c.broken
	}
	b, err := wire.EncodeRequest(req)
	if err != nil {
		return nil, nil, err
	}
	if _, err := c.conn.Write(b); err != nil {
		return nil, nil, fmt.Errorf("usnet: send %s: %w", req.Type(), err)
	}
	if !want {
		return nil, nil, nil
	}
	buf := make([]byte, wire.MaxAnswerSize+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	timeout := controlTimeout
	if c.timeout > 0 {
		timeout = c.timeout
	}
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	n, oobn, _, _, err := c.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		c.broken = fmt.Errorf("usnet: no answer from usnetd to %s: %w", req.Type(), err)
		return nil, nil, c.broken
	}
	var file *os.File
	if oobn > 0 {
		if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, cm := range cms {
				fds, err := unix.ParseUnixRights(&cm)
				if err != nil {
					continue
				}
				for _, fd := range fds {
					if file == nil {
						file = os.NewFile(uintptr(fd), "usnetd-channel")
					} else {
						unix.Close(fd) // only one is expected
					}
				}
			}
		}
	}
	a, err := wire.DecodeAnswer(buf[:n])
	if err != nil {
		if file != nil {
			file.Close()
		}
		return nil, nil, fmt.Errorf("usnet: answer to %s: %w", req.Type(), err)
	}
	if _, ok := a.(wire.AnswerFD); !ok && file != nil {
		file.Close()
		file = nil
	}
	return a, file, nil
}

func (c *controlClient) RequestUDS(iface string) (*os.File, error) {
	a, f, err := c.request(wire.RequestUDS{Interface: iface, PID: int32(os.Getpid())}, true)
	if err != nil {
		return nil, err
	}
	switch a.(type) {
	case wire.AnswerFD:
		if f == nil {
			return nil, errors.New("usnet: RequestUDS answered without a descriptor")
		}
		return f, nil
	case wire.AnswerER:
		return nil, fmt.Errorf("usnet: RequestUDS %q: %w", iface, ErrRefused)
	}
	return nil, fmt.Errorf("usnet: RequestUDS answered %s", a.Type())
}

func (c *controlClient) AddMatch(m wire.Match) error {
	a, _, err := c.request(wire.AddMatch{Match: m}, true)
	if err != nil {
		return err
	}
	switch a.(type) {
	case wire.AnswerOK:
		return nil
	case wire.AnswerER:
		return fmt.Errorf("usnet: AddMatch %s: %w", matchString(m), ErrRefused)
	}
	return fmt.Errorf("usnet: AddMatch answered %s", a.Type())
}

func (c *controlClient) RemoveMatch(m wire.Match) error {
	_, _, err := c.request(wire.RemoveMatch{Match: m}, false)
	return err
}

func (c *controlClient) QueryUsedPorts() (wire.UsedPorts, error) {
	a, _, err := c.request(wire.QueryUsedPorts{}, true)
	if err != nil {
		return wire.UsedPorts{}, err
	}
	if u, ok := a.(wire.UsedPorts); ok {
		return u, nil
	}
	return wire.UsedPorts{}, fmt.Errorf("usnet: QueryUsedPorts answered %s", a.Type())
}

// Close sends DeleteClient, closes the socket and removes its file.
func (c *controlClient) Close() error {
	_, _, err := c.request(wire.DeleteClient{}, false)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	c.conn.Close()
	c.conn = nil
	c.broken = net.ErrClosed
	if rerr := os.Remove(c.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

func matchString(m wire.Match) string {
	s := fmt.Sprintf("proto %d %s", m.Protocol, m.DstAddr)
	if m.DstPort != nil {
		s += fmt.Sprintf(" port %d", *m.DstPort)
	}
	return s
}
