package l4

import (
	"go/build"
	"strings"
	"testing"
)

// TestNoSyscallImports keeps the promise of doc.go: the data plane makes
// no system call itself. Backends and cmd/usnetd own devices and threads.
func TestNoSyscallImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if imp == "os" || imp == "syscall" || imp == "unsafe" || strings.HasPrefix(imp, "net") && imp != "net/netip" ||
			strings.HasPrefix(imp, "golang.org/x/sys") || strings.HasPrefix(imp, "os/") {
			t.Errorf("package l4 imports %q", imp)
		}
	}
}
