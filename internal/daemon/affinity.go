package daemon

import (
	"fmt"
	"sync"

	"github.com/rs/zerolog"
	l4 "github.com/usnetd/usnetd/switch"
	"golang.org/x/sys/unix"
)

// pinner pins the OS threads of RX workers to the CPUS list, one CPU per
// worker in the order the workers start, wrapping around when there are
// more workers than CPUs.
type pinner struct {
	cpus []int
	log  zerolog.Logger
	mu   sync.Mutex
	next int
}

// hook is a PipelineConfig.OnThreadStart; it runs on the worker's locked
// thread. Without CPUS it does nothing: the scheduler places the threads.
func (p *pinner) hook(ifname string) func(role string, port l4.Owner, queue int) {
	return func(role string, port l4.Owner, queue int) {
		if len(p.cpus) == 0 {
			return
		}
		p.mu.Lock()
		cpu := p.cpus[p.next%len(p.cpus)]
		p.next++
		p.mu.Unlock()
		if err := pinThread(cpu); err != nil {
			p.log.Warn().Err(err).Str("interface", ifname).Str("role", role).Int("queue", queue).
				Int("cpu", cpu).Msg("could not pin worker thread")
			return
		}
		p.log.Info().Str("interface", ifname).Str("role", role).Uint32("port", uint32(port.Port)).
			Int("queue", queue).Int("cpu", cpu).Msg("worker pinned")
	}
}

// pinThread binds the calling OS thread to cpu.
func pinThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("sched_setaffinity cpu %d: %w", cpu, err)
	}
	return nil
}
