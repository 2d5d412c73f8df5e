package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Capabilities a lab needs: CAP_NET_ADMIN for links, addresses and routes;
// CAP_SYS_ADMIN for setns(2), unshare(2) and the bind mounts of named
// namespaces.
const (
	capNetAdmin = 12
	capSysAdmin = 21
)

var (
	probeOnce sync.Once
	probeErr  error
)

// Supported reports whether this process can build labs: it has
// CAP_NET_ADMIN and CAP_SYS_ADMIN (root has both) and the kernel lets it
// create a network namespace (the probe really creates one, on a thread
// that is thrown away afterwards). The result is computed once.
func Supported() error {
	probeOnce.Do(func() { probeErr = probe() })
	return probeErr
}

func probe() error {
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "CAP_NET_ADMIN"}, {capSysAdmin, "CAP_SYS_ADMIN"}} {
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			return fmt.Errorf("no %s (euid %d; run as root)", c.name, os.Geteuid())
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("no network namespaces: %w", err)
	}
	ch := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, now in a namespace of its own, ends
		// with this goroutine.
		runtime.LockOSThread()
		ch <- unix.Unshare(unix.CLONE_NEWNET)
	}()
	if err := <-ch; err != nil {
		return fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
	}
	return nil
}

// Require skips the test when labs cannot be built here (see Supported),
// except under CI (the environment variable CI=true), where it fails the
// test instead: a privileged test that cannot run in CI is a failure, not a
// skip. New calls it when given a testing.TB; other packages' privileged
// tests that do not make a lab (say, ones that need CAP_NET_ADMIN in the
// root namespace) call it directly.
func Require(t testing.TB) {
	t.Helper()
	require(t, Supported())
}

func require(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("netlab: privileged test cannot run under CI=true: %v", err)
	}
	t.Skipf("netlab: cannot build network labs here: %v", err)
}

// RequireTool returns the path of the command-line tool name, which the
// Debian package debianPackage installs. Without it the test skips with one
// line naming the package, except under CI (CI=true), where it fails: CI
// installs every tool the tests use, and a skip there would pass unnoticed.
func RequireTool(t testing.TB, name, debianPackage string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s is not installed (apt-get install %s)", name, debianPackage)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI must install it")
	}
	t.Skip(msg)
	return ""
}
