package config

import (
	"errors"
	"maps"
	"strings"
	"testing"
	"testing/iotest"
)

func TestParseDotenv(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]string
	}{
		{"empty file", "", map[string]string{}},
		{"comments and blank lines", "# c\n\n   # indented\n\t\nA=1\n", map[string]string{"A": "1"}},
		{"plain", "INTERFACES=eth0,eth1", map[string]string{"INTERFACES": "eth0,eth1"}},
		{"CRLF", "A=1\r\nB=2\r\n", map[string]string{"A": "1", "B": "2"}},
		{"export prefix", "export A=1\nexport\tB=2", map[string]string{"A": "1", "B": "2"}},
		{"export as a key", "export=1\nexportX=2", map[string]string{"export": "1", "exportX": "2"}},
		{"blanks around =", "  A = 1 \t", map[string]string{"A": "1"}},
		{"empty value", "A=\nB=''\nC=\"\"", map[string]string{"A": "", "B": "", "C": ""}},
		{"inline comment", "A=eth0 # uplink\nB=a#b\nC=#x", map[string]string{"A": "eth0", "B": "a#b", "C": "#x"}},
		{"only a comment after =", "A= # nothing", map[string]string{"A": ""}},
		{"inner blanks kept", "A=a  b", map[string]string{"A": "a  b"}},
		{"single quotes are literal", `A='x $y \z "q" # not a comment'`, map[string]string{"A": `x $y \z "q" # not a comment`}},
		{"double quote escapes", `A="a\"b\\c\$d\` + "`" + `e\nf"`, map[string]string{"A": "a\"b\\c$d`e\\nf"}},
		{"comment after quotes", `A='x' # c` + "\n" + `B="y"   `, map[string]string{"A": "x", "B": "y"}},
		{"underscore and digits in keys", "_A1_=x", map[string]string{"_A1_": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDotenv(strings.NewReader(tt.in), "test.env")
			if err != nil {
				t.Fatalf("ParseDotenv(%q): %v", tt.in, err)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("ParseDotenv(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseDotenvErrors(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // the whole error text
	}{
		{"no =", "A=1\nINTERFACES\n", "f.env:2: expected '=' after INTERFACES"},
		{"no key", "=1", "f.env:1: missing variable name before '='"},
		{"bad key start", "1A=x", `f.env:1: expected KEY=VALUE, found "1A=x"`},
		{"bad key char", "A-B=x", `f.env:1: invalid character '-' in variable name A`},
		{"space in key", "A B=x", `f.env:1: invalid character 'B' in variable name A`},
		{"unterminated single", "A='x", "f.env:1: A: unterminated single quote"},
		{"unterminated double", `A="x`, "f.env:1: A: unterminated double quote"},
		{"backslash at end in double", `A="x\`, "f.env:1: A: unterminated double quote"},
		{"text after quote", `A='x'y`, `f.env:1: A: unexpected "y" after the closing quote`},
		{"comment glued to quote", `A='x'#c`, `f.env:1: A: unexpected "#c" after the closing quote`},
		{"dollar unquoted", "A=$HOME", `f.env:1: A: '$' in an unquoted value: quote the whole value ('...' takes everything literally)`},
		{"dollar in double quotes", `A="$HOME"`, "f.env:1: A: '$' would be expanded by a shell; no expansion is done here: escape it as \\$ or use single quotes"},
		{"backtick in double quotes", "A=\"`id`\"", "f.env:1: A: '`' would be expanded by a shell; no expansion is done here: escape it as \\` or use single quotes"},
		{"quote inside unquoted", `A=a"b"`, `f.env:1: A: '"' in an unquoted value: quote the whole value ('...' takes everything literally)`},
		{"backslash unquoted", `A=a\ b`, `f.env:1: A: '\\' in an unquoted value: quote the whole value ('...' takes everything literally)`},
		{"NUL byte", "A=a\x00b", "f.env:1: NUL byte in line"},
		{"key twice", "A=1\n#\nA=2", "f.env:3: A set again (first set on line 1)"},
		{"multi-line value", "A='x\ny'", "f.env:1: A: unterminated single quote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseDotenv(strings.NewReader(tt.in), "f.env")
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("ParseDotenv(%q) error = %v, want a *SyntaxError", tt.in, err)
			}
			if err.Error() != tt.want {
				t.Errorf("ParseDotenv(%q) error\n got: %s\nwant: %s", tt.in, err, tt.want)
			}
		})
	}
}

func TestParseDotenvTooLarge(t *testing.T) {
	in := strings.Repeat("# padding\n", maxDotenvSize/10+1)
	if _, err := ParseDotenv(strings.NewReader(in), "big.env"); err == nil || !strings.Contains(err.Error(), "big.env") {
		t.Fatalf("ParseDotenv of %d bytes: error = %v, want one naming big.env", len(in), err)
	}
}

func TestParseDotenvReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := ParseDotenv(iotest.ErrReader(boom), "r.env")
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "r.env") {
		t.Fatalf("error = %v, want one wrapping boom and naming r.env", err)
	}
}

// FuzzParseDotenv checks that ParseDotenv never panics, that every key it
// returns is a valid name, and that a result written back with double
// quotes parses to the same map.
func FuzzParseDotenv(f *testing.F) {
	f.Add("INTERFACES=eth0\nDEBUG_PORTS=eth0:TCP:22\n") // the seed README's example
	f.Add("export A='x' # c\r\n")                       // export prefix, single quotes, comment, CRLF
	f.Add(`A="a\"b\\c\$d\e"`)                           // every escape and an unknown one
	f.Add("A='unterminated\nB=\"also")                  // quotes not closed on their line
	f.Add("A=1\nA=2")                                   // a key set twice
	f.Add("A= # comment only\n=x\n1=y")                 // empty value by comment, missing and bad keys
	f.Add("A=\x00\nB=\xff\xfe")                         // NUL and invalid UTF-8
	f.Add("A=a b #c\tB\n  \t#\n\texport\n")             // inner blanks, lone "export"
	f.Add("A=\"\\")                                     // backslash at the very end
	f.Fuzz(func(t *testing.T, in string) {
		m, err := ParseDotenv(strings.NewReader(in), "fuzz.env")
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error with a newline: %q", err)
			}
			return
		}
		var b strings.Builder
		for k, v := range m {
			if k == "" || !isKeyByte(k[0], true) {
				t.Fatalf("bad key %q", k)
			}
			for i := 1; i < len(k); i++ {
				if !isKeyByte(k[i], false) {
					t.Fatalf("bad key %q", k)
				}
			}
			if strings.ContainsAny(v, "\n\x00") {
				t.Fatalf("value of %s has a newline or NUL: %q", k, v)
			}
			b.WriteString(k + `="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`, "`", "\\`").Replace(v) + "\"\n")
		}
		again, err := ParseDotenv(strings.NewReader(b.String()), "again.env")
		if err != nil {
			t.Fatalf("written back as\n%s\nit does not parse: %v", b.String(), err)
		}
		if !maps.Equal(m, again) {
			t.Fatalf("round trip changed %q to %q", m, again)
		}
	})
}
