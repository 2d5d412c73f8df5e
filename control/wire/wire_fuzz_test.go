package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// fuzzSeeds are the seed inputs of FuzzDecodeRequest, each named by the edge
// case it covers. TestSerdeOracle checks them against serde_json as well.
var fuzzSeeds = []struct {
	edge string
	in   string
}{
	// The golden forms.
	{"RequestUDS", `{"RequestUDS":["eth0",1234]}`},
	{"RequestNetmapPipe", `{"RequestNetmapPipe":["eth0",1234]}`},
	{"AddMatch as the original client sends it", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":null,"src_port":null,"protocol":6}}`},
	{"RemoveMatch with remote", `{"RemoveMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":22,"src_addr":{"Ipv4":"198.18.0.2"},"src_port":41234,"protocol":6}}`},
	{"unit variant QueryUsedPorts", `"QueryUsedPorts"`},
	{"unit variant DeleteClient", `"DeleteClient"`},
	{"new unit variant QueryStatus", `"QueryStatus"`},
	{"IPv6 address", `{"AddMatch":{"dst_addr":{"Ipv6":"2001:db8::1"},"dst_port":443,"src_addr":null,"src_port":null,"protocol":17}}`},

	// Forms serde accepts that are not what it writes.
	{"unit variant as a one-key object with null", `{"QueryUsedPorts":null}`},
	{"unit variant as object with a non-null value", `{"QueryUsedPorts":{}}`},
	{"fields in another order, whitespace everywhere", " {\t\"AddMatch\" :\n{ \"protocol\" : 6 , \"dst_addr\" : { \"Ipv4\" : \"198.18.0.1\" } }\r\n} "},
	{"optional fields absent", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":1}}`},
	{"unknown field with nested junk", `{"AddMatch":{"x":[{"y":[1,-2.5e-3,true,false,null,"\ud800"]}],"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`},
	{"struct in sequence form", `{"AddMatch":[{"Ipv4":"198.18.0.1"},80,null,null,6]}`},
	{"struct in sequence form, 4 elements", `{"AddMatch":[{"Ipv4":"198.18.0.1"},80,null,null]}`},
	{"escaped tag and field names", `{"\u0041ddMatch":{"dst\u005faddr":{"Ipv\u0034":"198.18.0.1"},"protocol":6}}`},
	{"uppercase IPv6 text", `{"AddMatch":{"dst_addr":{"Ipv6":"2001:DB8:0:0:0:0:0:1"},"protocol":6}}`},
	{"IPv4-compatible IPv6 in old Rust spelling", `{"AddMatch":{"dst_addr":{"Ipv6":"::1.2.3.4"},"protocol":6}}`},
	{"IPv4-mapped IPv6", `{"AddMatch":{"dst_addr":{"Ipv6":"::ffff:198.18.0.1"},"protocol":6}}`},

	// Tuples.
	{"tuple with 3 elements", `{"RequestUDS":["eth0",1234,5]}`},
	{"tuple with 1 element", `{"RequestUDS":["eth0"]}`},
	{"tuple empty", `{"RequestUDS":[]}`},
	{"tuple as object", `{"RequestUDS":{"0":"eth0","1":1234}}`},
	{"tuple with trailing comma", `{"RequestUDS":["eth0",1234,]}`},
	{"tuple variant as bare string", `"RequestUDS"`},
	{"tuple elements swapped", `{"RequestUDS":[1234,"eth0"]}`},

	// Nulls and types.
	{"null dst_addr", `{"AddMatch":{"dst_addr":null,"protocol":6}}`},
	{"null protocol", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":null}}`},
	{"missing protocol", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"}}}`},
	{"port as string", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":"80","protocol":6}}`},
	{"address as bare string", `{"AddMatch":{"dst_addr":"198.18.0.1","protocol":6}}`},
	{"address family as bare string", `{"AddMatch":{"dst_addr":"Ipv4","protocol":6}}`},
	{"address family unknown", `{"AddMatch":{"dst_addr":{"Ipv5":"198.18.0.1"},"protocol":6}}`},
	{"AddMatch null", `{"AddMatch":null}`},

	// Numbers.
	{"port 65535", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":65535,"protocol":255}}`},
	{"port 65536", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":65536,"protocol":6}}`},
	{"port -1", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":-1,"protocol":6}}`},
	{"port -0", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":-0,"protocol":6}}`},
	{"port 80.0", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":80.0,"protocol":6}}`},
	{"port 8e1", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8e1,"protocol":6}}`},
	{"port leading zero", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":080,"protocol":6}}`},
	{"protocol 256", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":256}}`},
	{"huge number", `{"RequestUDS":["eth0",123456789012345678901234567890]}`},
	{"huge exponent in an ignored field", `{"AddMatch":{"n":1e999999,"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`},
	{"PID max int32", `{"RequestUDS":["eth0",2147483647]}`},
	{"PID beyond int32, valid u64", `{"RequestUDS":["eth0",2147483648]}`},
	{"PID u64 max", `{"RequestUDS":["eth0",18446744073709551615]}`},
	{"PID u64 max + 1", `{"RequestUDS":["eth0",18446744073709551616]}`},
	{"PID negative", `{"RequestUDS":["eth0",-1]}`},

	// Keys.
	{"duplicate field", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":1,"dst_port":2,"protocol":6}}`},
	{"duplicate null field", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"src_addr":null,"src_addr":null,"protocol":6}}`},
	{"duplicate unknown field (ignored)", `{"AddMatch":{"x":1,"x":2,"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`},
	{"duplicate top-level tag", `{"DeleteClient":null,"DeleteClient":null}`},
	{"two top-level keys", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6},"DeleteClient":null}`},
	{"address with two keys", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1","Ipv6":"::1"},"protocol":6}}`},
	{"field name in another case", `{"AddMatch":{"Dst_Addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`},
	{"tag in another case", `"queryusedports"`},

	// Strings and bytes.
	{"invalid UTF-8", "{\"RequestUDS\":[\"eth\xff\",1]}"},
	{"overlong UTF-8", "\"Query\xc0\xafUsedPorts\""},
	{"UTF-8 BOM", "\xef\xbb\xbf\"QueryUsedPorts\""},
	{"lone surrogate in a kept string", `{"RequestUDS":["\ud800",1]}`},
	{"lone trailing surrogate in a key", `{"AddMatch":{"\udc00":1,"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`},
	{"surrogate pair", `{"RequestUDS":["\ud83d\ude00",1]}`},
	{"raw control character in a string", "{\"RequestUDS\":[\"eth\t0\",1]}"},
	{"escaped NUL in interface", `{"RequestUDS":["eth\u00000",1]}`},
	{"invalid escape", `{"RequestUDS":["eth\x30",1]}`},
	{"unterminated string", `{"RequestUDS":["eth0`},
	{"escapes serde writes", `{"RequestUDS":["a\u0001\"\\b",7]}`},

	// Interface names.
	{"interface 15 bytes", `{"RequestUDS":["abcdefghijklmno",1]}`},
	{"interface 16 bytes", `{"RequestUDS":["abcdefghijklmnop",1]}`},
	{"interface empty", `{"RequestUDS":["",1]}`},
	{"interface with slash", `{"RequestUDS":["a/b",1]}`},
	{"interface with colon", `{"RequestUDS":["eth0:1",1]}`},
	{"interface dot-dot", `{"RequestUDS":["..",1]}`},

	// Addresses.
	{"IPv4 tag, IPv6 text", `{"AddMatch":{"dst_addr":{"Ipv4":"2001:db8::1"},"protocol":6}}`},
	{"IPv6 tag, IPv4 text", `{"AddMatch":{"dst_addr":{"Ipv6":"198.18.0.1"},"protocol":6}}`},
	{"IPv6 zone", `{"AddMatch":{"dst_addr":{"Ipv6":"fe80::1%eth0"},"protocol":6}}`},
	{"IPv4 leading zero", `{"AddMatch":{"dst_addr":{"Ipv4":"198.018.0.1"},"protocol":6}}`},
	{"not an address", `{"AddMatch":{"dst_addr":{"Ipv4":"localhost"},"protocol":6}}`},
	{"bad src_addr", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"src_addr":{"Ipv4":"x"},"protocol":6}}`},

	// Structure.
	{"empty input", ``},
	{"whitespace only", " \n"},
	{"null", `null`},
	{"empty object", `{}`},
	{"empty array", `[]`},
	{"unknown message type", `"Hello"`},
	{"unknown tagged type", `{"Hello":null}`},
	{"answer sent as request", `{"QueryUsedPortsAnswer":{"listening":[],"connected":[]}}`},
	{"trailing garbage", `"DeleteClient"x`},
	{"two messages", `"DeleteClient""DeleteClient"`},
	{"trailing comma in object", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6,}}`},
	{"missing closing brace", `{"DeleteClient":null`},
	{"raw answer sent as request", `OK`},
	// Deeper than serde_json's recursion limit (128), which does not apply
	// to ignored values; kept small so that the fuzzer can minimize
	// mutations of them (the unit tests use 20,000 levels).
	{"nested deep JSON in an unknown field", `{"AddMatch":{"x":` + strings.Repeat("[", 300) + strings.Repeat("]", 300) + `,"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`},
	{"nested deep unbalanced JSON", `{"AddMatch":{"x":` + strings.Repeat(`{"a":[`, 200)},
	{"deep nesting at the top", strings.Repeat("[", 300)},
}

// FuzzDecodeRequest: DecodeRequest never panics, fails only with a
// *DecodeError, and whatever it accepts encodes, and decodes again to an
// equal value and the same bytes.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s.in))
	}
	f.Add([]byte(`{"QueryPortsInUse":6}`))
	f.Add([]byte(`{"QueryPortsInUse":[6]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRequest(b)
		if err != nil {
			checkDecodeError(t, err, len(b))
			if req != nil {
				t.Fatalf("error %v with a non-nil request %#v", err, req)
			}
			return
		}
		enc, err := EncodeRequest(req)
		if err != nil {
			t.Fatalf("decoded %#v from %q, but it does not encode: %v", req, b, err)
		}
		req2, err := DecodeRequest(enc)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", enc, err)
		}
		if !requestsEqual(req, req2) {
			t.Fatalf("round trip changed the request: %#v -> %q -> %#v", req, enc, req2)
		}
		enc2, err := EncodeRequest(req2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable: %q then %q (%v)", enc, enc2, err)
		}
	})
}

// FuzzDecodeAnswer: DecodeAnswer never panics, fails only with a
// *DecodeError, and what it accepts encodes and decodes to the same bytes.
func FuzzDecodeAnswer(f *testing.F) {
	for _, s := range []string{
		RawOK, RawER, RawFD, "", "O", "OK\n",
		`{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},22]],"connected":[[6,{"Ipv4":"198.18.0.1"},41234]]}}`,
		`{"QueryUsedPortsAnswer":{"listening":[],"connected":[]}}`,
		`{"QueryUsedPortsAnswer":[[],[[17,{"Ipv6":"2001:db8::1"},53]]]}`,
		`{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"}]],"connected":[]}}`,
		goldenStatusWire,
		`{"QueryStatusAnswer":{}}`,
		`{"QueryStatusAnswer":{"rules":[{}]}}`,
		`"QueryUsedPorts"`,
		string(EncodePortsInUse(17, &PortSet{1: 0x80, 8191: 1})),
		`{"QueryPortsInUseAnswer":{"ports":"","protocol":6}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeAnswer(b)
		if err != nil {
			checkDecodeError(t, err, len(b))
			return
		}
		enc, err := EncodeAnswer(a)
		if err != nil {
			t.Fatalf("decoded %#v from %q, but it does not encode: %v", a, b, err)
		}
		a2, err := DecodeAnswer(enc)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", enc, err)
		}
		enc2, err := EncodeAnswer(a2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable: %q then %q (%v)", enc, enc2, err)
		}
	})
}

func checkDecodeError(t *testing.T, err error, n int) {
	t.Helper()
	var de *DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("error %v is a %T, not a *DecodeError", err, err)
	}
	if de.Err == nil || de.Msg == "" {
		t.Fatalf("DecodeError without sentinel or message: %#v", de)
	}
	if de.Offset < 0 || (de.Offset > n && !errors.Is(err, ErrTooLarge)) {
		t.Fatalf("offset %d outside the %d-byte message: %v", de.Offset, n, err)
	}
}

// requestsEqual compares requests by value (Match holds pointers).
func requestsEqual(a, b Request) bool {
	switch x := a.(type) {
	case AddMatch:
		y, ok := b.(AddMatch)
		return ok && x.Match.Equal(y.Match)
	case RemoveMatch:
		y, ok := b.(RemoveMatch)
		return ok && x.Match.Equal(y.Match)
	}
	return a == b
}
