package client_test

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/usnetd/usnetd/control/client"
)

// TestWatch: a lost send of the current channel makes the Watch detach
// once and attach again, retrying failed attempts; ErrStopWatch ends the
// loop, and Stop still returns (twice).
func TestWatch(t *testing.T) {
	var gen atomic.Uint64
	gen.Store(1)
	var detached, tries atomic.Int32
	attached := make(chan struct{}, 1)
	var stop atomic.Bool
	ended := make(chan struct{})
	w, err := client.StartWatch(client.WatchOptions{
		Peer: -1, Sends: true, Generation: gen.Load,
		Detach: func() { detached.Add(1) },
		Attach: func() (int, bool, error) {
			switch n := tries.Add(1); {
			case stop.Load():
				close(ended)
				return -1, false, client.ErrStopWatch
			case n < 3:
				return -1, false, errors.New("usnetd not back yet")
			}
			gen.Add(1)
			attached <- struct{}{}
			return -1, true, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	w.Lost(1)
	<-attached
	if d, n := detached.Load(), tries.Load(); d != 1 || n != 3 {
		t.Errorf("detached %d times, %d attempts; want 1 and 3", d, n)
	}
	stop.Store(true)
	w.Lost(2)
	<-ended
	w.Stop()
	w.Stop() // idempotent
	if d := detached.Load(); d != 2 {
		t.Errorf("detached %d times after the second loss, want 2", d)
	}
}
