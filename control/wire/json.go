package wire

// A small strict JSON reader and writer that behave like serde_json, which
// the original used on both ends of the control socket. encoding/json is not
// used for decoding because it differs from serde_json where it matters for
// an untrusted peer: it matches field names case-insensitively, replaces
// invalid UTF-8 and lone surrogates with U+FFFD instead of failing, and takes
// the last of duplicate fields. It is not used for encoding because it
// escapes <, >, & and U+2028/U+2029, which serde_json does not.
//
// The reader works on one complete message in memory (at most
// MaxMessageSize or MaxAnswerSize bytes, already checked to be valid UTF-8),
// never recurses on untrusted nesting (skip is iterative, the typed decoders
// only descend as deep as the message types are), and never panics.

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// reader walks one JSON message. path names the field being decoded, for
// error messages ("AddMatch.dst_port").
type reader struct {
	b    []byte
	i    int
	path []string
}

// errf returns a *DecodeError at the current offset.
func (r *reader) errf(sentinel error, format string, args ...any) *DecodeError {
	return r.errAt(r.i, sentinel, format, args...)
}

func (r *reader) errAt(off int, sentinel error, format string, args ...any) *DecodeError {
	return &DecodeError{
		Offset: off,
		Field:  strings.Join(r.path, "."),
		Msg:    fmt.Sprintf(format, args...),
		Err:    sentinel,
	}
}

func (r *reader) push(name string) { r.path = append(r.path, name) }
func (r *reader) pop()             { r.path = r.path[:len(r.path)-1] }

// ws skips JSON whitespace (the same four bytes serde_json skips).
func (r *reader) ws() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// peek skips whitespace and returns the next byte without consuming it.
// ok is false at the end of the input.
func (r *reader) peek() (c byte, ok bool) {
	r.ws()
	if r.i >= len(r.b) {
		return 0, false
	}
	return r.b[r.i], true
}

// describe names the kind of the value that starts at the next byte, for
// "expected X, found Y" messages.
func (r *reader) describe() string {
	c, ok := r.peek()
	if !ok {
		return "end of input"
	}
	switch {
	case c == '"':
		return "a string"
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	}
	return fmt.Sprintf("byte %q", c)
}

// wrongType reports that the value at the cursor is not what was expected.
// It is a syntax error if the next byte cannot start any JSON value.
func (r *reader) wrongType(want string) *DecodeError {
	c, ok := r.peek()
	if !ok {
		return r.errf(ErrSyntax, "unexpected end of input, expected %s", want)
	}
	switch {
	case c == '"', c == '{', c == '[', c == 't', c == 'f', c == 'n', c == '-', c >= '0' && c <= '9':
		return r.errf(ErrWrongType, "expected %s, found %s", want, r.describe())
	}
	return r.errf(ErrSyntax, "expected %s, found %q", want, c)
}

// expect consumes byte c after optional whitespace.
func (r *reader) expect(c byte, what string) error {
	got, ok := r.peek()
	if !ok {
		return r.errf(ErrSyntax, "unexpected end of input, expected %s", what)
	}
	if got != c {
		return r.errf(ErrSyntax, "expected %s, found %q", what, got)
	}
	r.i++
	return nil
}

// literal consumes the rest of true, false or null (the first byte was
// peeked, not consumed).
func (r *reader) literal(word string) error {
	start := r.i
	for k := 0; k < len(word); k++ {
		if r.i >= len(r.b) {
			return r.errAt(start, ErrSyntax, "unexpected end of input in %q", word)
		}
		if r.b[r.i] != word[k] {
			return r.errf(ErrSyntax, "invalid literal, expected %q", word)
		}
		r.i++
	}
	return nil
}

// null consumes a JSON null if one is next and reports whether it did.
func (r *reader) null() (bool, error) {
	c, ok := r.peek()
	if !ok || c != 'n' {
		return false, nil
	}
	return true, r.literal("null")
}

// boolean decodes true or false.
func (r *reader) boolean() (bool, error) {
	c, ok := r.peek()
	if ok && c == 't' {
		return true, r.literal("true")
	}
	if ok && c == 'f' {
		return false, r.literal("false")
	}
	return false, r.wrongType("a boolean")
}

