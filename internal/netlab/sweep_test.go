package netlab

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// These tests run this test binary again as a child that makes a lab and
// then fails, panics, crashes or waits: the real testing package decides
// what runs at the end of a failed test, not a fake.

const helperEnv = "NETLAB_TEST_HELPER"

// TestHelperProcess is the child. It does nothing in a normal run.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process for other tests")
	}
	lab, err := New(t, os.Getenv(helperEnv+"_PREFIX"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := lab.AddNS("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.AddNS("b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Veth(a, "eth0", b, "eth0", VethOpts{Up: true}); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("LAB=%s\n", lab.Name())
	switch mode {
	case "fail":
		t.Fatal("failing on purpose")
	case "panic":
		panic("panicking on purpose")
	case "crash":
		os.Exit(3) // no cleanup runs: what a SIGKILL or OOM kill leaves
	case "hold":
		io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
	}
}

// syncBuffer collects a child's output from two goroutines.
type syncBuffer struct {
	mu   sync.Mutex
	b    strings.Builder
	done chan struct{} // closed at the child's EOF
}

// all waits for the child's end of output and returns all of it.
func (s *syncBuffer) all() string {
	<-s.done
	return s.String()
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// helper starts the child in mode with labs of prefix and returns it, its
// stdin, the name of its lab once it has printed it, and its output.
func helper(t *testing.T, mode, prefix string) (*exec.Cmd, io.WriteCloser, string, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.v")
	// GORACE: a -race binary otherwise sleeps a second before it exits.
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperEnv+"_PREFIX="+prefix, "GORACE=atexit_sleep_ms=0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	out := &syncBuffer{done: make(chan struct{})}
	labc := make(chan string, 1)
	go func() {
		defer close(out.done)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(out, line)
			if name, ok := strings.CutPrefix(line, "LAB="); ok {
				labc <- name
			}
		}
		close(labc)
	}()
	lab, ok := <-labc
	if !ok {
		cmd.Wait()
		t.Fatalf("helper %s printed no lab name:\n%s", mode, out)
	}
	return cmd, stdin, lab, out
}

// randomPrefix returns a prefix no other test uses, so that Sweep with
// IncludeLive cannot hit a lab of a test running in parallel. Since no later
// New will ever sweep that prefix, the test sweeps it at its very end, in
// case it failed before its own Sweep (its children are dead by then).
func randomPrefix(t *testing.T) string {
	var b [3]byte
	rand.Read(b[:])
	prefix := "t" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		if _, err := Sweep(prefix, SweepOpts{}); err != nil {
			t.Errorf("final sweep: %v", err)
		}
	})
	return prefix
}

func TestCleanupWhenTestFails(t *testing.T) {
	Require(t)
	t.Parallel()
	for _, mode := range []string{"fail", "panic"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			cmd, stdin, lab, out := helper(t, mode, testPrefix)
			stdin.Close()
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("helper %s: %v, want a failed test\n%s", mode, err, out)
			}
			if got := labLeftovers(t, lab); len(got) != 0 {
				t.Errorf("helper test %s with lab %s left %q\n%s", mode, lab, got, out)
			}
			if all := out.all(); strings.Contains(all, "closing lab") || !strings.Contains(all, "--- FAIL: TestHelperProcess") {
				t.Errorf("want a failed helper test and no errors from Close:\n%s", all)
			}
		})
	}
}

func TestSweep(t *testing.T) {
	Require(t)
	t.Parallel()
	prefix := randomPrefix(t)

	// A live lab of this process, made before the crash below (New sweeps).
	live, err := New(t, prefix)
	if err != nil {
		t.Fatal(err)
	}
	liveNS, err := live.AddNS("x")
	if err != nil {
		t.Fatal(err)
	}

	// A crashed run leaves its namespaces and its lock file.
	cmd, stdin, crashed, out := helper(t, "crash", prefix)
	stdin.Close()
	var ee *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("crash helper: %v\n%s", err, out)
	}
	want := []string{crashed + "-a", crashed + "-b"}
	if got := labLeftovers(t, crashed); len(got) != 3 {
		t.Fatalf("crashed lab %s left %q, want 2 namespaces and a lock file", crashed, got)
	}
	// An orphan: a namespace file without a lock file (a plain file, as a
	// reboot leaves on a /run that is not a tmpfs), and a name that is no
	// lab's, which Sweep must not touch.
	orphan := prefix + "abcdef-o"
	notLab := prefix + "-keep"
	for _, n := range []string{orphan, notLab} {
		p := filepath.Join(NetnsDir, n)
		if err := os.WriteFile(p, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	want = append(want, orphan)
	slices.Sort(want)

	removed, err := Sweep(prefix, SweepOpts{})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if !slices.Equal(removed, want) {
		t.Errorf("Sweep removed %q, want %q", removed, want)
	}
	if got := labLeftovers(t, crashed); len(got) != 0 {
		t.Errorf("crashed lab left %q after Sweep", got)
	}
	if got := labLeftovers(t, live.Name()); len(got) != 2 {
		t.Errorf("live lab after Sweep: %q, want its namespace and lock file", got)
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, notLab)); err != nil {
		t.Errorf("Sweep touched %s: %v", notLab, err)
	}
	if err := liveNS.SetUp("lo"); err != nil {
		t.Errorf("live lab after Sweep: %v", err)
	}

	// IncludeLive takes the live lab too; its Close copes.
	removed, err = Sweep(prefix, SweepOpts{IncludeLive: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{liveNS.Name()}; !slices.Equal(removed, want) {
		t.Errorf("Sweep(IncludeLive) removed %q, want %q", removed, want)
	}
	if err := live.Close(); err != nil {
		t.Errorf("Close after a sweep: %v", err)
	}
	if got := labLeftovers(t, live.Name()); len(got) != 0 {
		t.Errorf("left %q", got)
	}
}

func TestSweepSparesOtherProcess(t *testing.T) {
	Require(t)
	t.Parallel()
	prefix := randomPrefix(t)
	cmd, stdin, lab, out := helper(t, "hold", prefix)
	removed, err := Sweep(prefix, SweepOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 0 {
		t.Errorf("Sweep removed %q of a running process", removed)
	}
	if got := labLeftovers(t, lab); len(got) != 3 {
		t.Errorf("lab %s of a running process: %q", lab, got)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("hold helper: %v\n%s", err, out)
	}
	if got := labLeftovers(t, lab); len(got) != 0 {
		t.Errorf("lab %s left %q after its test passed", lab, got)
	}
}
