package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	l4 "github.com/usnetd/usnetd/switch"
)

// Domain is one switch domain to export: a NIC's pipeline, labelled with
// the interface name.
type Domain struct {
	Interface string
	Pipeline  *l4.Pipeline
	// Firewall, if set, reads the eBPF firewall's counters (by name, as
	// firewall.CounterNames); nil where there is none (macvtap).
	Firewall func() (map[string]uint64, error)
	// Backend names the NIC's backend ("afxdp", "afpacket", "macvtap").
	Backend string
	// BackendDrops, if set, returns the frames the backend (and the
	// kernel below it) dropped, by reason, as running totals: what never
	// reached the pipeline or left it unsent. Called on each scrape.
	BackendDrops func() map[string]uint64
	// ChannelDrops, if set, returns the frames the endpoints' channels
	// dropped before the switch saw them, by reason, as running totals
	// (exported with backend="uds").
	ChannelDrops func() map[string]uint64
	// SHMChannels, if set, returns the shared-memory channels' counters
	// as running totals (control.Server.SHMChannels): "wakeups" is
	// exported as usnetd_channel_wakeups_total, the rest as drops with
	// backend="shm".
	SHMChannels func() map[string]uint64
}

// Collector reads the counters of every domain when Prometheus scrapes.
// It keeps no state of its own and is never called by the data path.
type Collector struct {
	domains    func() []Domain
	tap        *l4.Tap
	refused    func() map[string]uint64
	suppressed func() map[string]uint64
}

// SetRefused adds the control server's refusals by limit
// (control.Server.Refused) to what the collector exports.
func (c *Collector) SetRefused(f func() map[string]uint64) { c.refused = f }

// SetSuppressed adds the log lines dropped by the rate limit, by message
// class (lograte.Limiter.Suppressed), to what the collector exports.
func (c *Collector) SetSuppressed(f func() map[string]uint64) { c.suppressed = f }

// SetTap adds the PCAP_LOG tap's counters to what the collector exports.
func (c *Collector) SetTap(t *l4.Tap) { c.tap = t }

// NewCollector returns a collector over the domains that domains() returns
// at each scrape (domains come and go with NICs).
func NewCollector(domains func() []Domain) *Collector { return &Collector{domains: domains} }

var portLabels = []string{"interface", "port_id", "port", "kind"}
var ringLabels = []string{"interface", "from_id", "from", "queue", "to_id", "to"}

