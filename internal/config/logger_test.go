package config

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestNewLogger(t *testing.T) {
	var b bytes.Buffer
	log := NewLogger(&Config{LogLevel: zerolog.WarnLevel, LogFormat: LogJSON}, &b)
	log.Info().Msg("hidden")
	log.Warn().Str("k", "v").Msg("shown")
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil {
		t.Fatalf("JSON log is not one JSON object: %q: %v", b.String(), err)
	}
	if rec["message"] != "shown" || rec["level"] != "warn" || rec["k"] != "v" || rec["time"] == nil {
		t.Errorf("JSON record = %v", rec)
	}

	b.Reset()
	log = NewLogger(&Config{LogLevel: zerolog.TraceLevel, LogFormat: LogConsole}, &b)
	log.Trace().Msg("tiny")
	out := b.String()
	if !strings.Contains(out, "TRC") || !strings.Contains(out, "tiny") || strings.HasPrefix(out, "{") {
		t.Errorf("console log = %q, want a human-readable trace line", out)
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("console log to a non-terminal has colors: %q", out)
	}
}
