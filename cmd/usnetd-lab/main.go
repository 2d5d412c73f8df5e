package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/usnetdcmd"
	"github.com/usnetd/usnetd/usnet"
)

// The lab binary is three programs: the demo itself, usnetd (the same
// daemon as cmd/usnetd, through internal/usnetdcmd) and the usnet HTTP
// server. The demo re-executes itself with roleEnv set to start the other
// two inside the host namespace, so that `go run` is all it takes.
const (
	roleEnv = "USNETD_LAB_ROLE" // "usnetd" or "usnet-http"
	portEnv = "USNETD_LAB_PORT" // the usnet HTTP server's port

	usnetPort   = 8080 // the usnet HTTP server
	kernelPort  = 8081 // the kernel's HTTP server, opened with DEBUG_PORTS
	closedPort  = 8082 // a kernel HTTP server that usnetd keeps closed
	metricsAddr = e2e.MetricsAddr

	labPrefix = "ulab" // netlab prefix: namespaces ulabXXXXXX-host, ulabXXXXXX-remote
)

// Timeouts. None of them is a performance claim: they tell an answer from
// none, and bound a hang.
const (
	answerTimeout  = 5 * time.Second  // an HTTP request that must succeed
	silenceTimeout = 2 * time.Second  // a connection attempt that must get no answer
	startTimeout   = 30 * time.Second // usnetd or the usnet server coming up
	stopTimeout    = 30 * time.Second // usnetd's clean stop
)

