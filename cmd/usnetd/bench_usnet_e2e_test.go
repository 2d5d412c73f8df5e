package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
)

// End-to-end benchmarks of the userspace stack through usnetd, each
// variant in one benchmark run (their ratio means something on a shared
// 2-core VM, their absolute numbers do not). The server is always a child
// process in the host namespace (child_e2e_test.go), the same code with
// its sockets from:
//
//	kernel-direct  the host kernel, no usnetd: the baseline
//	kernel-usnetd  the host kernel, behind usnetd (DEBUG_PORTS: the XDP
//	               classifier passes the flow, the TCX learner sees the
//	               answers)
//	usnet-packet   usnet's gVisor stack whose channel is an AF_PACKET
//	               socket on the veth itself: the stack's own link endpoint
//	               (recvmmsg/sendmmsg) on the NIC, no usnetd, no bridge; the
//	               host kernel has no address on the veth (it would answer
//	               the stack's traffic otherwise), but still sees and drops
//	               every frame, which AF_PACKET only copies
//	usnet-usnetd   the same stack attached to usnetd through the control
//	               socket, sharing IP and MAC with the kernel, on a
//	               shared-memory channel (the default)
//	usnet-usnetd-uds  the same on a Unix datagram channel
//
// usnet-packet against usnet-usnetd is what usnetd costs a userspace
// stack (AF_XDP in copy mode, the switch, a socketpair to the stack,
// against one AF_PACKET socket); kernel-direct against usnet-* is what the userspace stack
// costs. The peer's veth computes its checksums in software in every
// variant (a userspace stack needs them, see newPeerLab), so TSO is off
// for the peer everywhere.
//
// USNETD_BENCH_PROFILE_DIR=DIR writes a CPU profile of each variant's
// server (VARIANT-server.pprof) and of usnetd (VARIANT-usnetd.pprof) into
// DIR, for go tool pprof -top.

var benchVariants = []string{"kernel-direct", "kernel-usnetd", "usnet-packet", "usnet-usnetd", "usnet-usnetd-uds"}

// benchSetup is one variant, set up.
type benchSetup struct {
	l      *e2eLab
	server *server
	daemon *e2e.Usnetd // nil without usnetd
}

// benchLab sets up one variant with the server's env.
func benchLab(b *testing.B, variant string, port int, env ...string) *benchSetup {
	l := newPeerLab(b)
	prof := os.Getenv("USNETD_BENCH_PROFILE_DIR")
	name := strings.ReplaceAll(b.Name(), "/", "-")
	var daemonEnv []string
	if prof != "" {
		env = append(env, cpuProfileEnv+"="+filepath.Join(prof, name+"-server.pprof"))
		daemonEnv = append(daemonEnv, daemonProfileEnv+"="+filepath.Join(prof, name+"-usnetd.pprof"))
	}
	s := &benchSetup{l: l}
	startDaemon := func(env ...string) {
		s.daemon = l.Start(append(daemonEnv, append(env, "LOG_LEVEL=info")...)...)
		// A clean stop (after the server's, cleanups run last-in first-out),
		// so that the profile is written.
		b.Cleanup(func() { s.daemon.Stop(b) })
	}
	switch variant {
	case "kernel-direct":
		s.server = l.startServer("kernel", env...)
	case "kernel-usnetd":
		startDaemon(fmt.Sprintf("DEBUG_PORTS=%s:TCP:%d", l.Ifname, port))
		s.server = l.startServer("kernel", env...)
	case "usnet-packet":
		// The stack takes the host's address; the kernel gives it up.
		cidr := l.HostIP.String() + "/24"
		if out, err := l.Host.Command(context.Background(), "ip", "addr", "del", cidr, "dev", l.Ifname).CombinedOutput(); err != nil {
			b.Fatalf("ip addr del: %v\n%s", err, out)
		}
		s.server = l.startServer("packet", append(env, "USNET_IP="+cidr)...)
	case "usnet-usnetd":
		startDaemon()
		s.server = l.startServer("usnet", env...)
	case "usnet-usnetd-uds":
		startDaemon()
		s.server = l.startServer("usnet-uds", env...)
	default:
		b.Fatalf("unknown variant %s", variant)
	}
	return s
}

// cpuMeter measures the CPU time (user and system) that the server and
// usnetd spend while it runs.
type cpuMeter struct {
	s                          *benchSetup
	start                      time.Time
	server0, daemon0           time.Duration
	serverCPU, daemonCPU, wall time.Duration
}

