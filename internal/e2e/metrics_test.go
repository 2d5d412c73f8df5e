package e2e

import (
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	in := `# HELP x
usnetd_port_rx_packets_total{interface="eth0",kind="nic",port="eth0",port_id="1"} 9
usnetd_drops_total{interface="eth0",reason="no_match"} 2
usnetd_pcap_frames_total 3
`
	m, err := ParseMetrics(strings.NewReader(in))
	if err != nil || len(m) != 3 {
		t.Fatalf("%v %v", m, err)
	}
	for _, s := range m {
		switch s.Name {
		case "usnetd_port_rx_packets_total":
			if s.Labels["kind"] != "nic" || s.Labels["port_id"] != "1" || s.Value != 9 {
				t.Errorf("%+v", s)
			}
		case "usnetd_drops_total":
			if s.Labels["reason"] != "no_match" || s.Value != 2 {
				t.Errorf("%+v", s)
			}
		case "usnetd_pcap_frames_total":
			if len(s.Labels) != 0 || s.Value != 3 {
				t.Errorf("%+v", s)
			}
		default:
			t.Errorf("unexpected %+v", s)
		}
	}
}

func TestMetricValue(t *testing.T) {
	m := "# HELP x\nusnetd_rules{interface=\"eth0\",kind=\"learned\"} 4\nusnetd_rules{interface=\"eth0\",kind=\"registered\"} 1.5\nbad{a=\"b\"} x\n"
	for _, c := range []struct {
		series string
		want   float64
		ok     bool
	}{
		{`usnetd_rules{interface="eth0",kind="learned"}`, 4, true},
		{`usnetd_rules{interface="eth0",kind="registered"}`, 1.5, true},
		{`usnetd_rules{interface="eth0"}`, 0, false},
		{`bad{a="b"}`, 0, false},
	} {
		if v, ok := MetricValue(m, c.series); v != c.want || ok != c.ok {
			t.Errorf("MetricValue(%s) = %v, %v; want %v, %v", c.series, v, ok, c.want, c.ok)
		}
	}
	if g := GrepLines(m, "learned"); g != `usnetd_rules{interface="eth0",kind="learned"} 4`+"\n" {
		t.Errorf("GrepLines = %q", g)
	}
}

// FuzzParseMetrics: any text, no panic; every sample has a name.
func FuzzParseMetrics(f *testing.F) {
	f.Add("usnetd_drops_total{interface=\"eth0\",reason=\"no_match\"} 2\n")
	f.Add("# HELP\n{} 1\nx{=} NaN\n")
	f.Fuzz(func(t *testing.T, in string) {
		m, _ := ParseMetrics(strings.NewReader(in))
		for _, s := range m {
			if s.Labels == nil {
				t.Fatalf("%+v without labels map", s)
			}
		}
	})
}
