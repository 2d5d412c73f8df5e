package client_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/client"
)

// TestRemoveStale: sockets of dead clients are removed, those of live
// ones and other files are not.
func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	bind := func(name string) string {
		p := filepath.Join(dir, name)
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		c.Close() // the file stays, as after a crash
		return p
	}
	// A PID that is surely gone: a child that has exited and been reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := bind(fmt.Sprintf("usnet-client-%d-abc", cmd.Process.Pid))
	live := bind(fmt.Sprintf("usnet-client-%d-abc", os.Getpid()))
	other := filepath.Join(dir, "usnet-client-1-plainfile")
	os.WriteFile(other, nil, 0o600)
	client.RemoveStale(dir)
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket of a dead client kept: %v", err)
	}
	for _, p := range []string{live, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed", p)
		}
	}
}

// TestDialDirs: without Options.Dir the client's socket goes to
// $XDG_RUNTIME_DIR, with mode 0666 (usnetd, without CAP_DAC_OVERRIDE, must
// be able to answer); a runtime directory where it cannot be bound is
// skipped for the next one. Stale sockets there are removed first.
func TestDialDirs(t *testing.T) {
	srvDir := t.TempDir()
	path := filepath.Join(srvDir, "usnetd.socket")
	fakeServer(t, path)

	xdg := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", xdg)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(xdg, fmt.Sprintf("usnet-client-%d-abc", cmd.Process.Pid))
	if c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: stale, Net: "unixgram"}); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}

	c, err := client.Dial(client.Options{SocketPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(c.LocalAddr()) != xdg {
		t.Errorf("client socket %s not in XDG_RUNTIME_DIR %s", c.LocalAddr(), xdg)
	}
	if fi, err := os.Stat(c.LocalAddr()); err != nil || fi.Mode().Perm() != 0o666 {
		t.Errorf("client socket mode: %v %v, want 0666", fi.Mode(), err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale socket of a dead client kept: %v", err)
	}
	local := c.LocalAddr()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(local); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("client socket left after Close: %v", err)
	}

	// A runtime directory that does not exist: the next one is taken.
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(xdg, "gone"))
	c, err = client.Dial(client.Options{SocketPath: path})
	if err != nil {
		t.Fatalf("XDG_RUNTIME_DIR unusable: %v", err)
	}
	if filepath.Dir(c.LocalAddr()) == filepath.Join(xdg, "gone") {
		t.Errorf("client socket %s in a directory that does not exist", c.LocalAddr())
	}
	c.Close()
}

// TestDeleteClientOnlyAfterRequestUDS: a client that only queried sends
// nothing at Close (usnetd holds nothing of it); one that asked for a
// channel sends DeleteClient, also when the answer never came.
func TestDeleteClientOnlyAfterRequestUDS(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mute.socket")
	srv := fakeServer(t, path)
	q, err := client.Dial(client.Options{SocketPath: path, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(client.Options{SocketPath: path, Dir: dir, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RequestUDS("eth0"); !errors.Is(err, client.ErrTimeout) {
		t.Errorf("RequestUDS from a mute server: %v, want ErrTimeout", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var got []string
	buf := make([]byte, 200)
	for {
		n, from, err := unix.Recvfrom(srv, buf, unix.MSG_DONTWAIT)
		if err != nil {
			break
		}
		got = append(got, from.(*unix.SockaddrUnix).Name+" "+string(buf[:n]))
	}
	want := []string{
		c.LocalAddr() + ` {"RequestUDS":["eth0",` + strconv.Itoa(os.Getpid()) + `]}`,
		c.LocalAddr() + ` "DeleteClient"`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("the server got %q, want %q", got, want)
	}
}
