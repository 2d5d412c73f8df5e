package config

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the configuration table in ../../README.md from MarkdownTable")

const (
	readmePath  = "../../README.md"
	beginMarker = "<!-- config-table:begin -->"
	endMarker   = "<!-- config-table:end -->"
)

// TestREADMETable fails when the README's configuration table differs from
// MarkdownTable. Fix it with: go test ./internal/config -run TestREADMETable -update
func TestREADMETable(t *testing.T) {
	data, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	before, rest, ok1 := strings.Cut(readme, beginMarker+"\n")
	table, after, ok2 := strings.Cut(rest, endMarker)
	if !ok1 || !ok2 {
		t.Fatalf("%s lacks the lines %s and %s", readmePath, beginMarker, endMarker)
	}
	want := MarkdownTable()
	if table == want {
		return
	}
	if *update {
		if err := os.WriteFile(readmePath, []byte(before+beginMarker+"\n"+want+endMarker+after), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("the configuration table in %s is out of date; run\n\tgo test ./internal/config -run TestREADMETable -update\nwant:\n%s", readmePath, want)
}

func TestMarkdownTable(t *testing.T) {
	md := MarkdownTable()
	lines := strings.Split(strings.TrimSuffix(md, "\n"), "\n")
	if len(lines) != 2+len(variables) {
		t.Fatalf("%d lines, want a header, a rule and %d rows", len(lines), len(variables))
	}
	for i, l := range lines {
		if cells := strings.Count(strings.ReplaceAll(l, `\|`, ""), "|"); cells != 5 {
			t.Errorf("line %d has %d unescaped '|', want 5: %s", i+1, cells, l)
		}
	}
	for _, want := range []string{
		"| `INTERFACES` | required |",
		"| `RING_SIZE` | `1024` | a power of two 64..65536 |",
		"| `LOG_FORMAT` | console if stderr is a terminal, else json |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("MarkdownTable lacks %q", want)
		}
	}
}

func TestUsage(t *testing.T) {
	var b bytes.Buffer
	Usage(&b)
	out := b.String()
	if !strings.HasPrefix(out, "Usage: usnetd [-h|--help] [CONFFILE]\n") {
		t.Errorf("Usage does not start with the command line:\n%s", out)
	}
	// Every variable starts a row, and every row is aligned: the default
	// starts in the same column on each row.
	col := -1
	for i := range variables {
		v := &variables[i]
		var row string
		for l := range strings.SplitSeq(out, "\n") {
			if strings.HasPrefix(l, "  "+v.Name+" ") {
				row = l
			}
		}
		if row == "" {
			t.Errorf("no row for %s", v.Name)
			continue
		}
		c := strings.Index(row, v.defaultText()[:min(len(v.defaultText()), 8)])
		if col == -1 {
			col = c
		}
		if c != col || c <= len(v.Name)+2 {
			t.Errorf("row of %s: default in column %d, others in %d:\n%s", v.Name, c, col, row)
		}
	}
	for _, l := range strings.Split(out, "\n") {
		if len(l) > 100 {
			t.Errorf("line longer than 100 columns: %q", l)
		}
	}
}

func TestWrap(t *testing.T) {
	got := wrap("aa bb cc averyveryverylongword d", 6)
	want := []string{"aa bb", "cc", "averyveryverylongword", "d"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("wrap = %q, want %q", got, want)
	}
}

func TestDefaultsAreValid(t *testing.T) {
	// Each default must parse, and the table must not repeat a name.
	seen := map[string]bool{}
	for i := range variables {
		v := &variables[i]
		if seen[v.Name] {
			t.Errorf("%s twice in the table", v.Name)
		}
		seen[v.Name] = true
		if v.Allowed == "" || v.Meaning == "" {
			t.Errorf("%s: Allowed or Meaning empty", v.Name)
		}
		if v.Required {
			continue
		}
		if _, err := load(v.Name + "=" + v.Default); err != nil {
			t.Errorf("default of %s: %v", v.Name, err)
		}
	}
}
