package control

// Helper processes: the test binary run again, as another user or as a
// process that exits, to play a client the test process cannot be.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/shm/ring"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/testkit"
)

const (
	helperEnv   = "USNETD_CONTROL_TEST_HELPER"
	helperSrv   = "USNETD_CONTROL_TEST_SERVER"
	nobody      = 65534
	helperHello = "helper: ready"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Getenv(helperSrv)))
	}
	os.Exit(m.Run())
}

// helperClient is the helper's own client: system calls only.
type helperClient struct {
	fd     int
	server string
}

func newHelperClient(server string) (*helperClient, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	// Abstract autobind: no file, so no directory permissions in the way.
	if err := unix.Bind(fd, &unix.SockaddrUnix{}); err != nil {
		return nil, err
	}
	return &helperClient{fd: fd, server: server}, nil
}

// ask sends msg and returns the answer ("timeout" if none) and a
// descriptor that came with it (-1 if none).
func (h *helperClient) ask(msg string) (string, int) {
	if err := unix.Sendto(h.fd, []byte(msg), 0, &unix.SockaddrUnix{Name: h.server}); err != nil {
		return "send: " + err.Error(), -1
	}
	if ready, _ := testkit.WaitReadable(h.fd, 3*time.Second); !ready {
		return "timeout", -1
	}
	buf := make([]byte, wire.MaxAnswerSize)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(h.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return "recv: " + err.Error(), -1
	}
	fd := -1
	if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cms) > 0 {
		if fds, err := unix.ParseUnixRights(&cms[0]); err == nil && len(fds) > 0 {
			fd = fds[0]
		}
	}
	return string(buf[:n]), fd
}

// runHelper is the helper process. It prints one "key=value" line per
// result and, in mode "handover", passes its channel to fd 3 and waits
// for stdin to close.
func runHelper(mode, server string) int {
	h, err := newHelperClient(server)
	if err != nil {
		fmt.Println("error=" + err.Error())
		return 1
	}
	pid := os.Getpid()
	switch mode {
	case "query":
		a, _ := h.ask(`"QueryStatus"`)
		fmt.Printf("status=%.2s\n", a)
	case "privports":
		a, fd := h.ask(fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, pid))
		fmt.Println("uds=" + a)
		if fd >= 0 {
			defer unix.Close(fd)
		}
		a, _ = h.ask(matchJSON("AddMatch", localIP, 80, "", -1, 6))
		fmt.Println("port80=" + a)
		a, _ = h.ask(matchJSON("AddMatch", localIP, 8080, "", -1, 6))
		fmt.Println("port8080=" + a)
		a, _ = h.ask(fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, os.Getppid()))
		fmt.Println("parentpid=" + a)
	case "handover":
		a, fd := h.ask(fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, pid))
		fmt.Println("uds=" + a)
		a, _ = h.ask(matchJSON("AddMatch", localIP, 7000, "", -1, 6))
		fmt.Println("match=" + a)
		if fd >= 0 {
			if err := unix.Sendmsg(3, []byte("$"), unix.UnixRights(fd), nil, 0); err != nil {
				fmt.Println("error=" + err.Error())
			}
			unix.Close(fd)
		}
		fmt.Println(helperHello)
		io.Copy(io.Discard, os.Stdin) // the test closes stdin to let us exit
	case "shm":
		// A shared-memory channel, mapped and in use, until killed.
		msg := fmt.Sprintf(`{"RequestSHM":["eth0",%d]}`, pid)
		if err := unix.Sendto(h.fd, []byte(msg), 0, &unix.SockaddrUnix{Name: h.server}); err != nil {
			fmt.Println("error=" + err.Error())
			return 1
		}
		buf, oob := make([]byte, 64), make([]byte, unix.CmsgSpace(8))
		n, oobn, _, _, err := unix.Recvmsg(h.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			fmt.Println("error=" + err.Error())
			return 1
		}
		fmt.Println("shm=" + string(buf[:n]))
		if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cms) > 0 {
			if fds, err := unix.ParseUnixRights(&cms[0]); err == nil && len(fds) == 2 {
				if _, err := ring.OpenEndpoint(fds[0], fds[1]); err != nil {
					fmt.Println("error=" + err.Error())
				}
			}
		}
		fmt.Println(helperHello)
		io.Copy(io.Discard, os.Stdin)
	default:
		fmt.Println("error=unknown mode " + mode)
		return 1
	}
	return 0
}

// helper starts the test binary as a helper in mode against server. With
// asNobody it runs as uid and gid 65534 (the binary is copied to where
// nobody may run it). extra are passed as fd 3, 4, ...
type helperProc struct {
	cmd   *exec.Cmd
	out   *bufio.Scanner
	stdin io.WriteCloser
	lines map[string]string
}

func startHelper(t *testing.T, mode, server string, asNobody bool, extra ...*os.File) *helperProc {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if asNobody {
		// t.TempDir's parent is 0700: nobody could not reach the copy.
		dir, err := os.MkdirTemp("", "usnetd-helper-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(dir, "helper.test")
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperSrv+"="+server)
	cmd.ExtraFiles = extra
	cmd.Stderr = os.Stderr
	if asNobody {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helperProc{cmd: cmd, out: bufio.NewScanner(stdout), stdin: stdin, lines: map[string]string{}}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return h
}

// readUntil reads the helper's lines until one equals stop (or EOF) and
// returns the key=value lines read so far.
func (h *helperProc) readUntil(stop string) map[string]string {
	for h.out.Scan() {
		line := h.out.Text()
		if line == stop {
			break
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			h.lines[k] = v
		}
	}
	return h.lines
}
