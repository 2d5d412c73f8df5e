package client

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
)

// The backoff of a Session between attempts to attach again.
const (
	ReattachFirst = 50 * time.Millisecond
	ReattachMax   = time.Second
)

// ErrDetached: the Session lost usnetd and waits for it to come back.
var ErrDetached = errors.New("usnetd went away; waiting for it to come back")

// SessionOptions configure OpenSession.
type SessionOptions struct {
	// Options say how to reach usnetd, for the first attach and every
	// later one.
	Options
	// Interface is the NIC whose channel the session holds.
	Interface string
	// UDS asks for Unix datagram channels only (RequestUDS). By default
	// the session asks for a shared-memory channel and takes a datagram
	// channel where usnetd refuses it or does not know the request
	// (RequestChannel), at the first attach and at every later one.
	UDS bool
	// Reattached is called, from the session's goroutine, after usnetd
	// came back and the session attached again: ch is the new channel
	// (the callee owns it; the old one is dead; its kind may differ from
	// the old one's), refused joins the rules usnetd refused to take back
	// (nil: all were registered again). The session's methods may be
	// called from it.
	Reattached func(ch Channel, refused error)
}

// Session is one channel to usnetd that survives restarts of usnetd.
//
// usnetd's channels and rules die with its process. A Session notices
// that (the channel's maker, usnetd, exits: the session watches a pidfd of
// it, from SO_PEERPIDFD; or the caller reports through Lost a send on a
// datagram channel that failed with ECONNREFUSED, EPIPE or ENOTCONN, or
// ring.ErrClosed from a shared-memory channel), then dials
// again with backoff (at once, then after ReattachFirst, doubling up to
// ReattachMax between tries; forever, until Close), requests a new channel
// on the same interface, registers every rule added through it and not
// removed (AddMatch), and hands the new channel to
// SessionOptions.Reattached. While usnetd is away, its requests fail with
// ErrDetached.
type Session struct {
	opt  SessionOptions
	mu   sync.Mutex // guards c, rules; held across the requests
	c    *Client    // nil while usnetd is away
	rule []wire.Match

	gen      atomic.Uint64 // channels handed out so far
	w        *Watch
	stopOnce sync.Once
}

// OpenSession dials usnetd, requests a channel on opt.Interface and returns
// the session and the channel (the caller owns it).
func OpenSession(opt SessionOptions) (*Session, Channel, error) {
	c, err := Dial(opt.Options)
	if err != nil {
		return nil, Channel{}, err
	}
	s := &Session{opt: opt, c: c}
	ch, err := s.request(c)
	if err != nil {
		c.Close()
		return nil, Channel{}, err
	}
	s.gen.Store(1)
	peer, _ := ch.Peer()
	s.w, err = StartWatch(WatchOptions{Peer: peer, Sends: true, Generation: s.gen.Load,
		Detach: s.detach, Attach: s.attach})
	if err != nil {
		c.Close()
		ch.Close()
		return nil, Channel{}, err
	}
	return s, ch, nil
}

// request asks c for a channel of the kind the options say.
func (s *Session) request(c *Client) (Channel, error) {
	if !s.opt.UDS {
		return c.RequestChannel(s.opt.Interface)
	}
	f, err := c.RequestUDS(s.opt.Interface)
	if err != nil {
		return Channel{}, err
	}
	return Channel{UDS: f}, nil
}

// AddMatch registers a rule for the session's channel; it is registered
// again after each reattach until RemoveMatch.
func (s *Session) AddMatch(m wire.Match) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return fmt.Errorf("AddMatch: %w", ErrDetached)
	}
	if err := s.c.AddMatch(m); err != nil {
		return err
	}
	s.rule = append(s.rule, m)
	return nil
}

// RemoveMatch removes a rule (from usnetd, if it is there).
func (s *Session) RemoveMatch(m wire.Match) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.rule {
		if r.Equal(m) {
			s.rule = append(s.rule[:i], s.rule[i+1:]...)
			break
		}
	}
	if s.c == nil {
		return nil
	}
	return s.c.RemoveMatch(m)
}

// QueryUsedPorts asks usnetd which local ports are in use.
func (s *Session) QueryUsedPorts() (wire.UsedPorts, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return wire.UsedPorts{}, fmt.Errorf("QueryUsedPorts: %w", ErrDetached)
	}
	return s.c.QueryUsedPorts()
}

