package usnet

import (
	"os/exec"
	"strings"
	"testing"
)

// nonStdDeps lists the packages outside the standard library that pkg
// (a directory or import path) depends on, itself included.
func nonStdDeps(t *testing.T, pkg string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go") // go test puts its GOROOT/bin first in PATH
	if err != nil {
		t.Fatalf("the go command: %v", err)
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// TestDeps: a program that uses usnet does not get the eBPF firewall,
// cilium/ebpf, zerolog or usnetd's server with it: usnet speaks the control
// protocol through control/client and control/wire only.
func TestDeps(t *testing.T) {
	deps := nonStdDeps(t, ".")
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, d := range deps {
		switch {
		case strings.HasPrefix(d, "github.com/cilium/ebpf"),
			strings.HasPrefix(d, "github.com/rs/zerolog"),
			d == "github.com/usnetd/usnetd/firewall" || strings.HasPrefix(d, "github.com/usnetd/usnetd/firewall/"),
			d == "github.com/usnetd/usnetd/control":
			t.Errorf("usnet depends on %s", d)
		}
	}
}
