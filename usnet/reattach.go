package usnet

// Surviving a restart of usnetd.
//
// When usnetd stops, the other end of every packet channel and the rules of
// every endpoint go with it. A stack notices in one of two ways:
//
//   - the channel's peer process (usnetd, which made the socketpair) exits:
//     the stack holds a pidfd of it (SO_PEERPIDFD, else SO_PEERCRED and
//     pidfd_open), which becomes readable then. This catches an idle stack
//     (a listener waiting for connections) at once.
//   - a send on the channel fails with ECONNREFUSED, EPIPE or ENOTCONN (the
//     other end is closed), when the channel's maker cannot be watched (a
//     kernel before 6.5 without pidfd_open, a usnetd in a PID namespace
//     that this process cannot see).
//
// A channel that this process made itself (an in-process switch, as in
// tests) is not watched: there is no usnetd to come back.
//
// Then the supervisor (one goroutine per stack) detaches (closes the old
// control connection, removing its socket file), and tries to attach again
// with a bounded backoff: at once, then after 50 ms, doubling up to 1 s
// between tries, forever, until the stack is torn down. Once usnetd
// answers, it requests a new channel (RequestUDS), puts it under the
// running stack (linkEndpoint.swap: the gVisor stack, its addresses,
// listeners and TCP connections stay as they are; segments lost meanwhile
// are retransmitted by TCP) and registers the rules of every open listener
// again (AddMatch). Config.Reattached, if set, is told the outcome.
//
// While usnetd is away, Listen, ListenPacket and Dial fail with ErrDetached
// (they need usnetd to register or choose a port); Close of a listener
// works (its rules are gone with usnetd anyway).

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/client"
)

// The backoff between attempts to attach again: control/client's, as its
// Session's.
const (
	reattachFirst = client.ReattachFirst
	reattachMax   = client.ReattachMax
)

// ErrDetached is the error of Listen, ListenPacket and Dial while the stack
// waits for usnetd to come back. It is client.ErrDetached.
var ErrDetached = client.ErrDetached

// supervisor watches the stack's channel and attaches again when it is
// lost.
type supervisor struct {
	n    *netStack
	wake int           // eventfd: written by stop and by a lost send
	stop chan struct{} // closed by halt
	done chan struct{} // closed when run returns
	// lostGen is 1 + the link generation whose send found the channel
	// closed; 0 when none did.
	lostGen  atomic.Uint64
	peer     int // pidfd of the channel's maker, noPeer or selfPeer; owned by run
	haltOnce sync.Once
}

// startSupervisor starts watching n's channel; peer is what peerPidfd said
// of it (the supervisor owns a pidfd).
func startSupervisor(n *netStack, peer int) (*supervisor, error) {
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		if peer >= 0 {
			unix.Close(peer)
		}
		return nil, err
	}
	s := &supervisor{n: n, wake: wake, peer: peer, stop: make(chan struct{}), done: make(chan struct{})}
	n.link.onLost = s.lost
	go s.run()
	return s, nil
}

// lost is the link's report of a send that found the channel closed. It
// must not block (the link holds its send lock).
func (s *supervisor) lost(gen uint64) {
	s.lostGen.Store(gen + 1)
	var one = [8]byte{1}
	unix.Write(s.wake, one[:])
}

// halt stops the supervisor and waits for it; an attempt to attach that is
// under way finishes first (bounded by the control client's timeout).
func (s *supervisor) halt() {
	s.haltOnce.Do(func() {
		close(s.stop)
		var one = [8]byte{1}
		unix.Write(s.wake, one[:])
		<-s.done
		unix.Close(s.wake)
		if s.peer >= 0 {
			unix.Close(s.peer)
		}
	})
}

func (s *supervisor) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *supervisor) run() {
	defer close(s.done)
	for {
		fds := []unix.PollFd{{Fd: int32(s.wake), Events: unix.POLLIN}}
		if s.peer >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(s.peer), Events: unix.POLLIN})
		}
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			return // cannot happen with valid descriptors
		}
		if s.stopped() {
			return
		}
		var cnt [8]byte
		unix.Read(s.wake, cnt[:])
		lost := len(fds) > 1 && fds[1].Revents != 0
		if g := s.lostGen.Swap(0); g != 0 && g-1 == s.n.link.generation() && s.peer == noPeer {
			lost = true // not a late report about a channel already replaced
		}
		if lost && !s.reattach() {
			return
		}
	}
}

// reattach detaches, then attaches again with backoff until it succeeds
// (true) or the supervisor is stopped (false).
func (s *supervisor) reattach() bool {
	n := s.n
	n.attMu.Lock()
	old := n.att
	n.att = nil
	n.attMu.Unlock()
	if old != nil {
		old.Close() // usnetd is gone: DeleteClient goes nowhere; the socket file is removed
	}
	if s.peer >= 0 {
		unix.Close(s.peer)
	}
	s.peer = noPeer
	delay := reattachFirst
	for try := 0; ; try++ {
		if try > 0 {
			t := time.NewTimer(delay)
			select {
			case <-s.stop:
				t.Stop()
				return false
			case <-t.C:
			}
			delay = min(2*delay, reattachMax)
		}
		if s.stopped() {
			return false
		}
		refused, err := s.attachOnce()
		if errors.Is(err, errHalted) {
			return false
		}
		if err != nil {
			continue // usnetd not back yet, or gone again halfway
		}
		if cb := n.cfg.Reattached; cb != nil {
			cb(refused)
		}
		return true
	}
}

var errHalted = errors.New("usnet: stack torn down")

// attachOnce makes one attempt: attach, request a channel, swap it in,
// register the open listeners' rules. err is nil once the stack runs on the
// new channel; refused then joins the rules usnetd refused.
func (s *supervisor) attachOnce() (refused, err error) {
	n := s.n
	attach := n.cfg.Attach
	if attach == nil {
		attach = DialControl
	}
	att, err := attach(n.res.socketPath)
	if err != nil {
		return nil, err
	}
	f, err := att.RequestUDS(n.res.iface)
	if err != nil {
		att.Close()
		return nil, err
	}
	peer := peerOf(f)
	if err := n.link.swap(f); err != nil {
		att.Close()
		if peer >= 0 {
			unix.Close(peer)
		}
		return nil, errHalted
	}
	n.attMu.Lock()
	defer n.attMu.Unlock()
	var errs []error
	for _, m := range n.live {
		if err := att.AddMatch(m); err != nil {
			if !errors.Is(err, ErrRefused) {
				// usnetd went away again: start over.
				att.Close()
				if peer >= 0 {
					unix.Close(peer)
				}
				return nil, err
			}
			errs = append(errs, fmt.Errorf("usnet: rule %s of an open listener after usnetd restarted: %w", m, err))
		}
	}
	n.att = att
	s.peer = peer
	n.reattaches.Add(1)
	return errors.Join(errs...), nil
}

// peerOf is peerPidfd; tests replace it.
var peerOf = peerPidfd

// What peerPidfd returns when it has no pidfd.
const (
	noPeer   = -1 // the maker cannot be watched: watch failed sends instead
	selfPeer = -2 // this process made the channel: nothing to watch
)

// peerPidfd returns a pidfd of the process that made the channel f
// (usnetd), or noPeer when there is none to watch (the kernel cannot say,
// the process is not visible from here), or selfPeer when it is this
// process (a channel made in-process): client.ChannelPeer.
func peerPidfd(f *os.File) int {
	p, self := client.ChannelPeer(f)
	if self {
		return selfPeer
	}
	if p < 0 {
		return noPeer
	}
	return p
}
