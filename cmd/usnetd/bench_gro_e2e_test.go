package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/netlab"
)

// BenchmarkE2EKernelGRO: TCP goodput of the kernel's own transfer (iperf3,
// peer → host, 2 s per iteration, to a DEBUG_PORTS port) with GRO on the
// host's NIC on and off, without usnetd and through each backend, in one
// run. The peer sends wire-sized segments (TX checksum offload, and with
// it TSO, off), as a real NIC's link partner does, so GRO has something
// to merge. Before usnetd read GSO frames (afpacket), GRO had to be off.
//
//	go test -run '^$' -bench BenchmarkE2EKernelGRO -benchtime 2x ./cmd/usnetd
func BenchmarkE2EKernelGRO(b *testing.B) {
	netlab.RequireTool(b, "iperf3", "iperf3")
	for _, backend := range []string{"direct", "afpacket", "afxdp", "macvtap"} {
		for _, gro := range []bool{false, true} {
			name := fmt.Sprintf("%s/gro-%s", backend, map[bool]string{true: "on", false: "off"}[gro])
			b.Run(name, func(b *testing.B) {
				l := newPeerLab(b)
				setGRO(b, l, gro)
				if backend != "direct" {
					env := []string{fmt.Sprintf("DEBUG_PORTS=%s:TCP:5201", l.Ifname), "BACKEND=" + backend}
					if backend == "afxdp" {
						env = append(env, "XDP_MODE=generic") // the veth host's choice (see BenchmarkE2EKernelTCP)
					}
					l.Start(env...)
				}
				startIperf3Server(b, l, 5201)
				var bits float64
				b.ResetTimer()
				for range b.N {
					_, bps := iperf3Client(b, l, 5201, "-t", "2")
					bits += bps
				}
				b.ReportMetric(bits/float64(b.N)/1e9, "Gbit/s")
			})
		}
	}
}

// BenchmarkE2EJumboUsnetTCP: TCP goodput from the peer's kernel to a usnet
// server's sink through usnetd (32 MiB per op on a new connection) at MTU
// 1500 and 9000, per backend, in one run: what jumbo frames buy a
// userspace stack, with AF_XDP in multi-buffer mode at 9000 (a 9,018-byte
// frame in five to six 2 KiB chunks).
//
//	go test -run '^$' -bench BenchmarkE2EJumboUsnetTCP -benchtime 3x ./cmd/usnetd
func BenchmarkE2EJumboUsnetTCP(b *testing.B) {
	const size = 32 << 20
	for _, backend := range []string{"afxdp", "afpacket", "macvtap"} {
		for _, mtu := range []int{1500, jumboMTU} {
			b.Run(fmt.Sprintf("%s/mtu-%d", backend, mtu), func(b *testing.B) {
				l := newE2ELabMTU(b, 1, mtu)
				if err := l.Peer.TxChecksumOff("eth0"); err != nil {
					b.Fatal(err)
				}
				l.Backend = backend
				u := l.Start("LOG_LEVEL=info")
				b.Cleanup(func() { u.Stop(b) })
				l.startServer("usnet", sinkPortEnv+"=5203")
				dial := l.peerDialer(l.HostIP.String() + ":5203")
				if _, err := sendToSink(dial, 1<<20, time.Minute); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(size)
				var bits float64
				b.ResetTimer()
				for range b.N {
					bps, err := sendToSink(dial, size, 5*time.Minute)
					if err != nil {
						b.Fatal(err)
					}
					bits += bps
				}
				b.ReportMetric(bits/float64(b.N)/1e9, "Gbit/s")
			})
		}
	}
}
