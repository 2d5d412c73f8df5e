package config

import (
	"io"
	"time"

	"github.com/rs/zerolog"
)

// NewLogger returns the logger of usnetd: writing to w at cfg.LogLevel, as
// human-readable lines (colored only when w is a terminal) for LogConsole,
// else as one JSON object per line, each with a timestamp.
func NewLogger(cfg *Config, w io.Writer) zerolog.Logger {
	if cfg.LogFormat == LogConsole {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !IsTerminal(w)}
	}
	return zerolog.New(w).Level(cfg.LogLevel).With().Timestamp().Logger()
}