var (
	descPortRxPackets = prometheus.NewDesc("usnetd_port_rx_packets_total", "Frames received on a port (a NIC queue set, the kernel path or an endpoint channel).", portLabels, nil)
	descPortRxBytes   = prometheus.NewDesc("usnetd_port_rx_bytes_total", "Bytes of the frames received on a port.", portLabels, nil)
	descPortRxErrors  = prometheus.NewDesc("usnetd_port_rx_errors_total", "Receive errors reported by a port's backend.", portLabels, nil)
	descPortTxPackets = prometheus.NewDesc("usnetd_port_tx_packets_total", "Frames sent out of a port.", portLabels, nil)
	descPortTxBytes   = prometheus.NewDesc("usnetd_port_tx_bytes_total", "Bytes of the frames sent out of a port.", portLabels, nil)
	descPortTxErrors  = prometheus.NewDesc("usnetd_port_tx_errors_total", "Frames that a port's backend failed to send.", portLabels, nil)
	descPortDrops     = prometheus.NewDesc("usnetd_port_drops_total", "Frames received on a port and not delivered, by reason.", append(portLabels[:4:4], "reason"), nil)
	descPortQueues    = prometheus.NewDesc("usnetd_port_rx_queues", "Receive queues (RX workers) of a port.", portLabels, nil)
	descPortQueueRx   = prometheus.NewDesc("usnetd_port_rx_queue_packets_total", "Frames received on one receive queue (RX worker) of a port: how flows spread over the workers.", append(portLabels[:4:4], "queue"), nil)

	descRingPushed = prometheus.NewDesc("usnetd_ring_pushed_total", "Frames an RX worker queued into the ring to a port.", ringLabels, nil)
	descRingDrops  = prometheus.NewDesc("usnetd_ring_dropped_total", "Frames dropped because the ring to a port was full (the port's TX fell behind).", ringLabels, nil)
	descRingHigh   = prometheus.NewDesc("usnetd_ring_high_water", "Highest fill level of a ring seen so far, in frames.", ringLabels, nil)
	descRingLen    = prometheus.NewDesc("usnetd_ring_fill", "Frames in a ring now.", ringLabels, nil)
	descRingCap    = prometheus.NewDesc("usnetd_ring_capacity", "Slots of a ring.", ringLabels, nil)

	descRules        = prometheus.NewDesc("usnetd_rules", "Rules in a switch domain's table, by kind (registered: AddMatch, DEBUG_PORTS, STATIC_PIPES; learned: from outgoing frames).", []string{"interface", "kind"}, nil)
	descDrops        = prometheus.NewDesc("usnetd_drops_total", "Frames dropped in a switch domain, by reason, over all ports (removed ones included).", []string{"interface", "reason"}, nil)
	descBuffers      = prometheus.NewDesc("usnetd_buffers", "Frame buffers of a domain's pool.", []string{"interface", "state"}, nil)
	descPoolEmpty    = prometheus.NewDesc("usnetd_buffer_pool_exhausted_total", "Times a worker found the buffer pool empty.", []string{"interface"}, nil)
	descLocalMACs    = prometheus.NewDesc("usnetd_local_macs", "MAC addresses in a domain's local-MAC set.", []string{"interface"}, nil)
	descFragHeld     = prometheus.NewDesc("usnetd_fragment_datagrams", "IP datagrams whose fragments the switch is following or holding.", []string{"interface"}, nil)
	descFragBytes    = prometheus.NewDesc("usnetd_fragment_held_bytes", "Bytes of buffers pinned by IP fragments held until their first fragment comes (bounded; the oldest are evicted, drops reason frag_evicted).", []string{"interface"}, nil)
	descQueued       = prometheus.NewDesc("usnetd_queued_frames", "Frames queued to non-NIC ports (channels, the kernel's TAP) now; bounded by their quotas (drops reason quota).", []string{"interface"}, nil)
	descReserveRef   = prometheus.NewDesc("usnetd_buffer_reserve_refused_total", "Times a channel's worker found only the NIC's reserve of buffers left and waited.", []string{"interface"}, nil)
	descRefused      = prometheus.NewDesc("usnetd_control_refused_total", "Control-socket requests refused, by reason: a limit (clients, channels, rules; per client, per uid or in total), or address (AddMatch for a local address that endpoints may not use).", []string{"reason"}, nil)
	descLogSupp      = prometheus.NewDesc("usnetd_log_suppressed_total", "Log lines not written because their message class went over its rate limit.", []string{"class"}, nil)
	descPcapFrames   = prometheus.NewDesc("usnetd_pcap_frames_total", "Frames (switched or dropped, with their verdict) handed to the PCAP_LOG writer.", nil, nil)
	descPcapDrops    = prometheus.NewDesc("usnetd_pcap_dropped_total", "Frames not written to PCAP_LOG because the writer (the disk) fell behind.", nil, nil)
	descFirewall     = prometheus.NewDesc("usnetd_firewall_frames_total", "Frames the eBPF firewall judged, by counter (see the README: pass_kernel, to_xsk, egress_endpoint_dropped, ...).", []string{"interface", "counter"}, nil)
	descBackendDrops = prometheus.NewDesc("usnetd_backend_drops_total", "Frames a NIC backend (or the kernel under it) dropped before the switch saw them or after it sent them, by reason; see the README's table.", []string{"interface", "backend", "reason"}, nil)
	descWakeups      = prometheus.NewDesc("usnetd_channel_wakeups_total", "Wake-ups usnetd sent to endpoints asleep on a shared-memory channel (need-wakeup set).", []string{"interface", "kind"}, nil)
	descCollectDur   = prometheus.NewDesc("usnetd_scrape_duration_seconds", "Time the collector took to read the counters.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPortRxPackets, descPortRxBytes, descPortRxErrors, descPortTxPackets,
		descPortTxBytes, descPortTxErrors, descPortDrops, descPortQueues, descPortQueueRx, descRingPushed, descRingDrops, descRingHigh,
		descRingLen, descRingCap, descRules, descDrops, descBuffers, descPoolEmpty, descLocalMACs, descFragHeld, descFirewall, descCollectDur, descPcapFrames, descPcapDrops,
		descFragBytes, descQueued, descReserveRef, descRefused, descLogSupp, descBackendDrops, descWakeups} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	start := time.Now()
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	for _, dom := range c.domains() {
		ifc := dom.Interface
		st := dom.Pipeline.Stats()
		for _, p := range st.Ports {
			l := []string{ifc, strconv.FormatUint(uint64(p.Port), 10), p.Name, p.Kind.String()}
			counter(descPortRxPackets, p.RxPackets, l...)
			counter(descPortRxBytes, p.RxBytes, l...)
			counter(descPortRxErrors, p.RxErrors, l...)
			counter(descPortTxPackets, p.TxPackets, l...)
			counter(descPortTxBytes, p.TxBytes, l...)
			counter(descPortTxErrors, p.TxErrors, l...)
			gauge(descPortQueues, float64(p.RxQueues), l...)
			for q, n := range p.RxQueuePackets {
				counter(descPortQueueRx, n, append(l, strconv.Itoa(q))...)
			}
			for r, n := range p.Drops {
				if l4.DropReason(r) != l4.DropNone {
					counter(descPortDrops, n, append(l, l4.DropReason(r).String())...)
				}
			}
		}
		for _, r := range st.Rings {
			l := []string{ifc, strconv.FormatUint(uint64(r.From), 10), r.FromName, strconv.Itoa(r.FromQueue),
				strconv.FormatUint(uint64(r.To), 10), r.ToName}
			counter(descRingPushed, r.Pushed, l...)
			counter(descRingDrops, r.DroppedFull, l...)
			gauge(descRingHigh, float64(r.HighWater), l...)
			gauge(descRingLen, float64(r.Len), l...)
			gauge(descRingCap, float64(r.Cap), l...)
		}
		for r, n := range st.Drops {
			if l4.DropReason(r) != l4.DropNone {
				counter(descDrops, n, ifc, l4.DropReason(r).String())
			}
		}
		if dom.BackendDrops != nil {
			drops := dom.BackendDrops()
			reasons := make([]string, 0, len(drops))
			for r := range drops {
				reasons = append(reasons, r)
			}
			sort.Strings(reasons)
			for _, r := range reasons {
				counter(descBackendDrops, drops[r], ifc, dom.Backend, r)
			}
		}
		if dom.ChannelDrops != nil {
			for r, n := range dom.ChannelDrops() {
				counter(descBackendDrops, n, ifc, "uds", r)
			}
		}
		if dom.SHMChannels != nil {
			for r, n := range dom.SHMChannels() {
				if r == "wakeups" {
					counter(descWakeups, n, ifc, "shm")
				} else {
					counter(descBackendDrops, n, ifc, "shm", r)
				}
			}
		}
		sw := dom.Pipeline.Switch()
		reg, learned := sw.Table.Count()
		gauge(descRules, float64(reg), ifc, "registered")
		gauge(descRules, float64(learned), ifc, "learned")
		gauge(descBuffers, float64(st.Pool.Bufs), ifc, "total")
		gauge(descBuffers, float64(st.Pool.SharedFree), ifc, "free_shared")
		gauge(descBuffers, float64(st.Pool.Reserve), ifc, "reserve")
		counter(descReserveRef, st.Pool.Reserved, ifc)
		gauge(descFragBytes, float64(st.FragHeldBytes), ifc)
		gauge(descQueued, float64(st.Queued), ifc)
		counter(descPoolEmpty, st.Pool.Exhausted, ifc)
		macs, _ := sw.Local()
		gauge(descLocalMACs, float64(len(macs)), ifc)
		gauge(descFragHeld, float64(sw.FragLen()), ifc)
		if dom.Firewall != nil {
			if cs, err := dom.Firewall(); err == nil {
				for name, n := range cs {
					counter(descFirewall, n, ifc, name)
				}
			}
		}
	}
	if c.refused != nil {
		for reason, n := range c.refused() {
			counter(descRefused, n, reason)
		}
	}
	if c.suppressed != nil {
		for class, n := range c.suppressed() {
			counter(descLogSupp, n, class)
		}
	}
	if c.tap != nil {
		ts := c.tap.Stats()
		counter(descPcapFrames, ts.Pushed)
		counter(descPcapDrops, ts.Dropped)
	}
	gauge(descCollectDur, time.Since(start).Seconds())
}

// NewRegistry returns a registry with the usnetd collector and the Go
// runtime and process collectors.
func NewRegistry(c *Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	reg.MustRegister(collectors.NewGoCollector())
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Server serves /metrics.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr (host:port) and returns a server for reg. Serve it
// with Serve; stop it with Shutdown.
func Listen(addr string, reg prometheus.Gatherer) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte("usnetd: metrics at /metrics\n"))
	})
	return &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown; it returns nil after a Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting for scrapes in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
