package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/netorder"
	"github.com/usnetd/usnetd/usnet"
)

// The servers of the peer tests and benchmarks run in a child process in
// the host namespace: this test binary again, with serverEnv set to where
// its sockets come from:
//
//	usnet   usnet's userspace stack, attached to usnetd through the control
//	        socket (USNET_INTERFACE, USNET_SOCKET), on the host's IP and MAC,
//	        on a shared-memory channel
//	usnet-uds  the same on a Unix datagram channel (usnet.Config.NoSHM)
//	packet  the same usnet stack with an AF_PACKET socket on the NIC as its
//	        channel (no usnetd; USNET_IP gives the stack the address that
//	        the host kernel then must not have)
//	kernel  the kernel's sockets
//
// It serves the same HTTP handler (httpPortEnv) and TCP sink (sinkPortEnv)
// in each case, says "e2e server: ready" on stderr once it listens, and
// stops on SIGTERM. With cpuProfileEnv it writes a CPU profile of its
// whole life there.
const (
	serverEnv     = "USNETD_E2E_SERVER"
	httpPortEnv   = "USNETD_E2E_HTTP_PORT"
	sinkPortEnv   = "USNETD_E2E_SINK_PORT"
	cpuProfileEnv = "USNETD_E2E_CPUPROFILE"
	serverReady   = "e2e server: ready"
	// serverReattached: a usnet server attached again after usnetd
	// restarted (usnet.Config.Reattached), followed by its error in
	// parentheses ("<nil>": every rule registered again).
	serverReattached = "e2e server: reattached"
	// proxyURLEnv: a usnet server also serves /proxy, which fetches this
	// URL through its stack (proxyHandler).
	proxyURLEnv = "USNETD_E2E_PROXY_URL"
)

// e2eHandler is the HTTP handler of every variant: a short fixed body;
// the header says who served it. /upload reads the request body and
// answers "received N"; /download answers downloadSize bytes of
// downloadByte(i).
func e2eHandler(stack string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Stack", stack)
		switch r.URL.Path {
		case "/upload":
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "received %d\n", n)
		case "/download":
			w.Header().Set("Content-Length", fmt.Sprint(downloadSize))
			buf := make([]byte, downloadSize)
			for i := range buf {
				buf[i] = downloadByte(i)
			}
			w.Write(buf)
		default:
			io.WriteString(w, "hello, world\n")
		}
	})
}

// downloadSize is the size of /download: 1 MiB.
const downloadSize = 1 << 20

// downloadByte is byte i of /download.
func downloadByte(i int) byte { return byte(i*31 + i>>8) }

// serverMain is the child's main; it returns the exit status.
func serverMain() int {
	if p := os.Getenv(cpuProfileEnv); p != "" {
		return profiled(p, serve)
	}
	return serve()
}

func serve() int {
	mode := os.Getenv(serverEnv)
	var listen func(addr string) (net.Listener, error)
	switch mode {
	case "usnet", "usnet-uds":
		usnet.Default.NoSHM = mode == "usnet-uds"
		// After a restart of usnetd: the e2e tests wait for this line.
		usnet.Default.Reattached = func(err error) { fmt.Fprintf(os.Stderr, "%s (%v)\n", serverReattached, err) }
		listen = func(addr string) (net.Listener, error) { return usnet.Listen("tcp", addr) }
	case "packet":
		cfg := &usnet.Config{Attach: func(string) (usnet.Attacher, error) { return newPacketNIC(os.Getenv("USNET_INTERFACE")) }}
		listen = func(addr string) (net.Listener, error) { return cfg.Listen("tcp", addr) }
	case "kernel":
		listen = func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	default:
		fmt.Fprintf(os.Stderr, "e2e server: %s=%q: want usnet, usnet-uds, packet or kernel\n", serverEnv, mode)
		return 2
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	if p := os.Getenv(httpPortEnv); p != "" {
		ln, err := listen(":" + p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e server: HTTP: %v\n", err)
			return 1
		}
		lns = append(lns, ln)
		h := e2eHandler(mode)
		if u := os.Getenv(proxyURLEnv); u != "" && mode == "usnet" {
			h = proxyHandler(h, u)
		}
		go (&http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	}
	if p := os.Getenv(sinkPortEnv); p != "" {
		ln, err := listen(":" + p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e server: sink: %v\n", err)
			return 1
		}
		lns = append(lns, ln)
		go serveSink(ln)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Fprintln(os.Stderr, serverReady)
	<-ctx.Done()
	return 0
}

// proxyHandler serves /proxy by fetching url through the usnet stack, on
// an outgoing keep-alive connection: it answers "reused=BOOL" and the body
// it got (reused: the request went over the connection of an earlier one).
// Every other path goes to h.
func proxyHandler(h http.Handler, url string) http.Handler {
	tr := &http.Transport{DialContext: usnet.DialContext, MaxIdleConnsPerHost: 1}
	cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/proxy" {
			h.ServeHTTP(w, r)
			return
		}
		reused := false
		ctx := httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		})
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := cl.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("X-Stack", "usnet")
		fmt.Fprintf(w, "reused=%v %s", reused, body)
	})
}