// QueryPortsInUse asks usnetd which local ports of proto are in use.
func (s *Session) QueryPortsInUse(proto uint8) (*wire.PortSet, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return nil, fmt.Errorf("QueryPortsInUse: %w", ErrDetached)
	}
	return s.c.QueryPortsInUse(proto)
}

// Lost tells the session that a send on its current channel failed
// because the other end is closed (ECONNREFUSED, EPIPE, ENOTCONN; ring.ErrClosed). It does
// not block. Reports about a channel that was replaced already do
// nothing, so call it from the goroutine that uses the channel, before it
// takes the next one from Reattached.
func (s *Session) Lost() { s.w.Lost(s.gen.Load()) }

// Close stops the session and sends DeleteClient if usnetd is there. An
// attempt to attach that is under way finishes first (bounded by the
// Options' Timeout). The caller closes its channel.
func (s *Session) Close() error {
	var err error
	s.stopOnce.Do(func() {
		s.w.Stop()
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.c != nil {
			err = s.c.Close()
			s.c = nil
		}
	})
	return err
}

// detach drops the client of the usnetd that went away.
func (s *Session) detach() {
	s.mu.Lock()
	old := s.c
	s.c = nil
	s.mu.Unlock()
	if old != nil {
		old.Close() // DeleteClient goes nowhere; the socket file goes
	}
}

// attach is one attempt to attach again (the Watch's Attach): on success
// the new channel goes to SessionOptions.Reattached.
func (s *Session) attach() (peer int, sends bool, err error) {
	ch, refused, err := s.attachOnce()
	if err != nil {
		return -1, false, err
	}
	peer, _ = ch.Peer()
	if s.opt.Reattached != nil {
		s.opt.Reattached(ch, refused)
	} else {
		ch.Close()
	}
	return peer, true, nil
}

// attachOnce dials, requests a channel and registers the rules again.
func (s *Session) attachOnce() (ch Channel, refused, err error) {
	c, err := Dial(s.opt.Options)
	if err != nil {
		return Channel{}, nil, err
	}
	ch, err = s.request(c)
	if err != nil {
		c.Close()
		return Channel{}, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, m := range s.rule {
		if err := c.AddMatch(m); err != nil {
			if !errors.Is(err, ErrRefused) {
				c.Close()
				ch.Close()
				return Channel{}, nil, err // gone again: start over
			}
			errs = append(errs, fmt.Errorf("rule %v after usnetd restarted: %w", m, err))
		}
	}
	s.c = c
	s.gen.Add(1)
	return ch, errors.Join(errs...), nil
}

// PeerPidfd returns a pidfd of the process that made the channel ch
// (usnetd): it becomes readable when that process exits. It is -1 when
// there is none to watch: the kernel cannot say, the process is not
// visible from here, or it is this process. The caller closes it.
func PeerPidfd(ch *os.File) int {
	p, _ := ChannelPeer(ch)
	return p
}

// Peer is ChannelPeer for either kind of channel: usnetd made a
// shared-memory channel's wake-up socket pair as it makes a datagram
// channel's socket pair. The caller closes the pidfd.
func (ch Channel) Peer() (pidfd int, self bool) {
	if ch.SHM == nil {
		if ch.UDS == nil {
			return -1, false
		}
		return ChannelPeer(ch.UDS)
	}
	fd, err := unix.FcntlInt(uintptr(ch.SHM.WakeFD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, false
	}
	f := os.NewFile(uintptr(fd), "usnetd-shm-wake")
	defer f.Close()
	return ChannelPeer(f)
}

// ChannelPeer is PeerPidfd that also says whether this process made the
// channel (self; the pidfd is then -1): a channel made in-process, by a
// switch in the same program as in tests, has no usnetd to come back, so
// a failed send on it is not a reason to attach again.
func ChannelPeer(ch *os.File) (pidfd int, self bool) {
	rc, err := ch.SyscallConn()
	if err != nil {
		return -1, false
	}
	pidfd = -1
	rc.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil || cred.Pid <= 0 {
			return
		}
		if int(cred.Pid) == os.Getpid() {
			self = true
			return
		}
		p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		if err != nil {
			// Before Linux 6.5: by PID (a PID reused before this runs
			// would only delay noticing to the first failed send).
			p, err = unix.PidfdOpen(int(cred.Pid), 0)
		}
		if err == nil && p >= 0 {
			unix.CloseOnExec(p)
			pidfd = p
		}
	})
	return pidfd, self
}
