package main

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/internal/netlab"
)

// End-to-end tests with real peer programs (curl, iperf3, nmap, tcpdump)
// against a usnet server: a child process in the host namespace whose
// userspace stack attaches to the real usnetd through the control socket
// and shares the host's IP and MAC with the kernel. Timeouts only tell an
// answer from none or bound a hang; no speed is asserted.

// newPeerLab is an e2eLab whose peer computes its TCP and UDP checksums in
// software: a veth leaves them to the receiver (CHECKSUM_PARTIAL), and a
// userspace stack behind AF_XDP, which sees the raw frame, drops such
// segments. A real wire always carries complete checksums.
func newPeerLab(t testing.TB) *e2eLab {
	t.Helper()
	l := newE2ELab(t, 1)
	if err := l.Peer.TxChecksumOff("eth0"); err != nil {
		t.Fatal(err)
	}
	return l
}

// serveKernelHTTP serves e2eHandler("kernel") on the host kernel at addr
// until the test ends.
func serveKernelHTTP(t testing.TB, ns *netlab.NS, addr string) {
	t.Helper()
	ln, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: e2eHandler("kernel"), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// TestE2EPeersHTTP: curl in the peer fetches from the usnet server and
// from the kernel's DEBUG_PORTS server on the same IP; a kernel port that
// is not opened gets no answer; PCAP_LOG, read by tcpdump, holds the usnet
// connection in both directions, its answers from the host's own MAC.
func TestE2EPeersHTTP(t *testing.T) {
	netlab.RequireTool(t, "curl", "curl")
	netlab.RequireTool(t, "tcpdump", "tcpdump")
	l := newPeerLab(t)
	h := l.HostIP.String()
	serveKernelHTTP(t, l.Host, h+":8081") // DEBUG_PORTS
	serveKernelHTTP(t, l.Host, h+":8082") // not opened
	pcapFile := filepath.Join(t.TempDir(), "usnetd.pcap")
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8081", l.Ifname), "PCAP_LOG="+pcapFile)
	srv := l.startServer("usnet", httpPortEnv+"=8080")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for _, tc := range []struct {
		port  int
		stack string
	}{{8080, "usnet"}, {8081, "kernel"}, {8080, "usnet"}} {
		url := fmt.Sprintf("http://%s:%d/", h, tc.port)
		out, err := l.Peer.Command(ctx, "curl", "-sS", "-i", "--max-time", "10", url).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %s from the peer: %v\n%s\nusnetd:\n%s\nserver:\n%s", url, err, out, u.LogText(), srv.logText())
		}
		for _, want := range []string{"HTTP/1.1 200 OK", "X-Stack: " + tc.stack, "hello, world"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("curl %s: no %q in\n%s", url, want, out)
			}
		}
	}
	// usnet took a shared-memory channel (the default).
	if c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()}); err != nil {
		t.Error(err)
	} else {
		st, err := c.QueryStatus()
		c.Close()
		if err != nil || len(st.Endpoints) != 1 || strings.Join(st.Endpoints[0].ChannelKinds, ",") != "shm" {
			t.Errorf("the usnet server's channels: %+v, %v; want one endpoint on shm", st.Endpoints, err)
		}
	}
	out, err := l.Peer.Command(ctx, "curl", "-sS", "--connect-timeout", "1", fmt.Sprintf("http://%s:8082/", h)).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 28 {
		t.Errorf("curl to the kernel port that is not opened: %v (want exit 28, a timeout; 7 would be a RST)\n%s", err, out)
	}

	srv.stop(t)
	u.Stop(t)
	l.CheckNothingLeft()

	lk, err := l.Host.Link(l.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	mac := lk.Attrs().HardwareAddr.String()
	out, err = exec.Command("tcpdump", "-nn", "-e", "-r", pcapFile, "tcp port 8080").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	var syn, synack, fromHost, toHost int
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.Contains(line, " > "+h+".8080:"):
			toHost++
			if strings.Contains(line, "Flags [S],") {
				syn++
			}
		case strings.Contains(line, h+".8080 > "):
			fromHost++
			if strings.Contains(line, "Flags [S.],") {
				synack++
			}
			if f := strings.Fields(line); len(f) < 2 || f[1] != mac { // tcpdump -e: TIME SRCMAC > DSTMAC, ...
				t.Errorf("a usnet frame not from the host's MAC %s: %s", mac, line)
			}
		}
	}
	// Two connections: at least SYN, ACK, request, ACK of the answer, FIN
	// to the host and SYN-ACK, answer, FIN from it.
	if syn < 2 || synack < 2 || toHost < 8 || fromHost < 6 {
		t.Errorf("PCAP_LOG: %d SYN, %d SYN-ACK, %d frames to and %d from %s:8080; want at least 2, 2, 8, 6:\n%s",
			syn, synack, toHost, fromHost, h, out)
	}
}

