// Package usnetdcmd is the usnetd command without its main function: the
// argument and configuration handling, the logger and the daemon run until
// SIGINT or SIGTERM. cmd/usnetd is a thin main around it; cmd/usnetd-lab
// re-executes itself into it, so that the demo runs the very same daemon
// from one binary.
package usnetdcmd

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/usnetd/usnetd/internal/config"
	"github.com/usnetd/usnetd/internal/daemon"
	"github.com/usnetd/usnetd/internal/sdnotify"
)

// Serve runs the daemon until SIGINT or SIGTERM.
func Serve(cfg *config.Config, log zerolog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, daemon.Options{
		Config: cfg,
		Log:    log,
		// Under systemd (Type=notify): READY=1 once every NIC is claimed
		// and the sockets listen, STOPPING=1 at SIGTERM, and WATCHDOG=1
		// while the daemon's loops make progress.
		Ready: func() {
			if err := sdnotify.Ready(); err != nil {
				log.Warn().Err(err).Msg("sd_notify READY=1")
			}
		},
		Stopping: func() { _ = sdnotify.Stopping() },
		Watchdog: func(ctx context.Context, healthy func() bool) {
			if err := sdnotify.Watchdog(ctx, healthy); err != nil {
				log.Warn().Err(err).Msg("sd_notify watchdog")
			}
		},
		// STATUS=: which NICs are served, and which are gone.
		Status: func(status string) { _ = sdnotify.Status(status) },
	})
}

const usageLine = "usage: usnetd [-h|--help] [CONFFILE]"

// Run is usnetd with its arguments (without the program name), environment
// and output streams; start runs the daemon with the loaded configuration
// (Serve, or a fake in tests). It returns the exit status: 0 after a clean
// stop, 2 for a usage or configuration error, 1 when the daemon failed; an
// error is one line on stderr.
func Run(args, environ []string, stdout, stderr io.Writer, start func(*config.Config, zerolog.Logger) error) int {
	var confFile string
	var operands []string
flags:
	for i, a := range args {
		switch {
		case a == "--":
			operands = append(operands, args[i+1:]...)
			break flags
		case a == "-h" || a == "--help" || a == "-help":
			config.Usage(stdout)
			return 0
		case strings.HasPrefix(a, "-") && a != "-":
			fmt.Fprintf(stderr, "usnetd: unknown flag %q (%s)\n", a, usageLine)
			return 2
		default:
			operands = append(operands, a)
		}
	}
	switch len(operands) {
	case 0:
	case 1:
		confFile = operands[0]
	default:
		fmt.Fprintf(stderr, "usnetd: at most one CONFFILE, got %d arguments (%s)\n", len(operands), usageLine)
		return 2
	}

	loader := &config.Loader{IsTerminal: func() bool { return config.IsTerminal(stderr) }}
	cfg, err := loader.Load(environ, confFile)
	if err != nil {
		fmt.Fprintf(stderr, "usnetd: %v\n", err)
		return 2
	}
	log := config.NewLogger(cfg, stderr)
	metrics := cfg.MetricsAddr
	if metrics == "" {
		metrics = "off"
	}
	workers := fmt.Sprint(cfg.Workers)
	if cfg.Workers == 0 {
		workers = "one per NIC queue"
	}
	log.Info().
		Strs("interfaces", cfg.Interfaces).
		Str("backend", string(cfg.Backend)).
		Str("workers", workers).
		Str("socket", cfg.SocketPath).
		Str("metrics", metrics).
		Msg("configuration loaded")
	if err := start(cfg, log); err != nil {
		log.Error().Err(err).Msg("usnetd failed")
		fmt.Fprintf(stderr, "usnetd: %v\n", err)
		return 1
	}
	log.Info().Msg("usnetd stopped")
	return 0
}
