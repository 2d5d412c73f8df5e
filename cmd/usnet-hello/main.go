// Command usnet-hello is the example of a usnet program run by systemd
// next to usnetd (deploy/usnet-hello.service): an HTTP server on a
// userspace stack that shares the NIC's address with the kernel.
//
// It opens one stack for its whole life (usnet.Open, configured from the
// environment: USNET_INTERFACE and the rest, see package usnet), listens
// on USNET_HELLO_ADDR (default ":8080"), tells systemd it is ready
// (READY=1, for Type=notify) once the port is registered with usnetd, and
// answers every request with one line. On SIGTERM or SIGINT it stops
// accepting, lets requests in progress finish (up to 5 s), closes the
// stack (which detaches from usnetd) and exits 0.
//
// Exit status 1: the stack could not be opened or the port not registered
// (usnetd not running, the control socket not accessible: the program's
// user must be in usnetd's ALLOW_GID, the port taken); systemd's
// Restart=on-failure tries again.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/usnetd/usnetd/internal/sdnotify"
	"github.com/usnetd/usnetd/usnet"
)

func main() {
	log.SetFlags(0)
	if err := run(); err != nil {
		log.Print("usnet-hello: ", err)
		os.Exit(1)
	}
}

func run() error {
	addr := os.Getenv("USNET_HELLO_ADDR")
	if addr == "" {
		addr = ":8080"
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := usnet.Open(openCtx, nil) // nil: the Config from the environment
	cancel()
	if err != nil {
		return fmt.Errorf("open the stack: %w", err)
	}
	defer st.Close()
	ln, err := st.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from usnet-hello to %s\n", r.RemoteAddr)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Printf("usnet-hello: serving on %s (stack addresses %v)", ln.Addr(), st.Addrs())
	if err := sdnotify.Ready(); err != nil {
		log.Printf("usnet-hello: %v", err)
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sdnotify.Stopping()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	log.Print("usnet-hello: stopped")
	return nil
}
