package config

import (
	"strconv"
	"strings"
)

// Error is a bad value of one variable. Load returns it (as error) for the
// first bad value it meets; use errors.As to get at the fields.
type Error struct {
	Var     string // the variable, e.g. "DEBUG_PORTS"
	Value   string // the bad value: the whole value or, in a list, the bad item
	Reason  string // what is wrong with it
	Allowed string // what the variable accepts (from the table of variables)
	Source  string // "" for the environment or a default, else "CONFFILE:LINE"
}

// Error formats e as one line:
//
//	[SOURCE: ]VAR="value": reason (allowed: ...)
//
// The value is quoted with Go syntax, so that control characters cannot
// break the line.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Source != "" {
		b.WriteString(oneLine(e.Source))
		b.WriteString(": ")
	}
	b.WriteString(e.Var)
	b.WriteByte('=')
	b.WriteString(strconv.Quote(e.Value))
	b.WriteString(": ")
	b.WriteString(oneLine(e.Reason))
	if e.Allowed != "" {
		b.WriteString(" (allowed: ")
		b.WriteString(e.Allowed)
		b.WriteByte(')')
	}
	return b.String()
}

// SyntaxError is a malformed line of a dotenv file.
type SyntaxError struct {
	File   string // the name given to ParseDotenv
	Line   int    // 1-based line number
	Reason string
}

// Error formats e as "FILE:LINE: reason".
func (e *SyntaxError) Error() string {
	return oneLine(e.File) + ":" + strconv.Itoa(e.Line) + ": " + oneLine(e.Reason)
}

// oneLine quotes s if it holds anything that is not printable (a newline in
// a file name, say), so that every error stays one line.
func oneLine(s string) string {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
