package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/usnetd/usnetd/internal/config"
)

// tableRow is one variable of internal/config's table, as MarkdownTable
// renders it (the table that `usnetd -h` and the README show).
type tableRow struct {
	name, def string // def: the plain default, "" where there is none or it depends on something
}

func configTable(t *testing.T) []tableRow {
	t.Helper()
	row := regexp.MustCompile("^\\| `([A-Z_]+)` \\| ([^|]*) \\|")
	plain := regexp.MustCompile("^`([^`]*)`$")
	var rows []tableRow
	for line := range strings.Lines(config.MarkdownTable()) {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		r := tableRow{name: m[1]}
		if d := plain.FindStringSubmatch(m[2]); d != nil {
			r.def = d[1]
		}
		rows = append(rows, r)
	}
	if len(rows) < 20 {
		t.Fatalf("only %d variables parsed from config.MarkdownTable()", len(rows))
	}
	return rows
}

var (
	// assignment is a setting of the example, commented out or not.
	assignment = regexp.MustCompile(`^(#?)([A-Za-z_][A-Za-z0-9_]*)=(.*)$`)
	// portable is a value that systemd's EnvironmentFile= and usnetd's
	// dotenv parser read the same way: no quotes, escapes, expansions,
	// blanks or comments.
	portable = regexp.MustCompile(`^[A-Za-z0-9_.,:/@\[\]-]*$`)
)

// TestExampleConfigLoads loads usnetd.conf as shipped (INTERFACES set,
// everything else commented out), which must give the defaults.
func TestExampleConfigLoads(t *testing.T) {
	cfg, err := (&config.Loader{IsTerminal: func() bool { return false }}).Load(nil, "usnetd.conf")
	if err != nil {
		t.Fatalf("usnetd.conf: %v", err)
	}
	if len(cfg.Interfaces) != 1 || cfg.Interfaces[0] != "eth0" {
		t.Errorf("INTERFACES = %q", cfg.Interfaces)
	}
	def, err := (&config.Loader{IsTerminal: func() bool { return false }}).Load([]string{"INTERFACES=eth0"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := *cfg, *def; got.MetricsAddr != want.MetricsAddr || got.RingSize != want.RingSize ||
		got.BatchSize != want.BatchSize || got.SocketPath != want.SocketPath || got.LogFormat != want.LogFormat {
		t.Errorf("the example changes defaults: %+v, want %+v", got, want)
	}
}

// TestExampleConfigDocumentsEveryVariable checks that every variable of
// the table has a paragraph and an assignment in usnetd.conf, that the
// commented-out assignments show the table's default where it has a plain
// one, and that every assignment, uncommented at once, still loads: the
// examples are valid values, not just text.
func TestExampleConfigDocumentsEveryVariable(t *testing.T) {
	text := readFile(t, "usnetd.conf")
	set := map[string]string{} // name → value of its (first) assignment
	var uncommented []string
	for i, line := range strings.Split(text, "\n") {
		m := assignment.FindStringSubmatch(line)
		if m == nil {
			if line != "" && !strings.HasPrefix(line, "# ") && line != "#" {
				t.Errorf("usnetd.conf:%d: neither an assignment nor a '# ' comment: %q", i+1, line)
			}
			continue
		}
		name, value := m[2], m[3]
		if _, dup := set[name]; dup {
			t.Errorf("usnetd.conf:%d: %s assigned twice", i+1, name)
		}
		set[name] = value
		if !portable.MatchString(value) {
			t.Errorf("usnetd.conf:%d: %s=%q: systemd and usnetd could read this value differently; use plain characters", i+1, name, value)
		}
		uncommented = append(uncommented, name+"="+value)
	}
	for _, v := range configTable(t) {
		value, ok := set[v.name]
		if !ok {
			t.Errorf("usnetd.conf has no %s= line", v.name)
			continue
		}
		if !regexp.MustCompile(`(?m)^# ` + v.name + `( \(required\))?: `).MatchString(text) {
			t.Errorf("usnetd.conf has no paragraph starting \"# %s: \"", v.name)
		}
		if v.def != "" && value != v.def {
			t.Errorf("usnetd.conf: #%s=%s, but the default is %s", v.name, value, v.def)
		}
	}
	for name := range set {
		found := false
		for _, v := range configTable(t) {
			found = found || v.name == name
		}
		if !found {
			t.Errorf("usnetd.conf sets %s, which usnetd does not know", name)
		}
	}

	all := filepath.Join(t.TempDir(), "all.conf")
	if err := os.WriteFile(all, []byte(strings.Join(uncommented, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := (&config.Loader{IsTerminal: func() bool { return false }}).Load(nil, all)
	if err != nil {
		t.Fatalf("usnetd.conf with every line uncommented: %v", err)
	}
	if len(cfg.DebugPorts) == 0 || len(cfg.CPUs) == 0 || cfg.PCAPLog == "" || !cfg.HasAllowGID {
		t.Errorf("uncommented examples did not take effect: %+v", cfg)
	}
}
