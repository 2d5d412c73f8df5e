package client

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrStopWatch, returned by WatchOptions.Attach, ends a Watch: there is
// nothing left to attach again (the caller was torn down).
var ErrStopWatch = errors.New("stop watching")

// WatchOptions configure StartWatch.
type WatchOptions struct {
	// Peer is a pidfd of the current channel's maker (PeerPidfd), which
	// the Watch owns from now on, or a negative number for none.
	Peer int
	// Sends says whether Lost reports about the current channel count:
	// not for a channel this process made (ChannelPeer's self), where
	// there is no usnetd to come back; a Session counts them always.
	Sends bool
	// Generation returns the generation of the current channel, as Lost
	// reports it: a report about an older channel does nothing.
	Generation func() uint64
	// Detach is called once usnetd is found gone, before the first
	// attempt to attach again.
	Detach func()
	// Attach makes one attempt to attach again. It returns the new
	// channel's Peer and Sends once attached; ErrStopWatch ends the
	// Watch; any other error is retried after the backoff.
	Attach func() (peer int, sends bool, err error)
}

// Watch notices that usnetd went away and attaches again: the loop of a
// Session, and of usnet's stacks, which put the new channel under a
// running network stack. usnetd is gone when the channel's maker exits
// (the pidfd of WatchOptions.Peer becomes readable) or when the caller
// reports a send that found the channel closed (Lost). Then it calls
// Detach, and Attach at once, then after ReattachFirst, doubling up to
// ReattachMax between tries, forever, until it succeeds or Stop.
type Watch struct {
	o        WatchOptions
	wake     int           // eventfd: written by Stop and Lost
	stop     chan struct{} // closed by Stop
	done     chan struct{} // closed when run returns
	lostGen  atomic.Uint64 // 1 + the generation reported lost; 0: none
	peer     int           // owned by run
	sends    bool          // owned by run
	stopOnce sync.Once
}

// StartWatch starts watching. On error the Peer pidfd is closed.
func StartWatch(o WatchOptions) (*Watch, error) {
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		if o.Peer >= 0 {
			unix.Close(o.Peer)
		}
		return nil, err
	}
	w := &Watch{o: o, wake: wake, peer: o.Peer, sends: o.Sends,
		stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w, nil
}

// Lost reports that a send on the channel of generation gen failed
// because the other end is closed (ECONNREFUSED, EPIPE, ENOTCONN). It
// does not block.
func (w *Watch) Lost(gen uint64) {
	w.lostGen.Store(gen + 1)
	var one = [8]byte{1}
	unix.Write(w.wake, one[:])
}

// Stop ends the Watch and waits for it; an attempt to attach that is under
// way finishes first. It closes the pidfd it holds. It is idempotent.
func (w *Watch) Stop() {
	w.stopOnce.Do(func() {
		close(w.stop)
		var one = [8]byte{1}
		unix.Write(w.wake, one[:])
		<-w.done
		unix.Close(w.wake)
		if w.peer >= 0 {
			unix.Close(w.peer)
		}
	})
}

func (w *Watch) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

func (w *Watch) run() {
	defer close(w.done)
	for {
		fds := []unix.PollFd{{Fd: int32(w.wake), Events: unix.POLLIN}}
		if w.peer >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(w.peer), Events: unix.POLLIN})
		}
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			return // cannot happen with valid descriptors
		}
		if w.stopped() {
			return
		}
		var cnt [8]byte
		unix.Read(w.wake, cnt[:])
		lost := len(fds) > 1 && fds[1].Revents != 0
		if g := w.lostGen.Swap(0); g != 0 && g-1 == w.o.Generation() && w.sends {
			lost = true // not a late report about a channel already replaced
		}
		if lost && !w.reattach() {
			return
		}
	}
}

// reattach detaches, then attaches again with backoff until it succeeds
// (true) or the Watch is stopped (false).
func (w *Watch) reattach() bool {
	w.o.Detach()
	if w.peer >= 0 {
		unix.Close(w.peer)
	}
	w.peer, w.sends = -1, false
	delay := ReattachFirst
	for try := 0; ; try++ {
		if try > 0 {
			t := time.NewTimer(delay)
			select {
			case <-w.stop:
				t.Stop()
				return false
			case <-t.C:
			}
			delay = min(2*delay, ReattachMax)
		}
		if w.stopped() {
			return false
		}
		peer, sends, err := w.o.Attach()
		if errors.Is(err, ErrStopWatch) {
			return false
		}
		if err != nil {
			continue // usnetd not back yet, or gone again halfway
		}
		w.peer, w.sends = peer, sends
		return true
	}
}
