// Package lograte keeps usnetd's log bounded whatever clients and remote
// senders do: every message class (the message text of a log line) may
// write a burst of lines per period, and the lines beyond it are dropped
// and counted, so that /metrics shows what the log did not
// (usnetd_log_suppressed_total{class}).
//
// It is a zerolog hook: Limiter.Logger returns a logger whose events pass
// through a zerolog.BurstSampler of their class before they are written.
// Lines that only the operator causes (start, stop) are unique and never
// reach a limit.
package lograte

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Defaults of New: at most DefaultBurst lines of one class per
// DefaultPeriod.
const (
	DefaultBurst  = 20
	DefaultPeriod = time.Second
	// MaxClasses bounds the classes tracked; the messages are the
	// program's own constant texts, so this is never reached in practice,
	// and beyond it every further message text shares the class "other".
	MaxClasses = 1024
)

// Limiter rate-limits log lines per message class. Safe for concurrent use.
type Limiter struct {
	burst  uint32
	period time.Duration

	mu      sync.Mutex
	classes map[string]*class
	other   *class
}

type class struct {
	s          *zerolog.BurstSampler
	suppressed atomic.Uint64
}

// New returns a limiter of burst lines per period and class (0: the defaults).
func New(burst int, period time.Duration) *Limiter {
	if burst <= 0 {
		burst = DefaultBurst
	}
	if period <= 0 {
		period = DefaultPeriod
	}
	l := &Limiter{burst: uint32(burst), period: period, classes: map[string]*class{}}
	l.other = l.newClass()
	return l
}

func (l *Limiter) newClass() *class {
	return &class{s: &zerolog.BurstSampler{Burst: l.burst, Period: l.period}}
}

func (l *Limiter) class(msg string) *class {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.classes[msg]
	if c == nil {
		if len(l.classes) >= MaxClasses {
			return l.other
		}
		c = l.newClass()
		l.classes[msg] = c
	}
	return c
}

// Run implements zerolog.Hook: it drops a line beyond its class's burst.
func (l *Limiter) Run(e *zerolog.Event, level zerolog.Level, msg string) {
	if level == zerolog.Disabled || level == zerolog.NoLevel {
		return
	}
	c := l.class(msg)
	if !c.s.Sample(level) {
		c.suppressed.Add(1)
		e.Discard()
	}
}

// Logger returns log with the limiter's hook.
func (l *Limiter) Logger(log zerolog.Logger) zerolog.Logger { return log.Hook(l) }

// Suppressed returns the lines dropped so far per class (classes with none
// left out), the class "other" included.
func (l *Limiter) Suppressed() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[string]uint64{}
	for k, c := range l.classes {
		if n := c.suppressed.Load(); n > 0 {
			m[k] = n
		}
	}
	if n := l.other.suppressed.Load(); n > 0 {
		m["other"] += n
	}
	return m
}

// Total returns every line dropped so far.
func (l *Limiter) Total() uint64 {
	var n uint64
	for _, v := range l.Suppressed() {
		n += v
	}
	return n
}

// Classes returns the names of the classes with suppressed lines, sorted.
func (l *Limiter) Classes() []string {
	m := l.Suppressed()
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