func main() {
	switch role := os.Getenv(roleEnv); role {
	case "":
	case "usnetd":
		os.Exit(usnetdcmd.Run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr, usnetdcmd.Serve))
	case "usnet-http":
		os.Exit(serveUsnet(os.Stderr))
	default:
		fmt.Fprintf(os.Stderr, "usnetd-lab: unknown %s=%q\n", roleEnv, role)
		os.Exit(2)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: usnetd-lab [--keep] [-e KEY=VALUE]...

Builds a throwaway network-namespace lab, runs usnetd in it with an HTTP
server on a userspace stack (usnet) and one on the kernel, on the same IP,
checks from a remote namespace what gets through, prints what happened and
removes everything again. Needs root.

  --keep         leave the lab running after the checks, print how to
                 explore it, and tear it down on Ctrl-C
  -e KEY=VALUE   an extra setting for usnetd (e.g. -e XDP_MODE=generic,
                 -e LOG_LEVEL=debug); repeatable

Exit status: 0 every check passed, 1 a check or the teardown failed,
2 usage error, 130 interrupted before the checks were done.
`

type envList []string

func (e *envList) String() string { return strings.Join(*e, ",") }
func (e *envList) Set(s string) error {
	if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	*e = append(*e, s)
	return nil
}

// run is the demo with its arguments (without the program name); it
// returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("usnetd-lab", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	keep := fs.Bool("keep", false, "")
	var extra envList
	fs.Var(&extra, "e", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "usnetd-lab: %v\n%s", err, usage)
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "usnetd-lab: unexpected argument %q\n%s", fs.Arg(0), usage)
		return 2
	}
	if err := netlab.Supported(); err != nil {
		fmt.Fprintf(stderr, "usnetd-lab: cannot build a lab here: %v (try: sudo go run ./cmd/usnetd-lab)\n", err)
		return 1
	}

	// The first SIGINT or SIGTERM cancels ctx: the checks stop and the
	// teardown runs. Later ones are caught too, so that a second Ctrl-C
	// cannot leave the lab half removed.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		first := true
		for range sigs {
			if first {
				fmt.Fprintln(stderr, "\nusnetd-lab: tearing down")
				cancel()
				first = false
			} else {
				fmt.Fprintln(stderr, "usnetd-lab: still tearing down, please wait")
			}
		}
	}()

	d := &demo{out: stdout, errw: stderr, extraEnv: extra}
	ok := d.checks(ctx)
	if d.usnetd != nil && ctx.Err() == nil {
		d.printCounters(ctx)
	}
	if *keep && ctx.Err() == nil && d.usnetSrv != nil {
		d.explain()
		<-ctx.Done()
		fmt.Fprintln(stdout)
		// Ctrl-C is how --keep ends: not an interruption of the checks.
	}
	interrupted := ctx.Err() != nil && !*keep
	terr := d.teardown()
	switch {
	case terr != nil:
		fmt.Fprintf(stderr, "usnetd-lab: FAILED: teardown: %v\n", terr)
		return 1
	case !ok && interrupted:
		fmt.Fprintln(stderr, "usnetd-lab: interrupted; everything removed")
		return 130
	case !ok:
		fmt.Fprintf(stderr, "usnetd-lab: FAILED: %s\n", d.firstFailure())
		fmt.Fprintln(stderr, "usnetd-lab: everything removed")
		return 1
	}
	fmt.Fprintln(stdout, "usnetd-lab: all checks passed; lab, processes and files removed")
	return 0
}

// A step is one row of the table.
type step struct {
	name, expected, got string
	ok                  bool
}

// demo is one run: the lab, its processes and files, and what happened.
type demo struct {
	out, errw io.Writer
	extraEnv  []string

	tmp              string // the control socket, logs, PCAP_LOG
	lab              *netlab.Lab
	host, remote     *netlab.NS
	ifname           string
	hostIP, remoteIP netip.Addr
	kernelSrv        []*http.Server
	usnetd, usnetSrv *child
	backend          string // how usnetd claimed the NIC, from its log

	steps []step
}

func (d *demo) sock() string      { return filepath.Join(d.tmp, "usnetd.socket") }
func (d *demo) pcapFile() string  { return filepath.Join(d.tmp, "usnetd.pcap") }
func (d *demo) usnetdLog() string { return filepath.Join(d.tmp, "usnetd.log") }
func (d *demo) usnetLog() string  { return filepath.Join(d.tmp, "usnet-http.log") }
func (d *demo) url(port int) string {
	return "http://" + netip.AddrPortFrom(d.hostIP, uint16(port)).String() + "/"
}

// record adds a row; it returns ok.
func (d *demo) record(name, expected, got string, ok bool) bool {
	d.steps = append(d.steps, step{name, expected, got, ok})
	return ok
}

func (d *demo) firstFailure() string {
	for _, s := range d.steps {
		if !s.ok {
			return fmt.Sprintf("%s: expected %s, got %s", s.name, s.expected, s.got)
		}
	}
	return "interrupted"
}

// checks builds the lab, starts the processes and runs the checks from
// the remote namespace, printing the table; it returns whether every
// check passed. What it made is recorded in d for teardown, also when it
// fails half-way.
func (d *demo) checks(ctx context.Context) bool {
	defer d.printTable()
	if !d.setup(ctx) {
		return false
	}
	ok := true
	// 1. the userspace stack's port, through usnetd
	code, body, err := d.get(ctx, d.url(usnetPort), answerTimeout)
	ok = d.record("remote: GET "+d.url(usnetPort), "200 from usnet",
		describe(code, body, err), err == nil && code == 200 && strings.Contains(body, "from usnet")) && ok
	// 2. the kernel's DEBUG_PORTS port, same IP
	code, body, err = d.get(ctx, d.url(kernelPort), answerTimeout)
	ok = d.record("remote: GET "+d.url(kernelPort), "200 from the kernel (DEBUG_PORTS)",
		describe(code, body, err), err == nil && code == 200 && strings.Contains(body, "from the kernel")) && ok
	// 3. a kernel port that is not opened: no answer, not even a RST
	code, body, err = d.get(ctx, d.url(closedPort), silenceTimeout)
	ok = d.record("remote: GET "+d.url(closedPort), "no answer: filtered (timeout, no RST)",
		describe(code, body, err), errors.Is(err, errTimeout)) && ok
	return ok && ctx.Err() == nil
}

// setup builds the lab and starts usnetd, the kernel's servers and the
// usnet server, one table row each.
func (d *demo) setup(ctx context.Context) bool {
	tmp, err := os.MkdirTemp("", "usnetd-lab-")
	if err != nil {
		return d.record("files", "a temporary directory", err.Error(), false)
	}
	d.tmp = tmp

	if err := d.buildLab(); err != nil {
		return d.record("lab: namespaces, veth, addresses", "built", err.Error(), false)
	}
	d.record("lab: namespaces, veth, addresses", "built",
		fmt.Sprintf("%s (%s on %s), %s (%s on eth0)", d.host.Name(), d.hostIP, d.ifname, d.remote.Name(), d.remoteIP), true)
	if ctx.Err() != nil {
		return false
	}

	// The kernel's two HTTP servers in the host namespace, on the host's
	// IP. Both answer inside the host namespace (over loopback, past
	// usnetd), so that "no answer" from the remote means usnetd's doing.
	name := fmt.Sprintf("kernel HTTP servers on :%d and :%d", kernelPort, closedPort)
	var got []string
	for _, p := range []struct {
		port int
		msg  string
	}{
		{kernelPort, "from the kernel's TCP/IP stack, on a port opened with DEBUG_PORTS"},
		{closedPort, "from the kernel, on a port usnetd keeps closed: you should never see this"},
	} {
		ln, err := d.host.Listen("tcp", netip.AddrPortFrom(d.hostIP, uint16(p.port)).String())
		if err != nil {
			return d.record(name, "both answer in the host namespace", err.Error(), false)
		}
		srv := &http.Server{Handler: hello(p.msg), ReadHeaderTimeout: answerTimeout}
		d.kernelSrv = append(d.kernelSrv, srv)
		go func() { _ = srv.Serve(ln) }()
		code, body, err := getFrom(ctx, d.host, d.url(p.port), answerTimeout)
		if err != nil || code != 200 {
			return d.record(name, "both answer in the host namespace", describe(code, body, err), false)
		}
		got = append(got, fmt.Sprintf(":%d %d", p.port, code))
	}
	d.record(name, "both answer in the host namespace", strings.Join(got, ", "), true)

	start := time.Now()
	env := []string{roleEnv + "=usnetd", "PATH=" + os.Getenv("PATH"),
		"INTERFACES=" + d.ifname,
		fmt.Sprintf("DEBUG_PORTS=%s:TCP:%d", d.ifname, kernelPort),
		"SOCKET_PATH=" + d.sock(), "METRICS_ADDR=" + metricsAddr,
		"LOG_FORMAT=json", "PCAP_LOG=" + d.pcapFile()}
	d.usnetd, err = startChild(ctx, d.host, "usnetd", append(env, d.extraEnv...), `"message":"usnetd is up"`, d.usnetdLog())
	name = "usnetd claims " + d.ifname + " in the host namespace"
	if err != nil {
		return d.record(name, `"usnetd is up"`, err.Error(), false)
	}
	d.backend = d.usnetd.field(`"message":"interface claimed"`, "backend")
	d.record(name, `"usnetd is up"`, fmt.Sprintf("up after %.1fs: %s", time.Since(start).Seconds(), d.backend), true)

	env = []string{roleEnv + "=usnet-http", "PATH=" + os.Getenv("PATH"),
		portEnv + "=" + strconv.Itoa(usnetPort),
		"USNET_INTERFACE=" + d.ifname, "USNET_SOCKET=" + d.sock(),
		// The client's socket file (where usnetd answers) goes here too.
		"XDG_RUNTIME_DIR=" + d.tmp, "TMPDIR=" + d.tmp}
	d.usnetSrv, err = startChild(ctx, d.host, "usnet HTTP server", env, "usnet-http: listening on", d.usnetLog())
	name = "usnet HTTP server attaches to usnetd"
	if err != nil {
		return d.record(name, "listening on :"+strconv.Itoa(usnetPort), err.Error(), false)
	}
	want := fmt.Sprintf("rule tcp %s", netip.AddrPortFrom(d.hostIP, usnetPort))
	ep, err := d.endpointOf(d.usnetSrv.cmd.Process.Pid)
	if err != nil {
		return d.record(name, want, err.Error(), false)
	}
	for _, m := range ep.Rules {
		if m.String() == want[len("rule "):] {
			return d.record(name, want, fmt.Sprintf("endpoint %d (pid %d) has it", ep.ID, ep.PID), true) && ctx.Err() == nil
		}
	}
	return d.record(name, want, fmt.Sprintf("endpoint %d has rules %v", ep.ID, ep.Rules), false)
}

func (d *demo) buildLab() error {
	// The pin directory (/sys/fs/bpf/usnetd/IFNAME) is named after the
	// interface: the lab's unique name keeps it apart from any other.
	p, err := netlab.NewPair(nil, netlab.PairOpts{Prefix: labPrefix, PeerNS: "remote", UniqueHostLink: true})
	if err != nil {
		return err
	}
	d.lab = p.Lab
	d.host, d.remote, d.ifname = p.Host, p.Peer, p.HostLink
	d.hostIP, d.remoteIP = p.HostIP, p.PeerIP
	// The remote computes its TCP checksums itself: a veth leaves them to
	// the receiver (CHECKSUM_PARTIAL), and the userspace stack, which sees
	// the raw frame, drops such segments. A real wire carries complete
	// checksums.
	return d.remote.TxChecksumOff("eth0")
}

// hello answers every request with one line naming who answers.
func hello(who string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s (pid %d)\n", r.RemoteAddr, who, os.Getpid())
	})
}

var (
	errTimeout = errors.New("no answer (timeout)")
	errRefused = errors.New("connection refused (RST)")
)

// endpointOf asks usnetd for the endpoint of process pid.
func (d *demo) endpointOf(pid int) (wire.EndpointStatus, error) {
	st, err := d.status()
	if err != nil {
		return wire.EndpointStatus{}, err
	}
	for _, e := range st.Endpoints {
		if int(e.PID) == pid {
			return e, nil
		}
	}
	return wire.EndpointStatus{}, fmt.Errorf("usnetd has no endpoint of pid %d", pid)
}

// status is what `usnetctl status --json` shows, through the control
// socket (the client's socket file is in d.tmp).
func (d *demo) status() (wire.Status, error) {
	c, err := client.Dial(client.Options{SocketPath: d.sock(), Dir: d.tmp})
	if err != nil {
		return wire.Status{}, err
	}
	defer c.Close()
	return c.QueryStatus()
}

// get fetches url from the remote namespace with curl, or with Go's client
// where there is no curl, within timeout. A connection attempt that gets no
// answer at all is errTimeout, one refused with a RST errRefused.
func (d *demo) get(ctx context.Context, url string, timeout time.Duration) (int, string, error) {
	if _, err := exec.LookPath("curl"); err == nil {
		secs := strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64)
		cmd := d.remote.Command(ctx, "curl", "-sS", "--connect-timeout", secs, "--max-time", secs,
			"-w", "\n%{http_code}", url)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		var ee *exec.ExitError
		switch {
		case ctx.Err() != nil:
			return 0, "", errors.New("interrupted")
		case errors.As(err, &ee) && ee.ExitCode() == 28:
			return 0, "", fmt.Errorf("%w: %s", errTimeout, strings.TrimSpace(stderr.String()))
		case errors.As(err, &ee) && ee.ExitCode() == 7:
			return 0, "", fmt.Errorf("%w: %s", errRefused, strings.TrimSpace(stderr.String()))
		case err != nil:
			return 0, "", fmt.Errorf("curl: %v: %s", err, strings.TrimSpace(stderr.String()))
		}
		s := string(out)
		i := strings.LastIndexByte(s, '\n')
		code, _ := strconv.Atoi(s[i+1:])
		return code, s[:max(i, 0)], nil
	}
	return getFrom(ctx, d.remote, url, timeout)
}

// getFrom fetches url with Go's client from inside ns.
func getFrom(ctx context.Context, ns *netlab.NS, url string, timeout time.Duration) (int, string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return ns.Dial(ctx, network, addr)
	}}
	c := &http.Client{Transport: tr, Timeout: timeout}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return 0, "", fmt.Errorf("%w: %v", errRefused, err)
	case errors.As(err, &ne) && ne.Timeout():
		return 0, "", fmt.Errorf("%w: %v", errTimeout, err)
	case err != nil:
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// describe puts an HTTP result into the table's GOT column.
func describe(code int, body string, err error) string {
	if err != nil {
		return err.Error()
	}
	body = strings.TrimSpace(body)
	if len(body) > 60 {
		body = body[:57] + "..."
	}
	return fmt.Sprintf("%d %q", code, body)
}

func (d *demo) printTable() {
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tEXPECTED\tGOT\tOK")
	for _, s := range d.steps {
		ok := "ok"
		if !s.ok {
			ok = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.name, s.expected, s.got, ok)
	}
	tw.Flush()
	fmt.Fprintln(d.out)
}

// printCounters shows what usnetctl status --json and the metrics say.
func (d *demo) printCounters(ctx context.Context) {
	fmt.Fprintf(d.out, "Counters (usnetctl status --json; /metrics inside %s):\n", d.host.Name())
	st, err := d.status()
	if err != nil {
		fmt.Fprintf(d.out, "  control socket: %v\n", err)
	}
	for _, in := range st.Interfaces {
		fmt.Fprintf(d.out, "  usnetd %s on %s: %s\n", st.Version, in.Name, in.Backend)
	}
	for _, e := range st.Endpoints {
		var rules []string
		for _, m := range e.Rules {
			rules = append(rules, m.String())
		}
		fmt.Fprintf(d.out, "  endpoint %d, pid %d: rules %s; %d frames delivered, %d sent, %d dropped\n",
			e.ID, e.PID, strings.Join(rules, ", "), e.RxPackets, e.TxPackets, e.Drops)
	}
	m, err := d.scrape(ctx)
	if err != nil {
		fmt.Fprintf(d.out, "  metrics: %v\n\n", err)
		return
	}
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PORT\tKIND\tFRAMES IN\tFRAMES OUT")
	for _, s := range m {
		if s.Name == "usnetd_port_rx_packets_total" {
			tx := find(m, "usnetd_port_tx_packets_total", s.Labels)
			fmt.Fprintf(tw, "  %s\t%s\t%.0f\t%.0f\n", s.Labels["port"], s.Labels["kind"], s.Value, tx)
		}
	}
	tw.Flush()
	fmt.Fprintln(d.out, "  (the kernel's own frames never enter usnetd: the XDP classifier passes them to it)")
	for _, s := range m {
		if s.Name == "usnetd_drops_total" && s.Value > 0 {
			what := ""
			if s.Labels["reason"] == "no_match" {
				what = " (frames no rule claims: the firewall at work)"
			}
			fmt.Fprintf(d.out, "  dropped, %s: %.0f%s\n", s.Labels["reason"], s.Value, what)
		}
	}
	fmt.Fprintln(d.out)
}

func find(m []e2e.Sample, name string, labels map[string]string) float64 {
	for _, s := range m {
		if s.Name == name && s.Labels["port_id"] == labels["port_id"] && s.Labels["interface"] == labels["interface"] {
			return s.Value
		}
	}
	return 0
}

// scrape reads usnetd's metrics from inside the host namespace.
func (d *demo) scrape(ctx context.Context) ([]e2e.Sample, error) {
	m, err := e2e.ScrapeIn(ctx, d.host, metricsAddr, answerTimeout)
	if err != nil {
		return nil, err
	}
	return e2e.ParseMetrics(strings.NewReader(m))
}

// explain prints how to explore the lab that --keep leaves running.
func (d *demo) explain() {
	self := "go run ./cmd/usnetctl"
	if p, err := exec.LookPath("usnetctl"); err == nil {
		self = p
	}
	r, h := d.remote.Name(), d.host.Name()
	fmt.Fprintf(d.out, `The lab stays up until Ctrl-C. In another shell, as root:

  ip netns exec %[1]s curl %[3]s        # usnet (userspace stack)
  ip netns exec %[1]s curl %[4]s        # the kernel (DEBUG_PORTS)
  ip netns exec %[1]s curl --connect-timeout 2 %[5]s   # filtered
  ip netns exec %[1]s nmap -sS -n -Pn -p 8075-8090 %[6]s
  ip netns exec %[2]s %[7]s --socket %[8]s status
  ip netns exec %[2]s %[7]s --socket %[8]s rules
  ip netns exec %[2]s curl -s http://%[9]s/metrics | grep '^usnetd_'
  tcpdump -nn -r %[10]s                 # every frame and its verdict (PCAP_LOG)
  less %[11]s                           # usnetd's log (JSON lines)

namespaces: %[2]s (usnetd on %[12]s, the kernel and usnet on %[6]s)
            %[1]s (the peer, %[13]s on eth0)
processes:  usnetd pid %[14]d, usnet HTTP server pid %[15]d
files:      %[16]s (removed on exit)
(usnetctl runs inside the host namespace: usnetd answers a client in its own network namespace.)

`, r, h, d.url(usnetPort), d.url(kernelPort), d.url(closedPort), d.hostIP, self, d.sock(), metricsAddr,
		d.pcapFile(), d.usnetdLog(), d.ifname, d.remoteIP, d.usnetd.cmd.Process.Pid, d.usnetSrv.cmd.Process.Pid, d.tmp)
}

// teardown removes everything, in reverse order of creation, and checks
// that nothing is left. It is safe after a partial setup.
func (d *demo) teardown() error {
	var errs []error
	if d.usnetSrv != nil {
		if err := d.usnetSrv.stop(5 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("usnet HTTP server: %w", err))
		}
	}
	for _, srv := range d.kernelSrv {
		_ = srv.Close()
	}
	if d.usnetd != nil {
		if err := d.usnetd.stop(stopTimeout); err != nil {
			errs = append(errs, fmt.Errorf("usnetd: %w (log: %s)", err, d.usnetd.tail(5)))
		}
		if _, err := os.Stat(filepath.Join("/sys/fs/bpf/usnetd", d.ifname)); !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("usnetd left its pin directory /sys/fs/bpf/usnetd/%s", d.ifname))
		}
	}
	if d.ifname != "" {
		// A usnetd whose start failed leaves its firewall pinned (fail
		// closed): the lab's goes with the lab.
		_ = os.RemoveAll(filepath.Join("/sys/fs/bpf/usnetd", d.ifname))
	}
	if d.lab != nil {
		if err := d.lab.Close(); err != nil {
			errs = append(errs, err)
		}
		for _, ns := range d.lab.Namespaces() {
			if _, err := os.Stat(ns.Path()); !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("namespace %s left", ns.Name()))
			}
		}
	}
	if d.tmp != "" {
		if err := os.RemoveAll(d.tmp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// child is a process the demo started inside a namespace: usnetd or the
// usnet server, both this binary in another role.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process is reaped
	err  error         // Wait's, after done

	mu    sync.Mutex
	lines []string // its output, also written to its log file
}

// startChild starts this binary inside ns with env (nothing else of the
// caller's environment) and waits until a line of its output contains
// ready. Its output goes to logPath as well.
func startChild(ctx context.Context, ns *netlab.NS, name string, env []string, ready, logPath string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: Ctrl-C reaches the demo only, which then
		// stops the children in order.
		Setpgid: true,
		// Should the demo die without its teardown (SIGKILL), usnetd still
		// gets to give the NIC back and remove its pins; the namespaces
		// are swept by the next run (netlab.Sweep).
		Pdeathsig: syscall.SIGTERM,
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := ns.Start(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	up := make(chan struct{})
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			c.mu.Lock()
			c.lines = append(c.lines, line)
			c.mu.Unlock()
			if strings.Contains(line, ready) {
				once.Do(func() { close(up) })
			}
		}
		c.err = cmd.Wait()
		logf.Close()
	}()
	select {
	case <-up:
		return c, nil
	case <-c.done:
		return c, fmt.Errorf("%s exited before it was up (%v): %s", name, c.err, c.tail(3))
	case <-ctx.Done():
		return c, fmt.Errorf("interrupted while %s was starting", name)
	case <-time.After(startTimeout):
		return c, fmt.Errorf("%s not up after %v: %s", name, startTimeout, c.tail(3))
	}
}

// field returns a JSON field of the first output line that contains marker.
func (c *child) field(marker, key string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.Contains(l, marker) {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil {
				if v, ok := m[key].(string); ok {
					return v
				}
			}
		}
	}
	return "?"
}

// tail returns the last n lines of output, on one line.
func (c *child) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lines[max(0, len(c.lines)-n):]
	if len(l) == 0 {
		return "(no output)"
	}
	return strings.Join(l, " | ")
}

// stop sends SIGTERM and waits up to grace for a clean exit, then kills.
// An exit other than 0 after SIGTERM is an error.
func (c *child) stop(grace time.Duration) error {
	select {
	case <-c.done:
		if c.err != nil {
			return fmt.Errorf("had exited: %v", c.err)
		}
		return nil
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		// Killed by the SIGTERM itself: it came before the child set up
		// its handler, so before usnetd claimed anything (the teardown
		// still checks for pins).
		if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
		if c.err != nil {
			return fmt.Errorf("exit after SIGTERM: %v", c.err)
		}
		return nil
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("did not stop within %v of SIGTERM; killed", grace)
	}
}

// serveUsnet is the usnet role: an HTTP server on usnet's userspace stack,
// attached to usnetd through the control socket (USNET_INTERFACE,
// USNET_SOCKET), on the NIC's own IP and MAC, until SIGTERM.
func serveUsnet(stderr io.Writer) int {
	port := os.Getenv(portEnv)
	ln, err := usnet.Listen("tcp", ":"+port)
	if err != nil {
		fmt.Fprintf(stderr, "usnet-http: %v\n", err)
		return 1
	}
	srv := &http.Server{Handler: hello("from usnet, a userspace TCP/IP stack (gVisor)"), ReadHeaderTimeout: answerTimeout}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	fmt.Fprintf(stderr, "usnet-http: listening on %s\n", ln.Addr())
	select {
	case <-ctx.Done():
	case err := <-done:
		fmt.Fprintf(stderr, "usnet-http: %v\n", err)
		return 1
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	fmt.Fprintln(stderr, "usnet-http: stopped")
	return 0
}
