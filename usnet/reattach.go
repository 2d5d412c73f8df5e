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
// Then the supervisor (a client.Watch: one goroutine per stack) detaches
// (closes the old control connection, removing its socket file), and tries
// to attach again with a bounded backoff: at once, then after 50 ms,
// doubling up to 1 s between tries, forever, until the stack is torn
// down. Once usnetd answers, it requests a new channel (RequestSHM, else
// RequestUDS), puts it under the running stack (linkEndpoint.swap: the
// gVisor stack, its addresses, listeners and TCP connections stay as they
// are; segments lost meanwhile are retransmitted by TCP) and registers the
// rules of every open listener again (AddMatch). Config.Reattached, if set, is told the outcome.
//
// While usnetd is away, Listen, ListenPacket and Dial fail with ErrDetached
// (they need usnetd to register or choose a port); Close of a listener
// works (its rules are gone with usnetd anyway).

import (
	"errors"
	"fmt"
	"os"

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
// lost: a client.Watch whose Attach swaps the new channel under the stack.
type supervisor struct {
	n *netStack
	w *client.Watch
}

// startSupervisor starts watching n's channel; peer is what peerPidfd said
// of it (the supervisor owns a pidfd).
func startSupervisor(n *netStack, peer int) (*supervisor, error) {
	s := &supervisor{n: n}
	w, err := client.StartWatch(client.WatchOptions{
		Peer: max(peer, -1), Sends: peer == noPeer, Generation: n.link.generation,
		Detach: s.detach, Attach: s.attach,
	})
	if err != nil {
		return nil, err
	}
	s.w = w
	n.link.onLost = w.Lost
	return s, nil
}

// halt stops the supervisor and waits for it; an attempt to attach that is
// under way finishes first (bounded by the control client's timeout).
func (s *supervisor) halt() { s.w.Stop() }

// detach drops the control connection of the usnetd that went away.
func (s *supervisor) detach() {
	n := s.n
	n.attMu.Lock()
	old := n.att
	n.att = nil
	n.attMu.Unlock()
	if old != nil {
		old.Close() // usnetd is gone: DeleteClient goes nowhere; the socket file is removed
	}
}

// attach is one attempt to attach again (the Watch's Attach); the stack's
// Config.Reattached is told the outcome.
func (s *supervisor) attach() (peer int, sends bool, err error) {
	refused, peer, err := s.attachOnce()
	if errors.Is(err, errHalted) {
		return -1, false, client.ErrStopWatch
	}
	if err != nil {
		return -1, false, err // usnetd not back yet, or gone again halfway
	}
	if cb := s.n.cfg.Reattached; cb != nil {
		cb(refused)
	}
	return max(peer, -1), peer == noPeer, nil
}

var errHalted = errors.New("usnet: stack torn down")

// attachOnce makes one attempt: attach, request a channel, swap it in,
// register the open listeners' rules. err is nil once the stack runs on the
// new channel; refused then joins the rules usnetd refused, and peer is
// what peerOf says of the new channel (the caller owns a pidfd).
func (s *supervisor) attachOnce() (refused error, peer int, err error) {
	n := s.n
	attach := n.cfg.Attach
	if attach == nil {
		attach = DialControl
	}
	att, err := attach(n.res.socketPath)
	if err != nil {
		return nil, noPeer, err
	}
	ch, err := requestChannel(att, n.res.iface, n.cfg.NoSHM)
	if err != nil {
		att.Close()
		return nil, noPeer, err
	}
	peer = peerOfChannel(ch)
	if err := n.link.swap(ch); err != nil {
		att.Close()
		if peer >= 0 {
			unix.Close(peer)
		}
		return nil, noPeer, errHalted
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
				return nil, noPeer, err
			}
			errs = append(errs, fmt.Errorf("usnet: rule %s of an open listener after usnetd restarted: %w", m, err))
		}
	}
	n.att = att
	n.reattaches.Add(1)
	return errors.Join(errs...), peer, nil
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