// serveSink reads each connection to its end and answers with the byte
// count (8 bytes, big endian), then closes it.
func serveSink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(n))
			c.Write(b[:])
		}()
	}
}

// sendToSink connects from ns to the sink at addr, sends size bytes and
// waits for the sink's count; it returns the goodput in bit/s, measured
// from the first byte written to the count read.
func sendToSink(dial func() (net.Conn, error), size int64, timeout time.Duration) (float64, error) {
	c, err := dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 128<<10)
	start := time.Now()
	for left := size; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return 0, fmt.Errorf("after %d bytes: %w", size-left, err)
		}
		left -= k
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, fmt.Errorf("no count from the sink: %w", err)
	}
	el := time.Since(start)
	if got := int64(binary.BigEndian.Uint64(b[:])); got != size {
		return 0, fmt.Errorf("the sink got %d bytes, want %d", got, size)
	}
	return float64(size) * 8 / el.Seconds(), nil
}

// server is a running child.
type server struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  strings.Builder
	done chan error
}

func (s *server) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// startServer runs the child in the host namespace with mode and env and
// waits until it is ready; t.Cleanup stops it.
func (l *e2eLab) startServer(mode string, env ...string) *server {
	t := l.T
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append([]string{serverEnv + "=" + mode, "PATH=" + os.Getenv("PATH"), "GORACE=atexit_sleep_ms=0",
		"USNET_INTERFACE=" + l.Ifname, "USNET_SOCKET=" + l.Sock, "XDG_RUNTIME_DIR=" + t.TempDir()}, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, done: make(chan error, 1)}
	if err := l.Host.Start(cmd); err != nil {
		t.Fatal(err)
	}
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			if sc.Text() == serverReady {
				once.Do(func() { close(up) })
			}
		}
		s.done <- cmd.Wait()
	}()
	t.Cleanup(func() { s.stop(t) })
	select {
	case <-up:
	case err := <-s.done:
		t.Fatalf("%s server exited before it was ready: %v\n%s", mode, err, s.logText())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s server not ready after 30 s:\n%s", mode, s.logText())
	}
	return s
}

// stop sends SIGTERM and waits for a clean exit (it is idempotent).
func (s *server) stop(t testing.TB) {
	t.Helper()
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("server exit after SIGTERM: %v\n%s", err, s.logText())
		}
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Errorf("server did not stop after SIGTERM:\n%s", s.logText())
	}
}

// packetNIC is the usnet.Attacher of mode "packet": its one channel is
// an AF_PACKET socket on the NIC itself, so the stack's link endpoint
// reads and writes the NIC's frames directly (recvmmsg, sendmmsg), with no
// bridge and no usnetd in between. No rules: the host kernel has no
// address there, so nobody else answers the stack's traffic.
type packetNIC struct{ f *os.File }

func newPacketNIC(ifname string) (usnet.Attacher, error) {
	nic, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	all := netorder.Htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(all))
	if err != nil {
		return nil, err
	}
	// What the stack sends is not for it.
	err = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: all, Ifindex: nic.Index})
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("AF_PACKET on %s: %w", ifname, err)
	}
	return &packetNIC{f: os.NewFile(uintptr(fd), "packet-nic")}, nil
}

func (p *packetNIC) RequestUDS(string) (*os.File, error) {
	if p.f == nil {
		return nil, errors.New("packet: one channel only")
	}
	f := p.f
	p.f = nil
	return f, nil
}
func (p *packetNIC) AddMatch(wire.Match) error                    { return nil }
func (p *packetNIC) RemoveMatch(wire.Match) error                 { return nil }
func (p *packetNIC) QueryPortsInUse(uint8) (*wire.PortSet, error) { return new(wire.PortSet), nil }
func (p *packetNIC) Close() error                                 { return nil }
