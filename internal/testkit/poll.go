package testkit

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// WaitReadable waits up to d for fd to be readable. A poll interrupted by
// a signal (the Go runtime's preemption sends SIGURG) is resumed, so that
// an interruption never reads as "nothing came".
func WaitReadable(fd int, d time.Duration) (bool, error) {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(d)
	for {
		n, err := unix.Poll(p, int(max(time.Until(deadline), 0)/time.Millisecond))
		if errors.Is(err, unix.EINTR) && time.Now().Before(deadline) {
			continue
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return false, err
		}
		return n > 0, nil
	}
}
