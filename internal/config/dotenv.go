package config

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// maxDotenvSize bounds what ParseDotenv reads: a configuration file is a
// few hundred bytes, anything near this is not one.
const maxDotenvSize = 1 << 20

// ParseDotenv parses a dotenv-style file read from r; name is used in
// errors only. The syntax, one assignment per line:
//
//	# a comment line; blank lines are skipped
//	KEY=value                 unquoted: surrounding blanks are trimmed,
//	                          " #..." (blank, then #) starts a comment
//	export KEY=value          the "export " prefix of shell files is accepted
//	KEY='literal $ \ "'       single quotes: nothing is special inside
//	KEY="a \" \\ \$ \` b"     double quotes: \" \\ \$ \` are escapes,
//	                          any other backslash stays as it is
//
// KEY is [A-Za-z_][A-Za-z0-9_]*. Blanks around '=' are allowed, CRLF line
// ends too. Unlike a shell, no expansion happens, so an unescaped '$' or '`'
// outside single quotes is an error rather than a silent literal; so is a
// quote or a backslash inside an unquoted value, a quote that is not closed
// on its line, a NUL byte, and a key set twice. A malformed line gives a
// *SyntaxError naming name:line.
func ParseDotenv(r io.Reader, name string) (map[string]string, error) {
	entries, err := parseDotenv(r, name)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(entries))
	for k, e := range entries {
		m[k] = e.value
	}
	return m, nil
}

// dotenvEntry is one assignment of a dotenv file and the line it is on.
type dotenvEntry struct {
	value string
	line  int
}

// readDotenv opens and parses the file at path.
func readDotenv(path string) (map[string]dotenvEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	return parseDotenv(f, path)
}

func parseDotenv(r io.Reader, name string) (map[string]dotenvEntry, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxDotenvSize+1))
	if err != nil {
		return nil, fmt.Errorf("config file: read %s: %w", oneLine(name), err)
	}
	if len(data) > maxDotenvSize {
		return nil, fmt.Errorf("config file %s: larger than %d bytes", oneLine(name), maxDotenvSize)
	}
	entries := make(map[string]dotenvEntry)
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		key, value, ok, reason := parseDotenvLine(line)
		if reason != "" {
			return nil, &SyntaxError{File: name, Line: n, Reason: reason}
		}
		if !ok {
			continue
		}
		if prev, dup := entries[key]; dup {
			return nil, &SyntaxError{File: name, Line: n,
				Reason: fmt.Sprintf("%s set again (first set on line %d)", key, prev.line)}
		}
		entries[key] = dotenvEntry{value: value, line: n}
	}
	return entries, nil
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }

func trimBlanks(s string) string { return strings.Trim(s, " \t") }

func isKeyByte(c byte, first bool) bool {
	return c == '_' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || !first && '0' <= c && c <= '9'
}

// parseDotenvLine parses one line. ok is false for a blank or comment line;
// a non-empty reason means the line is malformed.
func parseDotenvLine(line string) (key, value string, ok bool, reason string) {
	if strings.IndexByte(line, 0) >= 0 {
		return "", "", false, "NUL byte in line"
	}
	s := strings.TrimLeft(strings.TrimSuffix(line, "\r"), " \t")
	if s == "" || s[0] == '#' {
		return "", "", false, ""
	}
	if len(s) > len("export") && strings.HasPrefix(s, "export") && isBlank(s[len("export")]) {
		s = strings.TrimLeft(s[len("export"):], " \t")
	}
	i := 0
	for i < len(s) && isKeyByte(s[i], i == 0) {
		i++
	}
	key, s = s[:i], s[i:]
	rest := strings.TrimLeft(s, " \t")
	switch {
	case key == "" && rest != "" && rest[0] == '=':
		return "", "", false, "missing variable name before '='"
	case key == "":
		return "", "", false, fmt.Sprintf("expected KEY=VALUE, found %s", quoteLine(s))
	case rest == "":
		return "", "", false, fmt.Sprintf("expected '=' after %s", key)
	case rest[0] != '=':
		return "", "", false, fmt.Sprintf("invalid character %q in variable name %s", rest[0], key)
	}
	after := rest[1:]
	trimmed := strings.TrimLeft(after, " \t")
	if trimmed != "" && trimmed[0] == '#' && len(trimmed) < len(after) {
		return key, "", true, "" // KEY= # comment
	}
	value, reason = parseDotenvValue(trimmed)
	if reason != "" {
		return "", "", false, key + ": " + reason
	}
	return key, value, true, ""
}

// parseDotenvValue parses what follows "KEY=" (blanks already trimmed).
func parseDotenvValue(s string) (value, reason string) {
	if s == "" {
		return "", ""
	}
	var tail string
	switch s[0] {
	case '\'':
		end := strings.IndexByte(s[1:], '\'')
		if end < 0 {
			return "", "unterminated single quote"
		}
		value, tail = s[1:1+end], s[2+end:]
	case '"':
		var b strings.Builder
		i := 1
		for ; i < len(s) && s[i] != '"'; i++ {
			switch c := s[i]; c {
			case '\\':
				if i+1 == len(s) {
					return "", "unterminated double quote"
				}
				switch n := s[i+1]; n {
				case '"', '\\', '$', '`':
					b.WriteByte(n)
				default:
					b.WriteByte('\\')
					b.WriteByte(n)
				}
				i++
			case '$', '`':
				return "", fmt.Sprintf("%q would be expanded by a shell; no expansion is done here: escape it as \\%c or use single quotes", c, c)
			default:
				b.WriteByte(c)
			}
		}
		if i == len(s) {
			return "", "unterminated double quote"
		}
		value, tail = b.String(), s[i+1:]
	default:
		value = s
		for i := 1; i < len(s); i++ {
			if s[i] == '#' && isBlank(s[i-1]) {
				value = s[:i]
				break
			}
		}
		value = trimBlanks(value)
		if i := strings.IndexAny(value, "'\"\\$`"); i >= 0 {
			return "", fmt.Sprintf("%q in an unquoted value: quote the whole value ('...' takes everything literally)", value[i])
		}
		return value, ""
	}
	if t := strings.TrimLeft(tail, " \t"); t != "" && (t[0] != '#' || t == tail) {
		return "", fmt.Sprintf("unexpected %s after the closing quote", quoteLine(tail))
	}
	return value, ""
}

// quoteLine quotes a piece of a line for an error, shortened to 40 bytes.
func quoteLine(s string) string {
	if len(s) > 40 {
		return strconv.Quote(s[:40]) + "..."
	}
	return strconv.Quote(s)
}
