package config

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Usage writes the help of `usnetd -h`: the command line, where the
// configuration comes from, and the table of variables.
func Usage(w io.Writer) {
	fmt.Fprint(w, `Usage: usnetd [-h|--help] [CONFFILE]

usnetd shares NICs between the Linux kernel and userspace network stacks.
It is configured by the environment variables below. CONFFILE is an optional
dotenv-style file of fallback values (KEY=VALUE lines, # comments, optional
"export " and quotes); a variable set in the environment wins over the file.
An empty value means the default (for METRICS_ADDR: no metrics server).

Variables:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  VARIABLE\tDEFAULT\tMEANING / ALLOWED")
	for i := range variables {
		v := &variables[i]
		def := wrap(v.defaultText(), 20)
		text := append(wrap(v.Meaning, 50), wrap("allowed: "+v.Allowed, 50)...)
		for j := range max(len(def), len(text)) {
			name := ""
			if j == 0 {
				name = v.Name
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, line(def, j), line(text, j))
		}
	}
	tw.Flush()
}

// MarkdownTable renders the table of variables as a Markdown table, the
// one in README.md between <!-- config-table:begin --> and
// <!-- config-table:end -->. It ends in a newline.
func MarkdownTable() string {
	var b strings.Builder
	b.WriteString("| variable | default | allowed | meaning |\n")
	b.WriteString("|---|---|---|---|\n")
	for i := range variables {
		v := &variables[i]
		def := v.defaultText()
		if v.Default != "" && v.DefaultText == "" {
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", v.Name, mdEscape(def), mdEscape(v.Allowed), mdEscape(v.Meaning))
	}
	return b.String()
}

// defaultText is the default as shown to people.
func (v *variable) defaultText() string {
	switch {
	case v.Required:
		return "required"
	case v.DefaultText != "":
		return v.DefaultText
	case v.Default != "":
		return v.Default
	}
	return "none"
}

// mdEscape escapes what would end a Markdown table cell or start markup.
func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "<", "&lt;", "*", `\*`).Replace(s)
}

// line returns lines[i], or "" past the end.
func line(lines []string, i int) string {
	if i < len(lines) {
		return lines[i]
	}
	return ""
}

// wrap breaks s into lines of at most width bytes at spaces (a longer word
// gets a line of its own).
func wrap(s string, width int) []string {
	var lines []string
	cur := ""
	for _, word := range strings.Fields(s) {
		switch {
		case cur == "":
			cur = word
		case len(cur)+1+len(word) <= width:
			cur += " " + word
		default:
			lines = append(lines, cur)
			cur = word
		}
	}
	return append(lines, cur)
}