// str decodes a JSON string. With strict, escapes must form valid Unicode
// (serde_json's rule for strings it keeps); without, a \u escape only needs
// four hex digits (serde_json's rule for values it ignores). Raw control
// characters are rejected either way.
func (r *reader) str(strict bool) (string, error) {
	c, ok := r.peek()
	if !ok || c != '"' {
		return "", r.wrongType("a string")
	}
	r.i++
	start := r.i
	// Fast path: no escapes.
	for r.i < len(r.b) {
		c := r.b[r.i]
		if c == '"' {
			s := string(r.b[start:r.i])
			r.i++
			return s, nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return "", r.errf(ErrSyntax, "control character 0x%02x in a string (must be escaped)", c)
		}
		r.i++
	}
	buf := append([]byte(nil), r.b[start:r.i]...)
	for {
		if r.i >= len(r.b) {
			return "", r.errf(ErrSyntax, "unexpected end of input in a string")
		}
		c := r.b[r.i]
		switch {
		case c == '"':
			r.i++
			return string(buf), nil
		case c < 0x20:
			return "", r.errf(ErrSyntax, "control character 0x%02x in a string (must be escaped)", c)
		case c != '\\':
			buf = append(buf, c)
			r.i++
			continue
		}
		// An escape.
		escAt := r.i
		r.i++
		if r.i >= len(r.b) {
			return "", r.errf(ErrSyntax, "unexpected end of input in an escape")
		}
		e := r.b[r.i]
		r.i++
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			u1, err := r.hex4()
			if err != nil {
				return "", err
			}
			if !strict {
				// Only the syntax counts; the value is thrown away.
				continue
			}
			switch {
			case u1 >= 0xDC00 && u1 <= 0xDFFF:
				return "", r.errAt(escAt, ErrSyntax, "lone trailing surrogate \\u%04X in a string", u1)
			case u1 >= 0xD800 && u1 <= 0xDBFF:
				if r.i+1 >= len(r.b) || r.b[r.i] != '\\' || r.b[r.i+1] != 'u' {
					return "", r.errAt(escAt, ErrSyntax, "lone leading surrogate \\u%04X in a string", u1)
				}
				r.i += 2
				u2, err := r.hex4()
				if err != nil {
					return "", err
				}
				if u2 < 0xDC00 || u2 > 0xDFFF {
					return "", r.errAt(escAt, ErrSyntax, "lone leading surrogate \\u%04X in a string", u1)
				}
				buf = utf8.AppendRune(buf, utf16.DecodeRune(rune(u1), rune(u2)))
			default:
				buf = utf8.AppendRune(buf, rune(u1))
			}
		default:
			return "", r.errAt(escAt, ErrSyntax, "invalid escape %q in a string", "\\"+string(rune(e)))
		}
	}
}

func (r *reader) hex4() (uint16, error) {
	if r.i+4 > len(r.b) {
		return 0, r.errf(ErrSyntax, "unexpected end of input in a \\u escape")
	}
	var v uint16
	for k := 0; k < 4; k++ {
		c := r.b[r.i+k]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, r.errAt(r.i+k, ErrSyntax, "invalid hex digit %q in a \\u escape", c)
		}
		v = v<<4 | uint16(d)
	}
	r.i += 4
	return v, nil
}

