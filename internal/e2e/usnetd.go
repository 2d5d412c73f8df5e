package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/netlab"
)

// MainEnv set to "1" makes a test binary whose TestMain checks it run as
// usnetd: that is how Start runs the test binary itself as the daemon.
const MainEnv = "USNETD_E2E_MAIN"

// MetricsAddr is where Start has usnetd serve /metrics, inside the host
// namespace.
const MetricsAddr = "127.0.0.1:9464"

// startTimeout bounds usnetd's start: loading the eBPF programs takes
// seconds on a busy machine, more under -race.
const startTimeout = 120 * time.Second

// Usnetd is a running daemon.
type Usnetd struct {
	Cmd  *exec.Cmd
	Done chan error // gets Cmd.Wait's result when usnetd has exited
	mu   sync.Mutex
	log  strings.Builder
}

// LogText is what usnetd wrote to stderr so far.
func (u *Usnetd) LogText() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.log.String()
}

// Exe is the program that Start runs as usnetd.
func (l *Lab) Exe() string {
	if l.Bin != "" {
		return l.Bin
	}
	return os.Args[0]
}

// Start runs usnetd inside the host namespace on Ifname with env (after
// the defaults: JSON debug log, SOCKET_PATH=Sock, METRICS_ADDR=MetricsAddr,
// BACKEND=Backend) and waits until it says it is up. t.Cleanup stops it
// with SIGTERM if the test did not.
func (l *Lab) Start(env ...string) *Usnetd {
	t := l.T
	t.Helper()
	argv := append(append([]string(nil), l.Wrap...), l.Exe())
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{MainEnv + "=1", "PATH=" + os.Getenv("PATH"), "LOG_FORMAT=json", "LOG_LEVEL=debug",
		"INTERFACES=" + l.Ifname, "SOCKET_PATH=" + l.Sock, "METRICS_ADDR=" + MetricsAddr, "GORACE=atexit_sleep_ms=0"}, env...)
	if l.Backend != "" {
		cmd.Env = append(cmd.Env, "BACKEND="+l.Backend)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	u := &Usnetd{Cmd: cmd, Done: make(chan error, 1)}
	if err := l.Host.Start(cmd); err != nil {
		t.Fatal(err)
	}
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			u.mu.Lock()
			u.log.WriteString(sc.Text() + "\n")
			u.mu.Unlock()
			if strings.Contains(sc.Text(), `"message":"usnetd is up"`) {
				once.Do(func() { close(up) })
			}
		}
		u.Done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		// Not stopped by the test (a benchmark, a failure): SIGTERM, so
		// that usnetd removes its pins; SIGKILL would leave them under
		// PinRoot (the lab's interface is gone with the lab).
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-u.Done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-u.Done
			}
		}
	})
	select {
	case <-up:
	case err := <-u.Done:
		t.Fatalf("usnetd exited before it was up: %v\n%s", err, u.LogText())
	case <-time.After(startTimeout):
		t.Fatalf("usnetd not up after %v:\n%s", startTimeout, u.LogText())
	}
	return u
}

// Stop sends SIGTERM and checks the clean exit.
func (u *Usnetd) Stop(t testing.TB) {
	t.Helper()
	if err := u.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-u.Done:
		if err != nil {
			t.Fatalf("usnetd exit after SIGTERM: %v\n%s", err, u.LogText())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("usnetd did not stop after SIGTERM:\n%s", u.LogText())
	}
}

// DumpIfFailed logs usnetd's log, with every goroutine's stack (SIGQUIT),
// when the test failed (or E2E_DUMP is set) while usnetd runs.
func (u *Usnetd) DumpIfFailed(t *testing.T) {
	if os.Getenv("E2E_DUMP") == "" && !t.Failed() || u.Cmd.ProcessState != nil {
		return
	}
	_ = u.Cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-u.Done:
	case <-time.After(10 * time.Second):
	}
	t.Logf("usnetd's log:\n%s", u.LogText())
}

// StartFails runs usnetd expecting it to fail at start; it returns the
// error line, or "" if usnetd came up (and then stops it).
func (l *Lab) StartFails(env ...string) string {
	t := l.T
	t.Helper()
	argv := append(append([]string(nil), l.Wrap...), l.Exe())
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{MainEnv + "=1", "PATH=" + os.Getenv("PATH"), "LOG_FORMAT=json",
		"INTERFACES=" + l.Ifname, "SOCKET_PATH=" + l.Sock, "METRICS_ADDR=", "GORACE=atexit_sleep_ms=0"}, env...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := l.Host.Start(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			return ""
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		return lines[len(lines)-1]
	case <-time.After(startTimeout):
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Signal(syscall.SIGQUIT) // the Go runtime prints every goroutine
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			t.Fatalf("usnetd did not stop after SIGTERM:\n%s", out.String())
		}
		if strings.Contains(out.String(), "usnetd is up") {
			return ""
		}
		t.Fatalf("usnetd neither failed nor came up:\n%s", out.String())
		return ""
	}
}

var (
	productOnce sync.Once
	productBin  string
	productErr  error
)

// ProductBinary returns usnetd built as operators build it (go build, no
// race detector), for the tests that measure its memory: under -race the
// test binary that Start re-executes carries the race detector's shadow
// memory, several times the program's own. It is built once per process.
func ProductBinary(t testing.TB) string {
	t.Helper()
	gobin := netlab.RequireTool(t, "go", "golang-go (or Go from go.dev)")
	productOnce.Do(func() {
		dir, err := os.MkdirTemp("", "usnetd-product-")
		if err != nil {
			productErr = err
			return
		}
		productBin = filepath.Join(dir, "usnetd")
		if out, err := exec.Command(gobin, "build", "-o", productBin, "github.com/usnetd/usnetd/cmd/usnetd").CombinedOutput(); err != nil {
			productErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if productErr != nil {
		t.Fatal(productErr)
	}
	return productBin
}
