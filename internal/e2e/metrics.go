package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/usnetd/usnetd/internal/netlab"
)

// ScrapeIn fetches http://addr/metrics from inside ns.
func ScrapeIn(ctx context.Context, ns *netlab.NS, addr string, timeout time.Duration) (string, error) {
	// The transport dials from its own goroutine: dial inside the namespace.
	c := http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, network, addr)
		}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", req.URL, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// Scrape fetches the metrics of the usnetd that Start runs.
func (l *Lab) Scrape() string {
	l.T.Helper()
	m, err := ScrapeIn(context.Background(), l.Host, MetricsAddr, 5*time.Second)
	if err != nil {
		l.T.Fatal(err)
	}
	return m
}

// MetricValue returns the value of the series (name and labels, exactly
// as exposed) in the metrics text m.
func MetricValue(m, series string) (float64, bool) {
	for line := range strings.SplitSeq(m, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// A Sample is one series of a scrape.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// ParseMetrics reads the Prometheus text format, as much as usnetd's
// exposition needs (name{labels} value; no escaped quotes or commas in
// label values), sorted by the label port_id.
func ParseMetrics(r io.Reader) ([]Sample, error) {
	var out []Sample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		s := Sample{Name: line[:sp], Labels: map[string]string{}, Value: v}
		if i := strings.IndexByte(s.Name, '{'); i >= 0 {
			for kv := range strings.SplitSeq(strings.TrimSuffix(s.Name[i+1:], "}"), ",") {
				k, v, _ := strings.Cut(kv, "=")
				s.Labels[k] = strings.Trim(v, `"`)
			}
			s.Name = s.Name[:i]
		}
		out = append(out, s)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Labels["port_id"] < out[j].Labels["port_id"] })
	return out, sc.Err()
}

// GrepLines returns the lines of s that contain sub.
func GrepLines(s, sub string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}
