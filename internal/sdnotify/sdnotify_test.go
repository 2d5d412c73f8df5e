package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// manager is the service manager's end: a unixgram socket that the tests
// name in NOTIFY_SOCKET, as systemd does.
type manager struct {
	t    *testing.T
	conn *net.UnixConn
	addr string
}

// listenPath binds a socket file in a fresh directory. os.MkdirTemp rather
// than t.TempDir keeps the path well below the 108 bytes of sun_path.
func listenPath(t *testing.T) *manager {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return listen(t, filepath.Join(dir, "notify"))
}

// listenAbstract binds an abstract socket ("@name").
func listenAbstract(t *testing.T) *manager {
	t.Helper()
	return listen(t, fmt.Sprintf("@usnetd-sdnotify-test-%d-%x", os.Getpid(), rand.Uint64()))
}

func listen(t *testing.T, addr string) *manager {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &manager{t: t, conn: conn, addr: addr}
}

// recv returns the next datagram, failing the test after wait.
func (m *manager) recv(wait time.Duration) string {
	m.t.Helper()
	s, err := m.tryRecv(wait)
	if err != nil {
		m.t.Fatalf("no datagram within %v: %v", wait, err)
	}
	return s
}

func (m *manager) tryRecv(wait time.Duration) (string, error) {
	buf := make([]byte, 4096)
	if err := m.conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return "", err
	}
	n, err := m.conn.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// expectNothing fails if a datagram arrives within wait.
func (m *manager) expectNothing(wait time.Duration) {
	m.t.Helper()
	if s, err := m.tryRecv(wait); err == nil {
		m.t.Fatalf("unexpected datagram %q", s)
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		m.t.Fatal(err)
	}
}

// clearEnv unsets the variables of the protocol for the test (t.Setenv
// restores them afterwards).
func clearEnv(t *testing.T) {
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

func TestNotifySendsExactDatagrams(t *testing.T) {
	for _, tc := range []struct {
		name   string
		listen func(*testing.T) *manager
	}{{"path", listenPath}, {"abstract", listenAbstract}} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			m := tc.listen(t)
			t.Setenv("NOTIFY_SOCKET", m.addr)

			sent, err := Notify("STATUS=one\nMAINPID=1")
			if !sent || err != nil {
				t.Fatalf("Notify = %v, %v", sent, err)
			}
			if got := m.recv(5 * time.Second); got != "STATUS=one\nMAINPID=1" {
				t.Errorf("Notify sent %q", got)
			}
			for _, step := range []struct {
				call func() error
				want string
			}{
				{Ready, "READY=1"},
				{func() error { return Status("claiming eth0") }, "STATUS=claiming eth0"},
				{func() error { return Status("two\nlines\r\nand\rmore") }, "STATUS=two lines and more"},
				{func() error { return Status("") }, "STATUS="},
				{Stopping, "STOPPING=1"},
			} {
				if err := step.call(); err != nil {
					t.Fatalf("%s: %v", step.want, err)
				}
				if got := m.recv(5 * time.Second); got != step.want {
					t.Errorf("sent %q, want %q", got, step.want)
				}
			}
			m.expectNothing(50 * time.Millisecond)
		})
	}
}

