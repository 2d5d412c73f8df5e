package client_test

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/client"
)

// pairMakerEnv makes the test binary a pair maker (TestMain): a child that
// makes a socketpair, as usnetd makes a channel, sends both ends over fd 3
// and lives until that socket's other end is closed.
const pairMakerEnv = "USNETD_CLIENT_TEST_PAIR_MAKER"

func TestMain(m *testing.M) {
	if os.Getenv(pairMakerEnv) == "1" {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil || unix.Sendmsg(3, []byte("p"), unix.UnixRights(fds[:]...), nil, 0) != nil {
			os.Exit(1)
		}
		var b [1]byte
		unix.Read(3, b[:])
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestPeerPidfd: the pidfd of a channel's maker becomes readable when the
// maker exits, not before; a channel made by this process has none.
func TestPeerPidfd(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	own := os.NewFile(uintptr(fds[0]), "own")
	defer own.Close()
	unix.Close(fds[1])
	if p := client.PeerPidfd(own); p != -1 {
		unix.Close(p)
		t.Errorf("PeerPidfd of a channel made here: %d, want -1", p)
	}

	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	childEnd := os.NewFile(uintptr(sp[1]), "maker")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), pairMakerEnv+"=1", "GORACE=atexit_sleep_ms=0")
	cmd.ExtraFiles = []*os.File{childEnd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	childEnd.Close()
	ended := false
	end := func() {
		if !ended {
			ended = true
			unix.Close(sp[0])
			cmd.Wait()
		}
	}
	defer end()
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(2*4))
	_, oobn, _, _, err := unix.Recvmsg(sp[0], buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	cms, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cms) != 1 {
		t.Fatalf("%v, %d control messages", err, len(cms))
	}
	chs, err := unix.ParseUnixRights(&cms[0])
	if err != nil || len(chs) != 2 {
		t.Fatalf("%v, %d descriptors", err, len(chs))
	}
	ch := os.NewFile(uintptr(chs[0]), "chan")
	defer ch.Close()
	unix.Close(chs[1])
	p := client.PeerPidfd(ch)
	if p < 0 {
		t.Fatal("no pidfd of the channel's maker")
	}
	defer unix.Close(p)
	readable := func(timeout time.Duration) bool {
		fds := []unix.PollFd{{Fd: int32(p), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(timeout.Milliseconds()))
		return err == nil && n == 1
	}
	if readable(0) {
		t.Fatal("the pidfd is readable while the maker runs")
	}
	end()
	if !readable(time.Minute) {
		t.Fatal("the pidfd is not readable after the maker exited")
	}
}
