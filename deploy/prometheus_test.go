package deploy

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// promtool runs promtool with args in this directory and fails the test
// on a non-zero exit.
func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin := requireTool(t, "promtool", "prometheus")
	out, err := exec.Command(bin, args...).CombinedOutput()
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("promtool %s: %v", strings.Join(args, " "), err)
	}
}

// TestPrometheusConfig checks the scrape configuration, which also checks
// the rule file it names.
func TestPrometheusConfig(t *testing.T) {
	promtool(t, "check", "config", "prometheus.yml")
	cfg := readFile(t, "prometheus.yml")
	for _, want := range []string{"job_name: usnetd", "'127.0.0.1:9464'", "- usnetd-rules.yml"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("prometheus.yml lacks %q", want)
		}
	}
}

// TestPrometheusRules checks the rules and runs their unit tests
// (usnetd-rules.test.yml).
func TestPrometheusRules(t *testing.T) {
	promtool(t, "check", "rules", "usnetd-rules.yml")
	promtool(t, "test", "rules", "usnetd-rules.test.yml")
}

// TestRulesUseExportedMetrics matches every metric name and label of the
// alert expressions against a scrape of usnetd, which promtool cannot do:
// a misspelt name is valid PromQL that never fires.
func TestRulesUseExportedMetrics(t *testing.T) {
	expr := regexp.MustCompile(`(?m)^\s+expr:\s*(.+)$`)
	exprs := expr.FindAllStringSubmatch(readFile(t, "usnetd-rules.yml"), -1)
	if len(exprs) < 5 {
		t.Fatalf("only %d alert expressions found", len(exprs))
	}
	seen := map[string]bool{}
	for _, m := range exprs {
		for _, n := range checkExpr(t, "usnetd-rules.yml", m[1]) {
			seen[n] = true
		}
	}
	for _, want := range []string{"usnetd_ring_dropped_total", "usnetd_buffer_pool_exhausted_total", "usnetd_port_tx_errors_total"} {
		if !seen[want] {
			t.Errorf("no alert on %s", want)
		}
	}
}

// TestOperatingNamesEveryAlert keeps the alert table of README.md ("Operating usnetd") in
// step with the rule file.
func TestOperatingNamesEveryAlert(t *testing.T) {
	doc := readFile(t, "../README.md")
	alerts := regexp.MustCompile(`(?m)^\s+- alert:\s*(\w+)$`).FindAllStringSubmatch(readFile(t, "usnetd-rules.yml"), -1)
	if len(alerts) == 0 {
		t.Fatal("no alerts found")
	}
	for _, a := range alerts {
		if !strings.Contains(doc, "`"+a[1]+"`") {
			t.Errorf("README.md (Operating usnetd) does not explain alert %s", a[1])
		}
	}
}
