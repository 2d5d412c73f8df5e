package main

import (
	"errors"
	"testing"

	"github.com/usnetd/usnetd/usnet"
)

// TestNoInterface: without USNET_INTERFACE the program fails at once with
// usnet's error (exit status 1 in main), before it touches usnetd.
// deploy's TestSystemdUnit runs it for real under its unit.
func TestNoInterface(t *testing.T) {
	t.Setenv("USNET_INTERFACE", "")
	t.Setenv("USNET_SOCKET", t.TempDir()+"/none.sock")
	if err := run(); !errors.Is(err, usnet.ErrNoInterface) {
		t.Fatalf("run: %v, want usnet.ErrNoInterface", err)
	}
}
