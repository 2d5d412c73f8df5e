package lograte

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestBurstPerClass: a flood of one message writes its burst and counts
// the rest; another message next to it is written in full.
func TestBurstPerClass(t *testing.T) {
	var buf bytes.Buffer
	l := New(5, time.Hour)
	log := l.Logger(zerolog.New(&buf))
	for range 1000 {
		log.Warn().Str("client", "x").Msg("malformed message")
	}
	for range 3 {
		log.Info().Msg("rule added")
	}
	lines := strings.Count(buf.String(), "\n")
	if got := strings.Count(buf.String(), "malformed message"); got != 5 {
		t.Errorf("%d lines of the flooded class, want 5", got)
	}
	if got := strings.Count(buf.String(), "rule added"); got != 3 {
		t.Errorf("%d lines of the other class, want 3", got)
	}
	if lines != 8 {
		t.Errorf("%d lines written, want 8", lines)
	}
	if s := l.Suppressed(); s["malformed message"] != 995 || len(s) != 1 || l.Total() != 995 {
		t.Errorf("suppressed %v, want 995 of the flooded class only", s)
	}
}

// TestManyClassesBounded: message texts beyond MaxClasses share one class,
// so the limiter's memory stays bounded.
func TestManyClassesBounded(t *testing.T) {
	var buf bytes.Buffer
	l := New(1, time.Hour)
	log := l.Logger(zerolog.New(&buf))
	for i := range MaxClasses + 500 {
		log.Warn().Msg(strings.Repeat("m", 1+i%7) + string(rune('a'+i%26)) + string(rune(i)))
	}
	l.mu.Lock()
	n := len(l.classes)
	l.mu.Unlock()
	if n > MaxClasses {
		t.Fatalf("%d classes", n)
	}
	if l.Suppressed()["other"] == 0 {
		t.Error("nothing counted in the class other")
	}
}

func TestConcurrent(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	l := New(10, time.Hour)
	log := l.Logger(zerolog.New(zerolog.SyncWriter(&lockedWriter{&mu, &buf})))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				log.Warn().Msg("flood")
			}
		})
	}
	wg.Wait()
	if got := strings.Count(buf.String(), "flood"); got != 10 || l.Total() != 790 {
		t.Errorf("%d lines written, %d suppressed; want 10 and 790", got, l.Total())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