// number scans a JSON number (RFC 8259 grammar, as serde_json: no leading
// zeros, no '+', no bare '.'). It reports whether the token is a plain
// non-negative integer, and if so its value and whether that fits in 64 bits.
func (r *reader) number() (tok []byte, integer bool, v uint64, fits bool, err error) {
	start := r.i
	neg := false
	if r.i < len(r.b) && r.b[r.i] == '-' {
		neg = true
		r.i++
	}
	if r.i >= len(r.b) {
		return nil, false, 0, false, r.errf(ErrSyntax, "unexpected end of input in a number")
	}
	switch c := r.b[r.i]; {
	case c == '0':
		r.i++
		if r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
			return nil, false, 0, false, r.errf(ErrSyntax, "invalid number: leading zero")
		}
	case c >= '1' && c <= '9':
		for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
			r.i++
		}
	default:
		return nil, false, 0, false, r.errf(ErrSyntax, "invalid number")
	}
	intEnd := r.i
	frac := false
	if r.i < len(r.b) && r.b[r.i] == '.' {
		frac = true
		r.i++
		d := r.i
		for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
			r.i++
		}
		if r.i == d {
			return nil, false, 0, false, r.errf(ErrSyntax, "invalid number: no digit after '.'")
		}
	}
	if r.i < len(r.b) && (r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		frac = true
		r.i++
		if r.i < len(r.b) && (r.b[r.i] == '+' || r.b[r.i] == '-') {
			r.i++
		}
		d := r.i
		for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
			r.i++
		}
		if r.i == d {
			return nil, false, 0, false, r.errf(ErrSyntax, "invalid number: no digit in the exponent")
		}
	}
	tok = r.b[start:r.i]
	if neg || frac {
		return tok, false, 0, false, nil
	}
	v, perr := strconv.ParseUint(string(r.b[start:intEnd]), 10, 64)
	return tok, true, v, perr == nil, nil
}

// uint decodes a non-negative integer no greater than max; typ names the
// type for messages ("u16"). Negative numbers, fractions and exponents are
// rejected, as serde does for unsigned integer types.
func (r *reader) uint(max uint64, typ string) (uint64, error) {
	c, ok := r.peek()
	if !ok || !(c == '-' || (c >= '0' && c <= '9')) {
		return 0, r.wrongType(typ)
	}
	start := r.i
	tok, integer, v, fits, err := r.number()
	if err != nil {
		return 0, err
	}
	switch {
	case !integer && tok[0] == '-' && !containsAny(tok, ".eE"):
		return 0, r.errAt(start, ErrOutOfRange, "%s is negative, expected %s (0..%d)", tok, typ, max)
	case !integer:
		return 0, r.errAt(start, ErrWrongType, "%s is not an integer, expected %s", tok, typ)
	case !fits || v > max:
		return 0, r.errAt(start, ErrOutOfRange, "%s is out of range for %s (0..%d)", tok, typ, max)
	}
	return v, nil
}

func containsAny(b []byte, chars string) bool {
	return strings.ContainsAny(string(b), chars)
}

// object decodes {"key": value, ...}, calling each with the cursor on the
// value; each must consume the value. Keys are decoded strictly.
func (r *reader) object(each func(key string, keyOff int) error) error {
	if c, ok := r.peek(); !ok || c != '{' {
		return r.wrongType("an object")
	}
	r.i++
	if c, ok := r.peek(); ok && c == '}' {
		r.i++
		return nil
	}
	for {
		if c, ok := r.peek(); !ok || c != '"' {
			if !ok {
				return r.errf(ErrSyntax, "unexpected end of input in an object")
			}
			return r.errf(ErrSyntax, "expected a string key in an object, found %q", c)
		}
		keyOff := r.i
		key, err := r.str(true)
		if err != nil {
			return err
		}
		if err := r.expect(':', "':' after an object key"); err != nil {
			return err
		}
		if err := each(key, keyOff); err != nil {
			return err
		}
		c, ok := r.peek()
		switch {
		case !ok:
			return r.errf(ErrSyntax, "unexpected end of input in an object")
		case c == ',':
			r.i++
		case c == '}':
			r.i++
			return nil
		default:
			return r.errf(ErrSyntax, "expected ',' or '}' in an object, found %q", c)
		}
	}
}

// array decodes [value, ...], calling each with the index and the cursor on
// the element; each must consume the element.
func (r *reader) array(each func(i int) error) error {
	if c, ok := r.peek(); !ok || c != '[' {
		return r.wrongType("an array")
	}
	r.i++
	if c, ok := r.peek(); ok && c == ']' {
		r.i++
		return nil
	}
	for n := 0; ; n++ {
		if err := each(n); err != nil {
			return err
		}
		c, ok := r.peek()
		switch {
		case !ok:
			return r.errf(ErrSyntax, "unexpected end of input in an array")
		case c == ',':
			r.i++
		case c == ']':
			r.i++
			return nil
		default:
			return r.errf(ErrSyntax, "expected ',' or ']' in an array, found %q", c)
		}
	}
}

