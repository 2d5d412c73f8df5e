package sdnotify

import (
	"context"
	"os"
	"strconv"
	"time"
)

// WatchdogInterval returns the watchdog timeout that the service manager
// expects keep-alives within (WatchdogSec= of the unit, passed as
// $WATCHDOG_USEC in microseconds), and whether the watchdog is enabled for
// this process: $WATCHDOG_USEC is a positive number and $WATCHDOG_PID, if
// set, is the PID of this process (a child that inherited the variables is
// not the one watched). This is sd_watchdog_enabled(3).
func WatchdogInterval() (time.Duration, bool) {
	usec, err := strconv.ParseUint(os.Getenv("WATCHDOG_USEC"), 10, 63)
	if err != nil || usec == 0 || usec > uint64(1<<63-1)/uint64(time.Microsecond) {
		return 0, false
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" {
		pid, err := strconv.Atoi(p)
		if err != nil || pid != os.Getpid() {
			return 0, false
		}
	}
	return time.Duration(usec) * time.Microsecond, true
}

// Watchdog keeps the service manager's watchdog fed for as long as the
// service is healthy: it sends WATCHDOG=1 at once and then every half
// WatchdogInterval, each time only if healthy() returns true. While
// healthy() returns false nothing is sent, so that systemd, after the
// interval, declares the service hung and acts on it (Restart=on-failure
// restarts it): the watchdog is only as honest as healthy(), which should
// check that the data path makes progress, not merely that the process is
// alive. healthy is called from Watchdog's goroutine, once per tick; it
// must not block for long. A nil healthy counts as always true.
//
// Without a watchdog (WatchdogInterval reports false) or without
// $NOTIFY_SOCKET, Watchdog returns nil at once. Otherwise it runs until
// ctx is done and then returns nil, or returns the error of a keep-alive
// that could not be sent (the manager's socket is gone; later ones would
// fail too).
func Watchdog(ctx context.Context, healthy func() bool) error {
	interval, ok := WatchdogInterval()
	if !ok || os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	for {
		if ctx.Err() != nil {
			return nil
		}
		if healthy == nil || healthy() {
			if _, err := Notify(StateWatchdog); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