// waitListening waits until a TCP socket listens on port inside ns (for
// servers such as iperf3 -s that do not say when they are ready).
func waitListening(t testing.TB, ns *netlab.NS, port int) {
	t.Helper()
	want := fmt.Sprintf(":%04X 00000000:0000 0A", port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var found bool
		err := ns.Do(func() error {
			b, err := os.ReadFile("/proc/thread-self/net/tcp")
			found = strings.Contains(string(b), want)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if found {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on TCP port %d in %s", port, ns)
}

// startIperf3Server runs iperf3 -s on the host kernel at port until the
// test ends.
func startIperf3Server(t testing.TB, l *e2eLab, port int) {
	t.Helper()
	srv := l.Host.Command(context.Background(), "iperf3", "-s", "-B", l.HostIP.String(), "-p", strconv.Itoa(port))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	waitListening(t, l.Host, port)
}

// iperf3Client runs iperf3 -c from the peer with args and returns the
// bytes the client sent and the receiver's bit/s.
func iperf3Client(t testing.TB, l *e2eLab, port int, args ...string) (sent, bps float64) {
	t.Helper()
	args = append([]string{"-c", l.HostIP.String(), "-p", strconv.Itoa(port), "-J"}, args...)
	out, err := l.Peer.Command(context.Background(), "iperf3", args...).Output()
	if err != nil {
		t.Fatalf("iperf3 %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var res struct {
		End struct {
			SumSent struct {
				Bytes float64 `json:"bytes"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("iperf3 -J output: %v\n%s", err, out)
	}
	if res.End.SumReceived.Bytes <= 0 {
		t.Fatalf("iperf3: the server received nothing:\n%s", out)
	}
	return res.End.SumSent.Bytes, res.End.SumReceived.BitsPerSecond
}

// peerDialer dials addr from the peer namespace.
func (l *e2eLab) peerDialer(addr string) func() (net.Conn, error) {
	return func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return l.Peer.Dial(ctx, "tcp", addr)
	}
}

// TestE2EPeersIperf: iperf3 in the peer sends to the kernel's iperf3
// server through usnetd (DEBUG_PORTS), and a Go TCP sender in the peer to
// the usnet server's sink; every byte arrives. The goodputs are logged,
// not asserted (BenchmarkE2EUsnetTCP measures them).
func TestE2EPeersIperf(t *testing.T) {
	netlab.RequireTool(t, "iperf3", "iperf3")
	l := newPeerLab(t)
	h := l.HostIP.String()
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:5201", l.Ifname))
	startIperf3Server(t, l, 5201)
	srv := l.startServer("usnet", sinkPortEnv+"=5203")

	const size = 32 << 20
	// (iperf3's server stops counting at the client's TEST_END, with data
	// still in flight: its count may be short of what was sent.)
	sent, bps := iperf3Client(t, l, 5201, "-n", strconv.Itoa(size))
	if sent < size {
		t.Errorf("iperf3 to the kernel: the client sent %.0f bytes, want %d", sent, size)
	}
	t.Logf("iperf3 → kernel (DEBUG_PORTS, through usnetd's XDP classifier): %.2f Gbit/s", bps/1e9)

	bps, err := sendToSink(l.peerDialer(h+":5203"), size, time.Minute)
	if err != nil {
		t.Fatalf("Go sender → usnet sink: %v\nusnetd:\n%s\nserver:\n%s", err, u.LogText(), srv.logText())
	}
	t.Logf("Go sender → usnet sink (through usnetd): %.2f Gbit/s", bps/1e9)

	srv.stop(t)
	u.Stop(t)
	l.CheckNothingLeft()
}

// nmapRun is what TestE2EPeersNmap reads of nmap's XML output.
type nmapRun struct {
	Hosts []struct {
		Ports struct {
			Extra []struct {
				State string `xml:"state,attr"`
				Count int    `xml:"count,attr"`
			} `xml:"extraports"`
			Port []struct {
				Protocol string `xml:"protocol,attr"`
				ID       int    `xml:"portid,attr"`
				State    struct {
					State  string `xml:"state,attr"`
					Reason string `xml:"reason,attr"`
				} `xml:"state"`
			} `xml:"port"`
		} `xml:"ports"`
	} `xml:"host"`
}

// TestE2EPeersNmap: a SYN scan from the peer over a range around the
// ports in use finds exactly the usnet server's ports and the kernel's
// DEBUG_PORTS port open; every other port is filtered, the kernel's
// listening port that is not opened included, and none is closed: nothing
// ever answers with a RST.
func TestE2EPeersNmap(t *testing.T) {
	netlab.RequireTool(t, "nmap", "nmap")
	l := newPeerLab(t)
	h := l.HostIP.String()
	serveKernelHTTP(t, l.Host, h+":8081") // DEBUG_PORTS
	serveKernelHTTP(t, l.Host, h+":8082") // not opened
	u := l.Start(fmt.Sprintf("DEBUG_PORTS=%s:TCP:8081", l.Ifname))
	srv := l.startServer("usnet", httpPortEnv+"=8080", sinkPortEnv+"=8083")

	const lo, hi = 8070, 8099
	args := []string{"-sS", "-p", fmt.Sprintf("%d-%d", lo, hi), "-n", "-Pn", "--max-retries", "1", "-oX", "-", h}
	out, err := l.Peer.Command(context.Background(), "nmap", args...).Output()
	if err != nil {
		t.Fatalf("nmap %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var run nmapRun
	if err := xml.Unmarshal(out, &run); err != nil || len(run.Hosts) != 1 {
		t.Fatalf("nmap -oX: %v, %d hosts\n%s", err, len(run.Hosts), out)
	}
	ports := run.Hosts[0].Ports
	var open []int
	total := 0
	for _, p := range ports.Port {
		total++
		switch p.State.State {
		case "open":
			open = append(open, p.ID)
		case "filtered":
		default:
			t.Errorf("port %d/%s is %s (%s), want open or filtered", p.ID, p.Protocol, p.State.State, p.State.Reason)
		}
	}
	for _, e := range ports.Extra {
		total += e.Count
		if e.State != "filtered" {
			t.Errorf("%d ports %s, want filtered", e.Count, e.State)
		}
	}
	slices.Sort(open)
	if want := []int{8080, 8081, 8083}; !slices.Equal(open, want) {
		t.Errorf("open ports %v, want %v (usnet 8080 and 8083, the kernel's DEBUG_PORTS 8081)", open, want)
	}
	if total != hi-lo+1 {
		t.Errorf("nmap reported %d ports, want %d:\n%s", total, hi-lo+1, out)
	}
	if t.Failed() {
		t.Logf("nmap output:\n%s\nusnetd:\n%s\nserver:\n%s", out, u.LogText(), srv.logText())
	}
	srv.stop(t)
	u.Stop(t)
	l.CheckNothingLeft()
}
