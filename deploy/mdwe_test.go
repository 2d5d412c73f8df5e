package deploy

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const mdweChildEnv = "USNETD_DEPLOY_MDWE_CHILD"

// TestGoRunsUnderMemoryDenyWriteExecute backs MemoryDenyWriteExecute=yes
// in the unit: Go code must never need memory that is writable and
// executable. The kernel's own form of that rule, prctl(PR_SET_MDWE,
// PR_MDWE_REFUSE_EXEC_GAIN) (Linux ≥ 6.3; systemd uses a seccomp filter
// with the same effect on mmap/mprotect), is set in a child process, which
// then checks that the rule bites, runs a real pipeline and a scrape
// (goroutines, locked threads, heap growth, GC), and finally execs the
// usnetd binary, which inherits the rule, with a valid configuration (it
// then refuses lo, the only interface here, as no Ethernet NIC).
func TestGoRunsUnderMemoryDenyWriteExecute(t *testing.T) {
	if os.Getenv(mdweChildEnv) != "" {
		mdweChild(t)
		return
	}
	if err := unix.Prctl(unix.PR_GET_MDWE, 0, 0, 0, 0); errors.Is(err, unix.EINVAL) {
		msg := "the kernel has no PR_SET_MDWE (Linux < 6.3)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	gobin := requireTool(t, "go", "golang-go, or Go from go.dev")
	bin := filepath.Join(t.TempDir(), "usnetd")
	if out, err := exec.Command(gobin, "build", "-trimpath", "-o", bin, "../cmd/usnetd").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/usnetd: %v\n%s", err, out)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestGoRunsUnderMemoryDenyWriteExecute$", "-test.v")
	cmd.Env = append(os.Environ(), mdweChildEnv+"="+bin, "INTERFACES=lo", "METRICS_ADDR=", "LOG_FORMAT=json")
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	// usnetd loads its configuration and then refuses lo (not Ethernet),
	// exit status 1: what matters is that the runtime came that far.
	if !strings.Contains(string(out), `"configuration loaded"`) {
		t.Fatalf("usnetd under MDWE did not get as far as loading its configuration (%v)", err)
	}
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1 && strings.Contains(string(out), "not an Ethernet interface")) {
		t.Fatalf("child under MDWE: %v", err)
	}
}

func mdweChild(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_MDWE, unix.PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_MDWE: %v", err)
	}
	// The rule bites: a writable and executable mapping is refused.
	if m, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANON); err == nil {
		unix.Munmap(m)
		t.Fatal("MDWE is set, but a W+X mapping was allowed")
	}
	// A real pipeline and a scrape, with heap growth and collections.
	fams, msg := scrapeFamilies()
	if msg != "" || len(fams) == 0 {
		t.Fatalf("pipeline under MDWE: %s", msg)
	}
	junk := make([][]byte, 0, 1<<12)
	for i := range 1 << 12 {
		junk = append(junk, make([]byte, 64<<10))
		junk[i][0] = 1
	}
	runtime.GC()
	runtime.KeepAlive(junk)
	// usnetd itself, inheriting MDWE across execve.
	bin := os.Getenv(mdweChildEnv)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, mdweChildEnv+"=") {
			env = append(env, kv)
		}
	}
	os.Stdout.Sync()
	err := syscall.Exec(bin, []string{bin}, env)
	t.Fatalf("exec %s: %v", bin, err)
}
