package control

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/usnetd/usnetd/internal/netlab"
	"golang.org/x/sys/unix"
)

// TestRecvmsgCredentials: the kernel's credentials and pidfd arrive with
// every message, descriptors a client sends are closed, and the sender's
// address comes back byte for byte.
func TestRecvmsgCredentials(t *testing.T) {
	netlab.Require(t)
	dir := t.TempDir()
	srvAddr := clientAddr{name: filepath.Join(dir, "srv.socket")}
	cs, err := listenControl(srvAddr, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.close()
	srv := int(cs.file.Fd())

	for _, name := range []string{"\x00abs\x00with-nul", "\x00x", filepath.Join(dir, "client")} {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := clientAddr{name: name}
		if name[0] == 0 {
			want = clientAddr{abstract: true, name: name[1:]}
		}
		rsa, l, err := want.sockaddr()
		if err != nil {
			t.Fatal(err)
		}
		if err := bindRaw(fd, rsa, l); err != nil {
			t.Fatalf("bind %q: %v", name, err)
		}
		r0, w0, _ := os.Pipe()
		if err := sendmsg(fd, []byte("hello"), unix.UnixRights(int(r0.Fd())), srvAddr); err != nil {
			t.Fatal(err)
		}
		r0.Close()
		w0.Close()
		buf, oob := make([]byte, 100), make([]byte, 1024)
		p := []unix.PollFd{{Fd: int32(srv), Events: unix.POLLIN}}
		unix.Poll(p, 2000)
		r, err := recvmsg(srv, buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:r.n]) != "hello" || !r.named || r.from != want {
			t.Errorf("got %q from %+v (named %v), want hello from %+v", buf[:r.n], r.from, r.named, want)
		}
		if r.cred == nil || r.cred.Pid != int32(os.Getpid()) || r.cred.Uid != uint32(os.Getuid()) {
			t.Errorf("credentials %+v", r.cred)
		}
		if r.pidfd < 0 {
			t.Error("no SCM_PIDFD (Linux >= 6.5 sends one)")
		} else {
			if !pidfdAlive(r.pidfd) {
				t.Error("the pidfd says this process exited")
			}
			unix.Close(r.pidfd)
		}
		if r.rights != 1 {
			t.Errorf("rights %d, want 1 (closed)", r.rights)
		}
		// The answer reaches exactly that address.
		if err := sendmsg(srv, []byte("OK"), nil, r.from); err != nil {
			t.Fatal(err)
		}
		n, err := unix.Read(fd, buf)
		if err != nil || string(buf[:n]) != "OK" {
			t.Errorf("answer %q, %v", buf[:n], err)
		}
		unix.Close(fd)
	}
}

func TestClientAddrString(t *testing.T) {
	for _, c := range []struct {
		a    clientAddr
		want string
	}{
		{clientAddr{name: "/run/user/1000/usnet-client-1-2"}, "/run/user/1000/usnet-client-1-2"},
		{clientAddr{abstract: true, name: "usnet"}, "@usnet"},
		{clientAddr{abstract: true, name: "a\x00b"}, `@a\x00b`},
		{clientAddr{abstract: true, name: "\xff"}, `@\xff`},
	} {
		if got := c.a.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.a, got, c.want)
		}
	}
	for _, bad := range []string{"", string(make([]byte, 108)), "@" + string(make([]byte, 108))} {
		if _, err := parseSocketPath(bad); err == nil {
			t.Errorf("parseSocketPath(%.10q) accepted", bad)
		}
	}
}

func TestParseSocketLink(t *testing.T) {
	for in, want := range map[string]uint64{"socket:[12345]": 12345, "socket:[0]": 0} {
		if got, ok := parseSocketLink([]byte(in)); !ok || got != want {
			t.Errorf("parseSocketLink(%q) = %d, %v", in, got, ok)
		}
	}
	for _, in := range []string{"", "socket:[]", "socket:[12", "pipe:[12]", "/dev/null", "socket:[-1]", "socket:[99999999999999999999]", "socket:[1]x"} {
		if _, ok := parseSocketLink([]byte(in)); ok {
			t.Errorf("parseSocketLink(%q) accepted", in)
		}
	}
}

// socketInodes finds this process's own socket among its open files, and
// only the inodes asked for.
func TestSocketInodes(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := rc.Control(func(fd uintptr) { _ = unix.Fstat(int(fd), &st) }); err != nil || st.Ino == 0 {
		t.Fatal(err)
	}
	got, err := socketInodes("/proc", int32(os.Getpid()), map[uint64]bool{st.Ino: true, st.Ino + 1<<40: true})
	if err != nil || len(got) != 1 || !got[st.Ino] {
		t.Fatalf("socketInodes = %v, %v; want only inode %d", got, err, st.Ino)
	}
	if _, err := socketInodes("/proc", 0, nil); err == nil {
		t.Error("pid 0 accepted")
	}
}
