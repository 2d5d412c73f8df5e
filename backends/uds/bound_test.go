package uds

import (
	"bytes"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dgramPeer is a peer stack: a Unix datagram socket bound at its own path,
// sending to the port's.
func dgramPeer(t *testing.T, dir, name, to string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixgram", &net.UnixAddr{Name: filepath.Join(dir, name), Net: "unixgram"}, &net.UnixAddr{Name: to, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestListen: a bound port replaces a stale socket file, makes its file
// with the mode and group asked for, sends nothing before a peer sent, then
// answers the last named sender; an unnamed sender's frames are received
// but do not move the peer; a gone peer costs drops, not the port; Close
// removes the file.
func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eth0-udp-4789")
	// A stale socket file, as a killed usnetd leaves it.
	stale, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	stale.Close()
	gid := 4242 // a group root may give the file to
	if os.Geteuid() != 0 {
		gid = os.Getegid() // the one group a normal user may
	}
	p, err := Listen(path, 0o660, gid, Options{Name: "pipe"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 || st.Mode().Type() != fs.ModeSocket {
		t.Errorf("mode %v, want socket 0660", st.Mode())
	}
	if os.Geteuid() == 0 && st.Sys().(*syscall.Stat_t).Gid != uint32(gid) {
		t.Errorf("gid %d, want %d", st.Sys().(*syscall.Stat_t).Gid, gid)
	}
	if p.Path() != path || p.Peer() != "" {
		t.Errorf("Path, Peer = %q, %q", p.Path(), p.Peer())
	}

	pool := newPool(t, 2048)
	bufs, cache := newBufs(t, pool, 4)
	defer cache.ReleaseBatch(bufs)
	copy(bufs[0].Data(), frame(0, 60))
	bufs[0].SetLen(60)
	if n, err := p.Send(bufs[:1]); n != 0 || err != nil {
		t.Fatalf("Send without a peer = %d, %v; want 0, nil", n, err)
	}

	a := dgramPeer(t, dir, "a", path)
	b := dgramPeer(t, dir, "b", path)
	recvFrom := func(c *net.UnixConn, want []byte) {
		t.Helper()
		if _, err := c.Write(want); err != nil {
			t.Fatal(err)
		}
		n, err := p.Recv(0, bufs[1:2])
		if err != nil || n != 1 || !bytes.Equal(bufs[1].Bytes(), want) {
			t.Fatalf("Recv = %d, %v, %q", n, err, bufs[1].Bytes())
		}
	}
	expect := func(c *net.UnixConn, want []byte) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		got := make([]byte, 2048)
		n, err := c.Read(got)
		if err != nil || !bytes.Equal(got[:n], want) {
			t.Fatalf("peer read = %q, %v; want %q", got[:n], err, want)
		}
	}
	recvFrom(a, frame(1, 100))
	if p.Peer() != filepath.Join(dir, "a") {
		t.Errorf("Peer = %q, want a", p.Peer())
	}
	if n, err := p.Send(bufs[:1]); n != 1 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	expect(a, frame(0, 60))
	// The last named sender is the peer.
	recvFrom(b, frame(2, 80))
	if n, err := p.Send(bufs[:1]); n != 1 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	expect(b, frame(0, 60))
	// An unnamed sender reaches the port but does not move the peer.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, frame(3, 70), 0, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if n, err := p.Recv(0, bufs[1:2]); n != 1 || err != nil || !bytes.Equal(bufs[1].Bytes(), frame(3, 70)) {
		t.Fatalf("Recv from an unnamed sender = %d, %v", n, err)
	}
	if p.Peer() != filepath.Join(dir, "b") {
		t.Errorf("Peer after an unnamed sender = %q, want b", p.Peer())
	}
	// The peer goes: frames are dropped, the port stays.
	b.Close()
	before := p.Stats().TxDropped
	if n, err := p.Send(bufs[:1]); n != 0 || err != nil {
		t.Fatalf("Send to a gone peer = %d, %v; want 0, nil", n, err)
	}
	if p.Stats().TxDropped != before+1 {
		t.Errorf("TxDropped = %d, want %d", p.Stats().TxDropped, before+1)
	}
	recvFrom(a, frame(4, 90))
	if n, err := p.Send(bufs[:1]); n != 1 || err != nil {
		t.Fatalf("Send after the peer came back = %d, %v", n, err)
	}
	expect(a, frame(0, 60))

	p.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket file after Close: %v", err)
	}
}

// TestListenRefusesNonSocket: a file that is not a socket is not replaced.
func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pipe")
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err := Listen(path, 0o660, -1, Options{}); err == nil {
		p.Close()
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatal("the regular file changed")
	}
}

// TestCloseKeepsSuccessorsFile: Close removes the file only if it is still
// the port's own.
func TestCloseKeepsSuccessorsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pipe")
	p1, err := Listen(path, 0o600, -1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p2, err := Listen(path, 0o600, -1, Options{}) // replaces p1's file
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	p1.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the successor's file went with the predecessor's Close: %v", err)
	}
}
