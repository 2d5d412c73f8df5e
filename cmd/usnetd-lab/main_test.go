package main

import (
	"bufio"
	"errors"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/netlab"
)

// The lab binary is built once (go build, as a user's `go run` would) and
// run as a user runs it. Timeouts only bound a hang.

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// labBinary builds ./cmd/usnetd-lab once per test run.
func labBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		gobin, err := exec.LookPath("go")
		if err != nil {
			gobin = filepath.Join(build.Default.GOROOT, "bin", "go")
		}
		if binDir, buildErr = os.MkdirTemp("", "usnetd-lab-test-"); buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "usnetd-lab")
		out, err := exec.Command(gobin, "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build ./cmd/usnetd-lab: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// labRun is one run of the lab binary.
type labRun struct {
	t      *testing.T
	cmd    *exec.Cmd
	tmp    string // its TMPDIR
	stdout *lineBuf
	stderr strings.Builder
	done   chan struct{}
}

// lineBuf collects lines and tells when one containing a marker came.
type lineBuf struct {
	mu    sync.Mutex
	lines []string
	seen  map[string]chan struct{}
}

func (b *lineBuf) add(line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, line)
	for m, ch := range b.seen {
		if strings.Contains(line, m) {
			close(ch)
			delete(b.seen, m)
		}
	}
}

func (b *lineBuf) wait(marker string) chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := make(chan struct{})
	for _, l := range b.lines {
		if strings.Contains(l, marker) {
			close(ch)
			return ch
		}
	}
	b.seen[marker] = ch
	return ch
}

func (b *lineBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

func startLab(t *testing.T, args ...string) *labRun {
	t.Helper()
	netlab.Require(t) // skips, or fails under CI=true, without privileges
	bin := labBinary(t)
	r := &labRun{t: t, tmp: t.TempDir(), stdout: &lineBuf{seen: map[string]chan struct{}{}}, done: make(chan struct{})}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = append(os.Environ(), "TMPDIR="+r.tmp)
	r.cmd.Stderr = &r.stderr
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.stdout.add(sc.Text())
		}
		_ = r.cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Signal(os.Interrupt)
			select {
			case <-r.done:
			case <-time.After(60 * time.Second):
				_ = r.cmd.Process.Kill()
				<-r.done
			}
		}
	})
	return r
}

// wait waits for the exit and returns the exit status.
func (r *labRun) wait() int {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(3 * time.Minute):
		r.t.Fatalf("usnetd-lab still running after 3 minutes:\n%s", r.stdout)
	}
	return r.cmd.ProcessState.ExitCode()
}

var labNameRE = regexp.MustCompile(`\b(ulab[0-9a-f]{6})-host\b`)

// checkNothingLeft checks that the lab named in the output is gone: its
// namespaces, its lock, usnetd's pins, and every file in TMPDIR.
func (r *labRun) checkNothingLeft() {
	t := r.t
	t.Helper()
	m := labNameRE.FindStringSubmatch(r.stdout.String())
	if m == nil {
		t.Fatalf("no lab name in the output:\n%s", r.stdout)
	}
	name := m[1]
	for _, p := range []string{
		filepath.Join(netlab.NetnsDir, name+"-host"),
		filepath.Join(netlab.NetnsDir, name+"-remote"),
		filepath.Join(netlab.LockDir, name+".lock"),
		filepath.Join("/sys/fs/bpf/usnetd", name),
	} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left (%v)", p, err)
		}
	}
	ents, err := os.ReadDir(r.tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("file left in TMPDIR: %s", e.Name())
	}
}

// TestLab: the demo runs, every check passes, it prints the table and the
// counters, and removes everything.
func TestLab(t *testing.T) {
	t.Parallel()
	r := startLab(t)
	code := r.wait()
	out := r.stdout.String()
	t.Logf("usnetd-lab:\n%s\n%s", out, r.stderr.String())
	if code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	for _, want := range []string{
		"STEP", "EXPECTED", "GOT", "OK",
		"200 from usnet", "200 \"hello", "from usnet",
		"no answer: filtered", "no answer (timeout)",
		"Counters", "endpoint 1", "nic",
		"usnetd-lab: all checks passed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "FAIL") {
		t.Errorf("a step failed")
	}
	if rows := strings.Count(out, "  ok\n"); rows != 7 {
		t.Errorf("%d rows ok, want 7", rows)
	}
	r.checkNothingLeft()
}

