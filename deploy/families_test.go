package deploy

import (
	"net"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usnetd/usnetd/backends/memory"
	"github.com/usnetd/usnetd/internal/testkit"
	"github.com/usnetd/usnetd/metrics"
	l4 "github.com/usnetd/usnetd/switch"
)

// family is a metric family that usnetd exports: its label names.
type family map[string]bool

var (
	familiesOnce sync.Once
	familiesMap  map[string]family
	familiesErr  string
)

// exportedFamilies scrapes usnetd's registry (metrics.NewRegistry) over a
// real pipeline with a NIC and an endpoint port of backends/memory, after
// frames went through it, so that every family has series, and returns
// the families by name. It checks that the scrape has every family that
// the collector describes.
func exportedFamilies(t *testing.T) map[string]family {
	t.Helper()
	familiesOnce.Do(func() { familiesMap, familiesErr = scrapeFamilies() })
	if familiesErr != "" {
		t.Fatal(familiesErr)
	}
	return familiesMap
}

func scrapeFamilies() (map[string]family, string) {
	sw := l4.NewSwitch(l4.NewTable())
	tap, err := l4.NewTap(64) // PCAP_LOG's counters are exported when there is a tap
	if err != nil {
		return nil, err.Error()
	}
	p, err := l4.NewPipeline(sw, l4.PipelineConfig{Tap: tap})
	if err != nil {
		return nil, err.Error()
	}
	defer p.Close()
	nic := memory.New("eth0", l4.PortNIC, memory.Options{Poll: time.Millisecond})
	ep := memory.New("endpoint-1", l4.PortEndpoint, memory.Options{Poll: time.Millisecond})
	if _, err := p.AddPort(nic); err != nil {
		return nil, err.Error()
	}
	eid, err := p.AddPort(ep)
	if err != nil {
		return nil, err.Error()
	}
	if err := sw.Table.Insert(l4.Rule{Key: l4.ListenKey(l4.MustParseAddr("198.18.0.1"), l4.ProtoUDP, 53), Owner: eid, Kind: l4.Registered}); err != nil {
		return nil, err.Error()
	}
	nic.Inject(0, udpFrame(53), udpFrame(54))
	if !ep.WaitSent(1, 10*time.Second) {
		return nil, "frame not delivered through the pipeline"
	}

	c := metrics.NewCollector(func() []metrics.Domain {
		return []metrics.Domain{{Interface: "eth0", Pipeline: p, Backend: "afpacket",
			BackendDrops: func() map[string]uint64 { return map[string]uint64{"rx_oversize": 0} },
			Firewall:     func() (map[string]uint64, error) { return map[string]uint64{"pass_kernel": 0}, nil }}}
	})
	c.SetTap(tap)
	// The control server's refusals and the log's suppressed lines, as
	// the daemon wires them (control.Server.Refused, lograte).
	c.SetRefused(func() map[string]uint64 { return map[string]uint64{"channels_per_uid": 1, "address": 0} })
	c.SetSuppressed(func() map[string]uint64 { return map[string]uint64{"malformed message": 1} })
	reg := metrics.NewRegistry(c)
	mfs, err := reg.Gather()
	if err != nil {
		return nil, err.Error()
	}
	fams := map[string]family{}
	for _, mf := range mfs {
		f := family{}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				f[lp.GetName()] = true
			}
		}
		fams[mf.GetName()] = f
	}

	// Every family the collector describes must have been scraped.
	descs := make(chan *prometheus.Desc, 100)
	c.Describe(descs)
	close(descs)
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	var missing []string
	n := 0
	for d := range descs {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			return nil, "cannot read the name of " + d.String()
		}
		n++
		if _, ok := fams[m[1]]; !ok {
			missing = append(missing, m[1])
		}
	}
	if len(missing) > 0 || n == 0 {
		sort.Strings(missing)
		return nil, "described but not scraped: " + strings.Join(missing, ", ")
	}
	return fams, ""
}

// udpFrame is a UDP/IPv4 frame from 198.18.1.2:999 to 198.18.0.1:dport.
func udpFrame(dport uint16) []byte {
	return testkit.IPv4Frame(net.HardwareAddr{2, 0, 0, 0, 0, 9}, net.HardwareAddr{2, 0, 0, 0, 0, 1},
		testkit.AddrPort("198.18.1.2", 999), testkit.AddrPort("198.18.0.1", dport), l4.ProtoUDP, 60)
}

// Labels that Prometheus adds to every series of a scrape, and the
// pseudo-label of the metric name.
var targetLabels = map[string]bool{"job": true, "instance": true, "__name__": true}

var (
	metricName = regexp.MustCompile(`\b((?:usnetd|go|process)_[a-z0-9_]+)\b`)
	// selector is a label matcher inside {...}; grouping is by/without/on/ignoring (...).
	selector = regexp.MustCompile(`\{([^}]*)\}`)
	matcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	grouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	// templated strips Grafana's $variables and {{...}} so that they do
	// not read as names.
	templated = regexp.MustCompile(`\$\{?[a-zA-Z_][a-zA-Z0-9_]*(?::[a-z]+)?\}?|\{\{[^}]*\}\}`)
)

// checkExpr reports every metric name in a PromQL expression that usnetd
// does not export, and every label it matches or groups by that none of
// the expression's families has. It returns the families it references.
func checkExpr(t *testing.T, where, expr string) []string {
	t.Helper()
	fams := exportedFamilies(t)
	clean := templated.ReplaceAllString(expr, "X")
	names := metricName.FindAllString(clean, -1)
	labels := map[string]bool{}
	for _, m := range names {
		f, ok := fams[m]
		if !ok {
			t.Errorf("%s: %q uses %s, which usnetd does not export", where, expr, m)
			continue
		}
		for l := range f {
			labels[l] = true
		}
	}
	var used []string
	for _, s := range selector.FindAllStringSubmatch(clean, -1) {
		for _, m := range matcher.FindAllStringSubmatch(s[1], -1) {
			used = append(used, m[1])
		}
	}
	for _, g := range grouping.FindAllStringSubmatch(clean, -1) {
		for l := range strings.SplitSeq(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				used = append(used, l)
			}
		}
	}
	if len(names) > 0 {
		for _, l := range used {
			if !labels[l] && !targetLabels[l] {
				t.Errorf("%s: %q uses label %s, which none of %v has", where, expr, l, names)
			}
		}
	}
	return names
}
