package netlab

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
)

// fakeTB records how a test ended. Like the real one, Skipf and Fatalf end
// the goroutine with runtime.Goexit, so the body runs on a goroutine of its
// own.
type fakeTB struct {
	testing.TB // nil: any method not below panics
	skipped    string
	fatal      string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func runFake(body func(tb testing.TB)) *fakeTB {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		body(f)
	}()
	<-done
	return f
}

func TestRequire(t *testing.T) {
	unsupported := errors.New("no CAP_NET_ADMIN")
	for _, tc := range []struct {
		ci        string
		err       error
		skip, die bool
	}{
		{"", nil, false, false},
		{"true", nil, false, false},
		{"", unsupported, true, false},
		{"false", unsupported, true, false},
		{"true", unsupported, false, true},
	} {
		t.Run(fmt.Sprintf("CI=%s,err=%v", tc.ci, tc.err), func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			f := runFake(func(tb testing.TB) { require(tb, tc.err) })
			if (f.skipped != "") != tc.skip || (f.fatal != "") != tc.die {
				t.Errorf("skipped %q, fatal %q; want skip %v, fatal %v", f.skipped, f.fatal, tc.skip, tc.die)
			}
		})
	}
}
