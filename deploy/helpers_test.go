package deploy

import (
	"os"
	"testing"

	"github.com/usnetd/usnetd/internal/netlab"
)

// requireTool returns the path of a command-line tool, skipping the test
// when it is missing, or failing it under CI (CI=true), where a skipped
// check would pass unnoticed.
func requireTool(t *testing.T, name, debianPackage string) string {
	t.Helper()
	return netlab.RequireTool(t, name, debianPackage)
}

// readFile returns a file of this directory.
func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
