package daemon

import (
	"runtime"
	"testing"

	"github.com/rs/zerolog"
	l4 "github.com/usnetd/usnetd/switch"
	"golang.org/x/sys/unix"
)

func TestPinnerPinsThreads(t *testing.T) {
	p := &pinner{cpus: []int{1, 0}, log: zerolog.Nop()}
	hook := p.hook("eth0")
	for _, want := range []int{1, 0, 1} {
		done := make(chan unix.CPUSet)
		go func() {
			runtime.LockOSThread() // the thread dies with the goroutine: its mask does not leak
			hook("rx", l4.Owner{Port: 1, Kind: l4.PortNIC}, 0)
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(0, &set); err != nil {
				t.Error(err)
			}
			done <- set
		}()
		set := <-done
		if set.Count() != 1 || !set.IsSet(want) {
			t.Fatalf("thread mask %v, want only cpu %d", set, want)
		}
	}
}