// tuple decodes an array of exactly n elements (serde's tuples, tuple
// variants and structs in sequence form); what names it for messages.
func (r *reader) tuple(n int, what string, each func(i int) error) error {
	start := r.i
	count := 0
	err := r.array(func(i int) error {
		if i >= n {
			return r.errf(ErrTupleLength, "%s has more than %d elements", what, n)
		}
		count++
		return each(i)
	})
	if err != nil {
		return err
	}
	if count != n {
		return r.errAt(start, ErrTupleLength, "%s has %d elements, expected %d", what, count, n)
	}
	return nil
}

// skip consumes one JSON value of any shape, checking only its syntax, like
// serde_json's ignore_value (used for unknown fields). It is iterative, so
// deep nesting costs heap, not stack; the input size bounds it.
func (r *reader) skip() error {
	var stack []byte // open '[' and '{'
	for {
		// A value is expected here.
		c, ok := r.peek()
		if !ok {
			return r.errf(ErrSyntax, "unexpected end of input, expected a value")
		}
		opened := false
		switch {
		case c == 'n':
			if err := r.literal("null"); err != nil {
				return err
			}
		case c == 't':
			if err := r.literal("true"); err != nil {
				return err
			}
		case c == 'f':
			if err := r.literal("false"); err != nil {
				return err
			}
		case c == '-' || (c >= '0' && c <= '9'):
			if _, _, _, _, err := r.number(); err != nil {
				return err
			}
		case c == '"':
			if _, err := r.str(false); err != nil {
				return err
			}
		case c == '[' || c == '{':
			r.i++
			close := byte(']')
			if c == '{' {
				close = '}'
			}
			if d, ok := r.peek(); ok && d == close {
				r.i++
				break
			}
			stack = append(stack, c)
			opened = true
		default:
			return r.errf(ErrSyntax, "expected a value, found %q", c)
		}
		if opened {
			if stack[len(stack)-1] == '{' {
				if err := r.skipKey(); err != nil {
					return err
				}
			}
			continue
		}
		// A value is complete: close containers until one continues.
		for {
			if len(stack) == 0 {
				return nil
			}
			top := stack[len(stack)-1]
			c, ok := r.peek()
			if !ok {
				return r.errf(ErrSyntax, "unexpected end of input in a nested value")
			}
			if c == ',' {
				r.i++
				if top == '{' {
					if err := r.skipKey(); err != nil {
						return err
					}
				}
				break
			}
			if (top == '[' && c == ']') || (top == '{' && c == '}') {
				r.i++
				stack = stack[:len(stack)-1]
				continue
			}
			return r.errf(ErrSyntax, "unexpected %q in a nested value", c)
		}
	}
}

// skipKey consumes `"key":` inside a skipped object.
func (r *reader) skipKey() error {
	if c, ok := r.peek(); !ok || c != '"' {
		return r.errf(ErrSyntax, "expected a string key in an object")
	}
	if _, err := r.str(false); err != nil {
		return err
	}
	return r.expect(':', "':' after an object key")
}

// Writing: serde_json's compact form.

// appendString appends s as a JSON string escaped exactly as serde_json
// does: '"' and '\\' with a backslash; \b \t \n \f \r short; other bytes
// below 0x20 as \u00xx with lowercase hex; everything else (DEL, '/', '<',
// non-ASCII) raw. Invalid UTF-8 in s is replaced by U+FFFD, since serde
// strings are always valid UTF-8.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, "\uFFFD"...)
			} else {
				dst = append(dst, s[i:i+size]...)
			}
			i += size
			continue
		}
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\r':
			dst = append(dst, '\\', 'r')
		default:
			if c < 0x20 {
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			} else {
				dst = append(dst, c)
			}
		}
		i++
	}
	return append(dst, '"')
}
