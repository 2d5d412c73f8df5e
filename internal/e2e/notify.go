package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// NotifySocket plays systemd's NOTIFY_SOCKET: give usnetd
// "NOTIFY_SOCKET="+Path.
type NotifySocket struct {
	Path string
	t    *testing.T
	msgs chan string
}

// ListenNotify opens a NotifySocket in the test's temporary directory,
// closed when the test ends.
func ListenNotify(t *testing.T) *NotifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &NotifySocket{t: t, Path: path, msgs: make(chan string, 64)}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := pc.Read(buf)
			if err != nil {
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// Expect waits up to 30 s for a datagram that contains state.
func (n *NotifySocket) Expect(state string) {
	n.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-n.msgs:
			if strings.Contains(m, state) {
				return
			}
		case <-deadline:
			n.t.Fatalf("no %s on NOTIFY_SOCKET", state)
		}
	}
}

// Drain returns the datagrams that arrive within d.
func (n *NotifySocket) Drain(d time.Duration) []string {
	var got []string
	deadline := time.After(d)
	for {
		select {
		case m := <-n.msgs:
			got = append(got, m)
		case <-deadline:
			return got
		}
	}
}
