package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

func udpFrame(dport uint16) []byte {
	return testkit.IPv4Frame(net.HardwareAddr{2, 0, 0, 0, 0, 9}, net.HardwareAddr{2, 0, 0, 0, 0, 1},
		testkit.AddrPort("198.18.1.2", 999), testkit.AddrPort("198.18.0.1", dport), l4.ProtoUDP, 60)
}

// TestCollectorReadsThePipeline runs frames through a pipeline and checks
// that a scrape shows them, and that the exposition passes promlint (what
// `promtool check metrics` checks).
func TestCollectorReadsThePipeline(t *testing.T) {
	sw := l4.NewSwitch(l4.NewTable())
	p, err := l4.NewPipeline(sw, l4.PipelineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	nic := memory.New("eth0", l4.PortNIC, memory.Options{Poll: time.Millisecond})
	ep := memory.New("endpoint-1", l4.PortEndpoint, memory.Options{Poll: time.Millisecond})
	if _, err := p.AddPort(nic); err != nil {
		t.Fatal(err)
	}
	eid, err := p.AddPort(ep)
	if err != nil {
		t.Fatal(err)
	}
	if err := sw.Table.Insert(l4.Rule{Key: l4.ListenKey(l4.MustParseAddr("198.18.0.1"), l4.ProtoUDP, 53), Owner: eid, Kind: l4.Registered}); err != nil {
		t.Fatal(err)
	}
	nic.Inject(0, udpFrame(53), udpFrame(53), udpFrame(54))
	if !ep.WaitSent(2, 10*time.Second) {
		t.Fatal("frames not delivered")
	}
	fwCounters := func() (map[string]uint64, error) {
		return map[string]uint64{"pass_kernel": 5, "egress_endpoint_dropped": 2}, nil
	}
	// The endpoint sends a frame from a MAC that is not local: an
	// isolation drop, counted under its own reason.
	ep.Inject(0, udpFrame(53))
	c := NewCollector(func() []Domain {
		return []Domain{{Interface: "eth0", Pipeline: p, Firewall: fwCounters, Backend: "afpacket",
			BackendDrops: func() map[string]uint64 { return map[string]uint64{"rx_oversize": 3, "rx_ring_full": 0} },
			SHMChannels:  func() map[string]uint64 { return map[string]uint64{"ring_full": 4, "bad_index": 1, "wakeups": 9} }}}
	})
	c.SetRefused(func() map[string]uint64 { return map[string]uint64{"address": 2, "channels_per_uid": 3} })
	c.SetSuppressed(func() map[string]uint64 { return map[string]uint64{"malformed message": 7} })
	reg := NewRegistry(c)

	// Wait for the RX workers' counters of the batch (written after the flush).
	deadline := time.Now().Add(10 * time.Second)
	for (p.Stats().Drops[l4.DropNoMatch] != 1 || p.Stats().Drops[l4.DropSrcMAC] != 1) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	n, err := testutil.GatherAndCount(reg, "usnetd_port_rx_packets_total")
	if err != nil || n != 2 {
		t.Fatalf("port rx series: %d, %v", n, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range m.GetLabel() {
				key += "," + lp.GetName() + "=" + lp.GetValue()
			}
			if m.Counter != nil {
				values[key] = m.GetCounter().GetValue()
			} else if m.Gauge != nil {
				values[key] = m.GetGauge().GetValue()
			}
		}
	}
	for key, v := range map[string]float64{
		"usnetd_port_rx_packets_total,interface=eth0,kind=nic,port=eth0,port_id=1":                      3,
		"usnetd_port_tx_packets_total,interface=eth0,kind=endpoint,port=endpoint-1,port_id=2":           2,
		"usnetd_port_drops_total,interface=eth0,kind=nic,port=eth0,port_id=1,reason=no_match":           1,
		"usnetd_drops_total,interface=eth0,reason=no_match":                                             1,
		"usnetd_port_drops_total,interface=eth0,kind=endpoint,port=endpoint-1,port_id=2,reason=src_mac": 1,
		"usnetd_drops_total,interface=eth0,reason=src_mac":                                              1,
		"usnetd_control_refused_total,reason=address":                                                   2,
		"usnetd_control_refused_total,reason=channels_per_uid":                                          3,
		"usnetd_ring_pushed_total,from=eth0,from_id=1,interface=eth0,queue=0,to=endpoint-1,to_id=2":     2,
		"usnetd_rules,interface=eth0,kind=registered":                                                   1,
		"usnetd_ring_capacity,from=eth0,from_id=1,interface=eth0,queue=0,to=endpoint-1,to_id=2":         1024,
		"usnetd_port_rx_bytes_total,interface=eth0,kind=nic,port=eth0,port_id=1":                        180,
		"usnetd_firewall_frames_total,counter=egress_endpoint_dropped,interface=eth0":                   2,
		"usnetd_firewall_frames_total,counter=pass_kernel,interface=eth0":                               5,
		"usnetd_backend_drops_total,backend=afpacket,interface=eth0,reason=rx_oversize":                 3,
		"usnetd_backend_drops_total,backend=afpacket,interface=eth0,reason=rx_ring_full":                0,
		"usnetd_backend_drops_total,backend=shm,interface=eth0,reason=ring_full":                        4,
		"usnetd_backend_drops_total,backend=shm,interface=eth0,reason=bad_index":                        1,
		"usnetd_channel_wakeups_total,interface=eth0,kind=shm":                                          9,
		"usnetd_log_suppressed_total,class=malformed message":                                           7,
		"usnetd_buffers,interface=eth0,state=reserve":                                                   16384 / 4,
		"usnetd_drops_total,interface=eth0,reason=frag_evicted":                                         0,
		"usnetd_drops_total,interface=eth0,reason=rule_limit":                                           0,
		"usnetd_drops_total,interface=eth0,reason=quota":                                                0,
		"usnetd_fragment_held_bytes,interface=eth0":                                                     0,
		"usnetd_queued_frames,interface=eth0":                                                           0,
	} {
		got, ok := values[key]
		if !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, v)
		}
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "usnetd_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestServerServesMetrics(t *testing.T) {
	c := NewCollector(func() []Domain { return nil })
	srv, err := Listen("127.0.0.1:0", NewRegistry(c))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "usnetd_scrape_duration_seconds") {
		t.Fatalf("status %d, body:\n%s", resp.StatusCode, body)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
