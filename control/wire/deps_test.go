package wire

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestDeps: the codec depends on the standard library only, and on
// internal/ipproto (the protocol numbers' names, itself standard library
// only), so that every client of the protocol can use it.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	got := strings.Fields(string(out))
	slices.Sort(got)
	want := []string{"github.com/usnetd/usnetd/control/wire", "github.com/usnetd/usnetd/internal/ipproto"}
	if !slices.Equal(got, want) {
		t.Errorf("control/wire depends on %v beyond the standard library; want only %v", got, want)
	}
}
