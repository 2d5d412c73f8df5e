package testkit

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestWaitReadable(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if ok, err := WaitReadable(fds[1], 20*time.Millisecond); ok || err != nil {
		t.Fatalf("empty socket: %v, %v", ok, err)
	}
	if _, err := unix.Write(fds[0], []byte("x")); err != nil {
		t.Fatal(err)
	}
	if ok, err := WaitReadable(fds[1], time.Second); !ok || err != nil {
		t.Fatalf("socket with a datagram: %v, %v", ok, err)
	}
	if ok, err := WaitReadable(-1, time.Millisecond); ok {
		t.Fatalf("fd -1: %v, %v", ok, err)
	}
}
