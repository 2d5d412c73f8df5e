package main

import (
	"io"
	"os"

	"github.com/rs/zerolog"

	"github.com/usnetd/usnetd/internal/config"
	"github.com/usnetd/usnetd/internal/usnetdcmd"
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr, usnetdcmd.Serve))
}

// run is usnetd with its arguments (without the program name), environment
// and output streams; start runs the daemon with the loaded configuration.
// The command lives in internal/usnetdcmd, which usnetd-lab shares.
func run(args, environ []string, stdout, stderr io.Writer, start func(*config.Config, zerolog.Logger) error) int {
	return usnetdcmd.Run(args, environ, stdout, stderr, start)
}