func (s *benchSetup) meter() *cpuMeter {
	m := &cpuMeter{s: s, start: time.Now(), server0: cpuTime(s.server.cmd.Process.Pid)}
	if s.daemon != nil {
		m.daemon0 = cpuTime(s.daemon.Cmd.Process.Pid)
	}
	return m
}

func (m *cpuMeter) stop() {
	m.wall += time.Since(m.start)
	m.serverCPU += cpuTime(m.s.server.cmd.Process.Pid) - m.server0
	if m.s.daemon != nil {
		m.daemonCPU += cpuTime(m.s.daemon.Cmd.Process.Pid) - m.daemon0
	}
}

// report adds the CPU shares (100 = one core busy all the time).
func (m *cpuMeter) report(b *testing.B) {
	b.ReportMetric(100*m.serverCPU.Seconds()/m.wall.Seconds(), "server-cpu-%")
	if m.s.daemon != nil {
		b.ReportMetric(100*m.daemonCPU.Seconds()/m.wall.Seconds(), "usnetd-cpu-%")
	}
}

// cpuTime is a process's user and system time so far (/proc/PID/stat,
// in clock ticks of 10 ms).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 (state) on
	ut, _ := strconv.ParseInt(f[11], 10, 64)                 // field 14: utime
	st, _ := strconv.ParseInt(f[12], 10, 64)                 // field 15: stime
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// BenchmarkE2EUsnetTCP: TCP goodput from a Go sender in the peer (the
// peer's kernel TCP) to the server's sink, 64 MiB per op on a new
// connection, counted when the sink has confirmed every byte.
//
//	go test -run '^$' -bench BenchmarkE2EUsnetTCP -benchtime 5x -count 3 ./cmd/usnetd
func BenchmarkE2EUsnetTCP(b *testing.B) {
	const size = 64 << 20
	for _, v := range benchVariants {
		b.Run(v, func(b *testing.B) {
			s := benchLab(b, v, 5203, sinkPortEnv+"=5203")
			dial := s.l.peerDialer(s.l.HostIP.String() + ":5203")
			if _, err := sendToSink(dial, 1<<20, time.Minute); err != nil { // warm-up: ARP, the stack
				b.Fatal(err)
			}
			b.SetBytes(size)
			var bits float64
			b.ResetTimer()
			m := s.meter()
			for range b.N {
				bps, err := sendToSink(dial, size, 5*time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				bits += bps
			}
			m.stop()
			b.StopTimer()
			b.ReportMetric(bits/float64(b.N)/1e9, "Gbit/s")
			m.report(b)
		})
	}
}

var wrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// BenchmarkE2EHTTP: requests per second of wrk in the peer (2 threads, 32
// keep-alive connections, 5 s per op) against the same net/http handler
// served by each variant.
//
//	go test -run '^$' -bench BenchmarkE2EHTTP -benchtime 1x -count 3 ./cmd/usnetd
func BenchmarkE2EHTTP(b *testing.B) {
	netlab.RequireTool(b, "wrk", "wrk")
	for _, v := range benchVariants {
		b.Run(v, func(b *testing.B) {
			s := benchLab(b, v, 8080, httpPortEnv+"=8080")
			url := "http://" + s.l.HostIP.String() + ":8080/"
			wrk := func(d string) float64 {
				out, err := s.l.Peer.Command(context.Background(), "wrk", "-t", "2", "-c", "32", "-d", d, url).CombinedOutput()
				if err != nil {
					b.Fatalf("wrk: %v\n%s", err, out)
				}
				if strings.Contains(string(out), "Non-2xx") || strings.Contains(string(out), "Socket errors") {
					b.Fatalf("wrk saw errors:\n%s", out)
				}
				m := wrkRate.FindSubmatch(out)
				if m == nil {
					b.Fatalf("no Requests/sec in wrk's output:\n%s", out)
				}
				r, _ := strconv.ParseFloat(string(m[1]), 64)
				return r
			}
			wrk("1s") // warm-up
			var rate float64
			b.ResetTimer()
			m := s.meter()
			for range b.N {
				rate += wrk("5s")
			}
			m.stop()
			b.StopTimer()
			b.ReportMetric(rate/float64(b.N), "req/s")
			m.report(b)
		})
	}
}
