package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// TestDashboard parses the Grafana dashboard, checks its structure, and
// matches every expression against a scrape of a real pipeline: each
// metric name must be exported and each label must exist on it, and every
// usnetd_ family must be shown somewhere.
func TestDashboard(t *testing.T) {
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(readFile(t, "grafana-dashboard.json")))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both must be set", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d; the dashboard is written for 39", d.SchemaVersion)
	}

	vars := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: definition %q is not label_values(METRIC, LABEL)", v.Name, v.Definition)
			continue
		}
		names := checkExpr(t, "variable "+v.Name, m[1])
		if len(names) != 1 || !exportedFamilies(t)[names[0]][m[2]] && !targetLabels[m[2]] {
			t.Errorf("variable %s: %q: label %s is not on that family", v.Name, v.Definition, m[2])
		}
		// The query is a string in old dashboards, an object in new ones.
		var query string
		var obj struct{ Query string }
		switch {
		case json.Unmarshal(v.Query, &obj) == nil:
			query = obj.Query
		case json.Unmarshal(v.Query, &query) == nil:
		default:
			t.Errorf("variable %s: query %s is neither a string nor {\"query\": ...}", v.Name, v.Query)
		}
		if query != v.Definition {
			t.Errorf("variable %s: query %q differs from its definition %q", v.Name, query, v.Definition)
		}
	}
	if !vars["datasource"] {
		t.Error("no datasource variable: the dashboard would be bound to one Prometheus")
	}

	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)

	ids := map[int]string{}
	shown := map[string]bool{}
	varRef := regexp.MustCompile(`\$\{?([a-zA-Z_][a-zA-Z0-9_]*)`)
	// occupied cells of the 24-column grid, to find overlapping panels
	cells := map[[2]int]string{}
	for _, p := range all {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if prev, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("%s: id not unique (also %q)", where, prev)
		}
		ids[p.ID] = p.Title
		if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%s: bad gridPos %+v", where, p.GridPos)
		} else {
			for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
				for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
					if other, ok := cells[[2]int{x, y}]; ok {
						t.Errorf("%s overlaps %s", where, other)
						x, y = 1<<30, 1<<30
						continue
					}
					cells[[2]int{x, y}] = where
				}
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("%s: needs a title and at least one target", where)
		}
		for _, ds := range []*datasource{p.Datasource} {
			if ds == nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
				t.Errorf("%s: datasource %+v, want prometheus ${datasource}", where, ds)
			}
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("%s: target %s has no expression or not the ${datasource}", where, tg.RefID)
				continue
			}
			for _, m := range varRef.FindAllStringSubmatch(tg.Expr, -1) {
				if !vars[m[1]] {
					t.Errorf("%s: %q uses $%s, which is no variable", where, tg.Expr, m[1])
				}
			}
			for _, n := range checkExpr(t, where, tg.Expr) {
				shown[n] = true
			}
		}
	}

	var missing []string
	for name := range exportedFamilies(t) {
		if strings.HasPrefix(name, "usnetd_") && !shown[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("families of package metrics that the dashboard does not show: %v", missing)
	}
}

// TestDashboardPromQL has promtool parse every expression of the dashboard:
// they become recording rules of a scratch rule file, with Grafana's
// variables replaced by values Prometheus accepts.
func TestDashboardPromQL(t *testing.T) {
	var d dashboard
	if err := json.Unmarshal([]byte(readFile(t, "grafana-dashboard.json")), &d); err != nil {
		t.Fatal(err)
	}
	subst := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h",
		"$instance", ".*", "$interface", ".*")
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				n++
				expr, _ := json.Marshal(subst.Replace(tg.Expr)) // a JSON string is a YAML string
				fmt.Fprintf(&b, "      - record: dashboard:panel%d:%s\n        expr: %s\n", p.ID, tg.RefID, expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	if n == 0 {
		t.Fatal("no expressions")
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, "check", "rules", file)
}
