package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// The states that usnetd sends (sd_notify(3) lists them all).
const (
	StateReady    = "READY=1"
	StateStopping = "STOPPING=1"
	StateWatchdog = "WATCHDOG=1"
)

// ErrBadSocket is returned (wrapped) when $NOTIFY_SOCKET is neither an
// absolute path nor an abstract name ("@name"). systemd ≥ 253 may also
// pass "vsock:CID:PORT" for virtual machines, which usnetd, a host
// service, does not support.
var ErrBadSocket = errors.New("sdnotify: NOTIFY_SOCKET is neither an absolute path nor @name")

// Notify sends state, one or more KEY=VALUE lines separated by '\n', as a
// single datagram to the socket named by $NOTIFY_SOCKET.
//
// It returns false and a nil error when $NOTIFY_SOCKET is unset or empty:
// nobody is listening and nothing was sent. It returns true and a nil error
// when the datagram was sent; that does not mean the manager accepted it
// (systemd drops, for example, messages from a process other than the
// unit's main process unless NotifyAccess= allows them).
func Notify(state string) (bool, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return false, nil
	}
	if addr[0] != '/' && (addr[0] != '@' || len(addr) == 1) {
		return false, fmt.Errorf("%w: %q", ErrBadSocket, addr)
	}
	// Go's net package maps a leading '@' to the NUL byte of an abstract
	// address, which is exactly systemd's convention.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sdnotify: send to %s: %w", addr, err)
	}
	return true, nil
}

// Ready tells the service manager that start-up is finished (READY=1). It
// is nil without $NOTIFY_SOCKET.
func Ready() error {
	_, err := Notify(StateReady)
	return err
}

// Stopping tells the service manager that the service is shutting down
// (STOPPING=1). It is nil without $NOTIFY_SOCKET.
func Stopping() error {
	_, err := Notify(StateStopping)
	return err
}

// Status sets the one-line status that `systemctl status` shows
// (STATUS=...). Line breaks in status become spaces: a newline would end
// the assignment and start another one. It is nil without $NOTIFY_SOCKET.
func Status(status string) error {
	status = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(status)
	_, err := Notify("STATUS=" + status)
	return err
}
