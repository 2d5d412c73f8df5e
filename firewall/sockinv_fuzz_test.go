package firewall

import (
	"bytes"
	"testing"
)

// FuzzParseProcNet feeds arbitrary bytes to the /proc/net parser: it must
// never panic, and what it returns must be sane.
func FuzzParseProcNet(f *testing.F) {
	seeds := []struct {
		edge string
		in   string
		v6   bool
	}{
		{"tcp fixture", tcp4Fixture, false},
		{"tcp6 fixture", tcp6Fixture, true},
		{"header only", "  sl  local_address rem_address st\n", false},
		{"empty", "", false},
		{"no newline at the end", "h\n 0: 00000000:0016 00000000:0000 0A 0:0 0:0 0 0 0 1", false},
		{"IPv6 line in an IPv4 file", tcp6Fixture, false},
		{"IPv4 line in an IPv6 file", tcp4Fixture, true},
		{"CR line ends", "h\r\n 0: 00000000:0016 00000000:0000 0A 0:0 0:0 0 0 0 1\r\n", false},
		{"huge numbers", "h\n 0: FFFFFFFF:FFFF FFFFFFFF:FFFF FF 0:0 0:0 0 4294967295 0 18446744073709551615\n", false},
		{"only colons", "h\n:\n::\n: : : : : : : : : :\n", false},
		{"NUL bytes", "h\n\x00 \x00 \x00\n", false},
	}
	for _, s := range seeds {
		f.Add([]byte(s.in), s.v6)
	}
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		ss, err := ParseProcNet(b, ProtoTCP, v6)
		if err != nil {
			if ss != nil {
				t.Fatal("sockets returned with an error")
			}
			return
		}
		if len(ss) > bytes.Count(b, []byte{'\n'})+1 {
			t.Fatalf("%d sockets from %d lines", len(ss), bytes.Count(b, []byte{'\n'})+1)
		}
		for _, s := range ss {
			if !s.Local.IsValid() || !s.Remote.IsValid() || s.Proto != ProtoTCP {
				t.Fatalf("invalid socket %+v", s)
			}
			if !v6 && (!s.Local.Addr().Is4() || !s.Remote.Addr().Is4()) {
				t.Fatalf("IPv6 address from an IPv4 file: %v", s)
			}
			_ = s.String()
		}
	})
}
