package deploy

import (
	"os"
	"os/exec"
	"testing"
)

// requireTool returns the path of a command-line tool, skipping the test
// when it is missing, or failing it under CI (CI=true), where a skipped
// check would pass unnoticed.
func requireTool(t *testing.T, name, debianPackage string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := name + " not found (Debian package " + debianPackage + ")"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI must install it")
	}
	t.Skip(msg)
	return ""
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