// TestLabKeep: --keep leaves the lab up, its hints work, and Ctrl-C
// removes everything with exit status 0.
func TestLabKeep(t *testing.T) {
	t.Parallel()
	r := startLab(t, "--keep")
	select {
	case <-r.stdout.wait("The lab stays up until Ctrl-C"):
	case <-r.done:
		t.Fatalf("exited (%v) instead of staying up:\n%s\n%s", r.cmd.ProcessState, r.stdout, r.stderr.String())
	case <-time.After(3 * time.Minute):
		t.Fatalf("no hints after 3 minutes:\n%s", r.stdout)
	}
	<-r.stdout.wait("files:")
	out := r.stdout.String()
	// Run the hints as a user would: the curl ones and usnetctl's.
	var ran int
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "ip netns exec ") || !strings.Contains(line, " curl http") {
			continue
		}
		args := strings.Fields(strings.SplitN(line, "#", 2)[0])
		args = append(args[:5], append([]string{"-sS", "--max-time", "5"}, args[5:]...)...)
		got, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil || !strings.Contains(string(got), "hello") {
			t.Errorf("%s: %v\n%s", line, err, got)
		}
		ran++
	}
	if ran != 2 {
		t.Errorf("ran %d curl hints, want 2:\n%s", ran, out)
	}
	if _, err := os.Stat(filepath.Join(netlab.NetnsDir, labNameRE.FindStringSubmatch(out)[1]+"-remote")); err != nil {
		t.Errorf("the remote namespace is not there while the lab is kept: %v", err)
	}
	if err := r.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := r.wait(); code != 0 {
		t.Fatalf("exit status %d after Ctrl-C with --keep, want 0\n%s", code, r.stderr.String())
	}
	r.checkNothingLeft()
}

// TestLabFailure: a check that fails (usnetd without the kernel's
// DEBUG_PORTS port) gives exit status 1 and one clear line naming it, and
// still removes everything.
func TestLabFailure(t *testing.T) {
	t.Parallel()
	r := startLab(t, "-e", "DEBUG_PORTS=")
	code := r.wait()
	if code != 1 {
		t.Fatalf("exit status %d, want 1\n%s\n%s", code, r.stdout, r.stderr.String())
	}
	errOut := r.stderr.String()
	if !regexp.MustCompile(`(?m)^usnetd-lab: FAILED: remote: GET http://[0-9.]+:8081/: expected 200 from the kernel \(DEBUG_PORTS\), got no answer`).MatchString(errOut) {
		t.Errorf("stderr lacks the failure line:\n%s", errOut)
	}
	if !strings.Contains(r.stdout.String(), "FAIL") {
		t.Errorf("no FAIL row:\n%s", r.stdout)
	}
	r.checkNothingLeft()
}

// TestLabInterrupt: SIGINT while the checks run removes everything; the
// exit status says interrupted.
func TestLabInterrupt(t *testing.T) {
	t.Parallel()
	r := startLab(t)
	// The table is printed at the end: interrupt once usnetd runs.
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if hasChild(r.cmd.Process.Pid) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code := r.wait()
	if code != 130 && code != 0 {
		t.Fatalf("exit status %d after SIGINT, want 130 (or 0 if it had finished)\n%s", code, r.stderr.String())
	}
	r.checkNothingLeft()
}

// hasChild reports whether a thread of pid has a child process (the lab
// starts usnetd from a thread inside the host namespace).
func hasChild(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, p := range tasks {
		if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
			return true
		}
	}
	return false
}

func TestUsage(t *testing.T) {
	var o, e strings.Builder
	if code := run([]string{"--bogus"}, &o, &e); code != 2 || !strings.Contains(e.String(), "usage: usnetd-lab") {
		t.Errorf("--bogus: exit %d, stderr %q", code, e.String())
	}
	o.Reset()
	if code := run([]string{"-h"}, &o, &e); code != 0 || !strings.Contains(o.String(), "--keep") {
		t.Errorf("-h: exit %d, stdout %q", code, o.String())
	}
	if code := run([]string{"-e", "novalue"}, &o, &e); code != 2 {
		t.Errorf("-e novalue: exit %d, want 2", code)
	}
}
