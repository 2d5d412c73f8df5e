package wire

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDeps: the codec depends on the standard library only, and on
// internal/ipproto (the protocol numbers' names, itself standard library
// only), so that every client of the protocol can use it.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go") // go test puts its GOROOT/bin first in PATH
	if err != nil {
		t.Fatalf("the go command: %v", err)
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