func TestNothingSentWithoutNotifySocket(t *testing.T) {
	clearEnv(t)
	m := listenPath(t) // a manager that nobody names
	t.Setenv("WATCHDOG_USEC", "20000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	os.Unsetenv("NOTIFY_SOCKET")

	if sent, err := Notify(StateReady); sent || err != nil {
		t.Errorf("Notify = %v, %v; want false, nil", sent, err)
	}
	for name, f := range map[string]func() error{
		"Ready": Ready, "Stopping": Stopping, "Status": func() error { return Status("x") },
	} {
		if err := f(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- Watchdog(context.Background(), nil) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watchdog: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog without NOTIFY_SOCKET did not return at once")
	}
	m.expectNothing(100 * time.Millisecond)
}

func TestNotifyRejectsBadSocket(t *testing.T) {
	clearEnv(t)
	for _, addr := range []string{"relative/path", "@", "vsock:2:1234"} {
		t.Setenv("NOTIFY_SOCKET", addr)
		sent, err := Notify(StateReady)
		if sent || !errors.Is(err, ErrBadSocket) {
			t.Errorf("NOTIFY_SOCKET=%q: Notify = %v, %v; want false, ErrBadSocket", addr, sent, err)
		}
	}
}

func TestNotifyNoListener(t *testing.T) {
	clearEnv(t)
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	if sent, err := Notify(StateReady); sent || err == nil {
		t.Errorf("Notify to a missing socket = %v, %v; want false and an error", sent, err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{"", "", 0, false},
		{"30000000", "", 30 * time.Second, true},
		{"30000000", self, 30 * time.Second, true},
		{"30000000", strconv.Itoa(os.Getpid() + 1), 0, false},
		{"30000000", "x", 0, false},
		{"1", "", time.Microsecond, true},
		{"0", "", 0, false},
		{"-5", "", 0, false},
		{"12s", "", 0, false},
		{"99999999999999999999", "", 0, false},
		{"9223372036854775", "", 9223372036854775 * time.Microsecond, true},
		{"9223372036854776", "", 0, false}, // would overflow a Duration
	} {
		clearEnv(t)
		if tc.usec != "" {
			t.Setenv("WATCHDOG_USEC", tc.usec)
		}
		if tc.pid != "" {
			t.Setenv("WATCHDOG_PID", tc.pid)
		}
		got, ok := WatchdogInterval()
		if got != tc.want || ok != tc.ok {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, %v; want %v, %v", tc.usec, tc.pid, got, ok, tc.want, tc.ok)
		}
	}
}

// TestWatchdogOnlyWhileHealthy runs the watchdog with a 40 ms interval
// (keep-alives every 20 ms) against a health check that the test turns off
// and on again.
func TestWatchdogOnlyWhileHealthy(t *testing.T) {
	clearEnv(t)
	m := listenAbstract(t)
	t.Setenv("NOTIFY_SOCKET", m.addr)
	t.Setenv("WATCHDOG_USEC", "40000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	var healthy atomic.Bool
	var checks atomic.Int64
	healthy.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watchdog(ctx, func() bool { checks.Add(1); return healthy.Load() })
	}()

	// Healthy: a keep-alive at once and then one per tick.
	start := time.Now()
	for i := range 5 {
		if got := m.recv(5 * time.Second); got != "WATCHDOG=1" {
			t.Fatalf("keep-alive %d: %q", i, got)
		}
	}
	if d := time.Since(start); d < 4*20*time.Millisecond-5*time.Millisecond {
		t.Errorf("5 keep-alives in %v: faster than every half interval", d)
	}

	// Unhealthy: nothing, although the check keeps being asked.
	healthy.Store(false)
	for range 2 { // a keep-alive that was on its way when the check flipped
		if _, err := m.tryRecv(60 * time.Millisecond); err != nil {
			break
		}
	}
	before := checks.Load()
	m.expectNothing(200 * time.Millisecond)
	if checks.Load() == before {
		t.Error("the health check was not asked while unhealthy")
	}

	// Healthy again: keep-alives resume.
	healthy.Store(true)
	if got := m.recv(5 * time.Second); got != "WATCHDOG=1" {
		t.Fatalf("after recovery: %q", got)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Watchdog returned %v after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog did not return after cancel")
	}
	for range 2 { // what was sent before the cancel
		if _, err := m.tryRecv(10 * time.Millisecond); err != nil {
			break
		}
	}
	m.expectNothing(100 * time.Millisecond)
}

func TestWatchdogDisabled(t *testing.T) {
	clearEnv(t)
	m := listenPath(t)
	t.Setenv("NOTIFY_SOCKET", m.addr)
	t.Setenv("WATCHDOG_USEC", "40000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()+1)) // someone else's watchdog
	if err := Watchdog(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	m.expectNothing(100 * time.Millisecond)
}

func TestWatchdogReturnsSendError(t *testing.T) {
	clearEnv(t)
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone"))
	t.Setenv("WATCHDOG_USEC", "40000")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Watchdog(ctx, nil); err == nil || ctx.Err() != nil {
		t.Fatalf("Watchdog = %v (ctx %v); want the send error at once", err, ctx.Err())
	}
}
