package testkit

import (
	"os"
	"testing"
)

// OpenFDs counts this process's open descriptors.
func OpenFDs(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// FDList names this process's open descriptors (number to link target),
// for failure messages.
func FDList() map[string]string {
	es, _ := os.ReadDir("/proc/self/fd")
	m := map[string]string{}
	for _, e := range es {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		m[e.Name()] = l
	}
	return m
}
