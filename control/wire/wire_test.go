package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func p16(v uint16) *uint16 { return &v }

func pa(s string) *netip.Addr {
	a := netip.MustParseAddr(s)
	return &a
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// goldenRequests are wire strings exactly as serde_json writes them (the
// first ones are the original's documented forms); each must decode to want and want must
// encode to exactly these bytes. The IPv6 texts were checked against Rust's
// Display for Ipv6Addr (see testdata/serde-oracle).
var goldenRequests = []struct {
	wire string
	want Request
}{
	{`{"RequestUDS":["eth0",1234]}`, RequestUDS{Interface: "eth0", PID: 1234}},
	{`{"RequestNetmapPipe":["eth0",1234]}`, RequestNetmapPipe{Interface: "eth0", PID: 1234}},
	{`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":null,"src_port":null,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("198.18.0.1"), DstPort: p16(8080), Protocol: 6}}},
	{`{"RemoveMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":null,"src_port":null,"protocol":6}}`,
		RemoveMatch{Match{DstAddr: ip("198.18.0.1"), DstPort: p16(8080), Protocol: 6}}},
	{`"QueryUsedPorts"`, QueryUsedPorts{}},
	{`"DeleteClient"`, DeleteClient{}},
	{`"QueryStatus"`, QueryStatus{}},
	{`{"RequestSHM":["eth0",1234]}`, RequestSHM{Interface: "eth0", PID: 1234}},

	// Every optional field set; extremes of each number.
	{`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":22,"src_addr":{"Ipv4":"198.19.255.254"},"src_port":41234,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("198.18.0.1"), DstPort: p16(22), SrcAddr: pa("198.19.255.254"), SrcPort: p16(41234), Protocol: 6}}},
	{`{"AddMatch":{"dst_addr":{"Ipv4":"0.0.0.0"},"dst_port":0,"src_addr":null,"src_port":65535,"protocol":0}}`,
		AddMatch{Match{DstAddr: ip("0.0.0.0"), DstPort: p16(0), SrcPort: p16(65535), Protocol: 0}}},
	{`{"AddMatch":{"dst_addr":{"Ipv4":"255.255.255.255"},"dst_port":null,"src_addr":null,"src_port":null,"protocol":255}}`,
		AddMatch{Match{DstAddr: ip("255.255.255.255"), Protocol: 255}}},
	{`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":null,"src_addr":null,"src_port":null,"protocol":1}}`,
		AddMatch{Match{DstAddr: ip("198.18.0.1"), Protocol: 1}}},
	{`{"RequestUDS":["eth0",0]}`, RequestUDS{Interface: "eth0", PID: 0}},
	{`{"RequestUDS":["eth0",2147483647]}`, RequestUDS{Interface: "eth0", PID: 2147483647}},
	{`{"RequestUDS":["abcdefghijklmno",1]}`, RequestUDS{Interface: "abcdefghijklmno", PID: 1}},
	// serde_json's escapes: \" \\ short, other control bytes \u00xx, non-ASCII raw.
	{`{"RequestUDS":["a\u0001\"\\b",7]}`, RequestUDS{Interface: "a\x01\"\\b", PID: 7}},
	{`{"RequestUDS":["wlö0",7]}`, RequestUDS{Interface: "wlö0", PID: 7}},
	{`{"RequestUDS":["e\u001f` + "\x7f" + `",7]}`, RequestUDS{Interface: "e\x1f\x7f", PID: 7}},

	// IPv6, written as Rust's Display writes Ipv6Addr.
	{`{"AddMatch":{"dst_addr":{"Ipv6":"2001:db8::1"},"dst_port":443,"src_addr":null,"src_port":null,"protocol":17}}`,
		AddMatch{Match{DstAddr: ip("2001:db8::1"), DstPort: p16(443), Protocol: 17}}},
	{`{"AddMatch":{"dst_addr":{"Ipv6":"2001:db8::1"},"dst_port":443,"src_addr":{"Ipv6":"fe80::1"},"src_port":5353,"protocol":17}}`,
		AddMatch{Match{DstAddr: ip("2001:db8::1"), DstPort: p16(443), SrcAddr: pa("fe80::1"), SrcPort: p16(5353), Protocol: 17}}},
	{`{"AddMatch":{"dst_addr":{"Ipv6":"::"},"dst_port":1,"src_addr":null,"src_port":null,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("::"), DstPort: p16(1), Protocol: 6}}},
	{`{"AddMatch":{"dst_addr":{"Ipv6":"::1"},"dst_port":1,"src_addr":null,"src_port":null,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("::1"), DstPort: p16(1), Protocol: 6}}},
	// IPv4-mapped: kept as an IPv6 address, written ::ffff:a.b.c.d like Rust.
	{`{"AddMatch":{"dst_addr":{"Ipv6":"::ffff:198.18.0.1"},"dst_port":1,"src_addr":null,"src_port":null,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("::ffff:198.18.0.1"), DstPort: p16(1), Protocol: 6}}},
	// IPv4-compatible: hex groups (old Rust wrote ::1.2.3.4).
	{`{"AddMatch":{"dst_addr":{"Ipv6":"::102:304"},"dst_port":1,"src_addr":null,"src_port":null,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("::1.2.3.4"), DstPort: p16(1), Protocol: 6}}},
	// A single zero group is not compressed; of two equal runs the first is.
	{`{"AddMatch":{"dst_addr":{"Ipv6":"2001:db8:0:1:1:1:1:1"},"dst_port":1,"src_addr":null,"src_port":null,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("2001:db8:0:1:1:1:1:1"), DstPort: p16(1), Protocol: 6}}},
	{`{"AddMatch":{"dst_addr":{"Ipv6":"2001:db8::1:0:0:1"},"dst_port":1,"src_addr":null,"src_port":null,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("2001:db8:0:0:1:0:0:1"), DstPort: p16(1), Protocol: 6}}},
	{`{"AddMatch":{"dst_addr":{"Ipv6":"2001:0:0:1::1"},"dst_port":1,"src_addr":null,"src_port":null,"protocol":6}}`,
		AddMatch{Match{DstAddr: ip("2001:0:0:1:0:0:0:1"), DstPort: p16(1), Protocol: 6}}},
}

func TestGoldenRequests(t *testing.T) {
	for _, g := range goldenRequests {
		got, err := DecodeRequest([]byte(g.wire))
		if err != nil {
			t.Errorf("DecodeRequest(%s): %v", g.wire, err)
			continue
		}
		if !requestsEqual(got, g.want) {
			t.Errorf("DecodeRequest(%s) = %#v, want %#v", g.wire, got, g.want)
		}
		enc, err := EncodeRequest(g.want)
		if err != nil {
			t.Errorf("EncodeRequest(%#v): %v", g.want, err)
			continue
		}
		if string(enc) != g.wire {
			t.Errorf("EncodeRequest(%#v)\n got %s\nwant %s", g.want, enc, g.wire)
		}
	}
}

// Forms that serde_json accepts but never writes: each decodes, and encodes
// to the canonical bytes.
const am = `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":null,"src_addr":null,"src_port":null,"protocol":6}}`

var tolerantCases = []struct{ name, in, canon string }{
	{"unit variant as object", `{"QueryUsedPorts":null}`, `"QueryUsedPorts"`},
	{"unit variant as object, spaced", ` { "DeleteClient" : null } `, `"DeleteClient"`},
	{"new unit variant as object", `{"QueryStatus":null}`, `"QueryStatus"`},
	{"whitespace", " \t\r\n{ \"RequestUDS\" : [ \"eth0\" , 1234 ] }\n", `{"RequestUDS":["eth0",1234]}`},
	{"field order", `{"AddMatch":{"protocol":6,"src_port":null,"src_addr":null,"dst_port":null,"dst_addr":{"Ipv4":"198.18.0.1"}}}`, am},
	{"optional fields absent", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`, am},
	{"unknown fields ignored", `{"AddMatch":{"future":{"a":[1,2.5e-3,-7,true,false,null,"x"]},"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6,"zzz":1}}`, am},
	{"unknown fields repeated", `{"AddMatch":{"x":1,"x":2,"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`, am},
	{"ignored string with lone surrogate", `{"AddMatch":{"x":"\ud800","dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`, am},
	{"ignored number out of f64 range", `{"AddMatch":{"x":1e999999,"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`, am},
	{"deep ignored nesting", `{"AddMatch":{"x":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `,"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`, am},
	{"struct as sequence", `{"AddMatch":[{"Ipv4":"198.18.0.1"},null,null,null,6]}`, am},
	{"escaped names", `{"\u0041ddMatch":{"dst\u005faddr":{"\u0049pv4":"198.18.0.1"},"\u0070rotocol":6}}`, am},
	{"escaped address text", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.\u0031"},"protocol":6}}`, am},
	{"escaped slash in interface", `{"RequestUDS":["eth\u0030",1]}`, `{"RequestUDS":["eth0",1]}`},
	{"surrogate pair in interface", `{"RequestUDS":["\ud83d\ude00",1]}`, `{"RequestUDS":["😀",1]}`},
	{"uppercase IPv6", `{"AddMatch":{"dst_addr":{"Ipv6":"2001:DB8:0:0:0:0:0:1"},"protocol":6}}`,
		`{"AddMatch":{"dst_addr":{"Ipv6":"2001:db8::1"},"dst_port":null,"src_addr":null,"src_port":null,"protocol":6}}`},
	{"IPv4-compatible, old Rust spelling", `{"AddMatch":{"dst_addr":{"Ipv6":"::1.2.3.4"},"protocol":6}}`,
		`{"AddMatch":{"dst_addr":{"Ipv6":"::102:304"},"dst_port":null,"src_addr":null,"src_port":null,"protocol":6}}`},
	{"IPv4-mapped in hex", `{"AddMatch":{"dst_addr":{"Ipv6":"::ffff:c612:1"},"protocol":6}}`,
		`{"AddMatch":{"dst_addr":{"Ipv6":"::ffff:198.18.0.1"},"dst_port":null,"src_addr":null,"src_port":null,"protocol":6}}`},
}

func TestDecodeTolerant(t *testing.T) {
	for _, c := range tolerantCases {
		req, err := DecodeRequest([]byte(c.in))
		if err != nil {
			t.Errorf("%s: DecodeRequest: %v", c.name, err)
			continue
		}
		enc, err := EncodeRequest(req)
		if err != nil || string(enc) != c.canon {
			t.Errorf("%s: encodes as %s (%v), want %s", c.name, enc, err, c.canon)
		}
	}
}

const addr = `"dst_addr":{"Ipv4":"198.18.0.1"}`

var rejectCases = []struct {
	name string
	in   string
	want error
}{
	{"empty", ``, ErrSyntax},
	{"whitespace", "  ", ErrSyntax},
	{"null", `null`, ErrWrongType},
	{"number", `1`, ErrWrongType},
	{"array", `[]`, ErrWrongType},
	{"empty object", `{}`, ErrNotOneKey},
	{"raw bytes", `OK`, ErrSyntax},
	{"unknown unit", `"Hello"`, ErrUnknownType},
	{"unknown tag", `{"Hello":null}`, ErrUnknownType},
	{"tag case", `"queryusedports"`, ErrUnknownType},
	{"answer as request", `{"QueryUsedPortsAnswer":{"listening":[],"connected":[]}}`, ErrNotARequest},
	{"status answer as request", `{"QueryStatusAnswer":{}}`, ErrNotARequest},
	{"trailing garbage", `"DeleteClient"x`, ErrTrailingData},
	{"two messages", `"DeleteClient" "DeleteClient"`, ErrTrailingData},
	{"trailing garbage after object", `{"RequestUDS":["eth0",1]}}`, ErrTrailingData},
	{"duplicate tag", `{"DeleteClient":null,"DeleteClient":null}`, ErrNotOneKey},
	{"two tags", `{"RequestUDS":["eth0",1],"DeleteClient":null}`, ErrNotOneKey},
	{"unclosed", `{"DeleteClient":null`, ErrSyntax},
	{"unit with value", `{"QueryUsedPorts":{}}`, ErrWrongType},
	{"unit with false", `{"DeleteClient":false}`, ErrWrongType},
	{"unit with bad literal", `{"DeleteClient":nul}`, ErrSyntax},
	{"tuple variant bare", `"RequestUDS"`, ErrWrongType},
	{"newtype variant bare", `"AddMatch"`, ErrWrongType},
	{"newtype variant null", `{"AddMatch":null}`, ErrWrongType},
	{"tuple 3", `{"RequestUDS":["eth0",1,2]}`, ErrTupleLength},
	{"tuple 1", `{"RequestUDS":["eth0"]}`, ErrTupleLength},
	{"tuple 0", `{"RequestUDS":[]}`, ErrTupleLength},
	{"tuple trailing comma", `{"RequestUDS":["eth0",1,]}`, ErrTupleLength},
	{"tuple as object", `{"RequestUDS":{"0":"eth0","1":1}}`, ErrWrongType},
	{"tuple swapped", `{"RequestUDS":[1,"eth0"]}`, ErrWrongType},
	{"pid string", `{"RequestUDS":["eth0","1"]}`, ErrWrongType},
	{"pid negative", `{"RequestUDS":["eth0",-1]}`, ErrOutOfRange},
	{"pid -0", `{"RequestUDS":["eth0",-0]}`, ErrOutOfRange},
	{"pid fraction", `{"RequestUDS":["eth0",1.5]}`, ErrWrongType},
	{"pid 1.0", `{"RequestUDS":["eth0",1.0]}`, ErrWrongType},
	{"pid beyond int32", `{"RequestUDS":["eth0",2147483648]}`, ErrOutOfRange},
	{"pid beyond u64", `{"RequestUDS":["eth0",18446744073709551616]}`, ErrOutOfRange},
	{"pid leading zero", `{"RequestUDS":["eth0",01]}`, ErrSyntax},
	{"pid plus", `{"RequestUDS":["eth0",+1]}`, ErrSyntax},
	{"pid bare minus", `{"RequestUDS":["eth0",-]}`, ErrSyntax},
	{"pid 1.", `{"RequestUDS":["eth0",1.]}`, ErrSyntax},
	{"pid 1e", `{"RequestUDS":["eth0",1e]}`, ErrSyntax},
	{"interface empty", `{"RequestUDS":["",1]}`, ErrInterfaceName},
	{"interface 16 bytes", `{"RequestUDS":["abcdefghijklmnop",1]}`, ErrInterfaceName},
	{"interface slash", `{"RequestNetmapPipe":["a/b",1]}`, ErrInterfaceName},
	{"interface colon", `{"RequestUDS":["eth0:1",1]}`, ErrInterfaceName},
	{"interface NUL", `{"RequestUDS":["eth\u00000",1]}`, ErrInterfaceName},
	{"interface space", `{"RequestUDS":["eth 0",1]}`, ErrInterfaceName},
	{"interface escaped tab", `{"RequestUDS":["eth\t0",1]}`, ErrInterfaceName},
	{"interface dot", `{"RequestUDS":[".",1]}`, ErrInterfaceName},
	{"interface dotdot", `{"RequestUDS":["..",1]}`, ErrInterfaceName},
	{"interface NBSP byte", `{"RequestUDS":["ethà",1]}`, ErrInterfaceName}, // à is C3 A0
	{"interface raw tab", "{\"RequestUDS\":[\"eth\t0\",1]}", ErrSyntax},
	{"interface number", `{"RequestUDS":[0,1]}`, ErrWrongType},
	{"invalid UTF-8", "{\"RequestUDS\":[\"eth\xff\",1]}", ErrInvalidUTF8},
	{"overlong UTF-8", "\"Query\xc0\xafUsedPorts\"", ErrInvalidUTF8},
	{"UTF-16 surrogate in UTF-8", "\"\xed\xa0\x80\"", ErrInvalidUTF8},
	{"BOM", "\xef\xbb\xbf\"QueryUsedPorts\"", ErrSyntax},
	{"lone leading surrogate", `{"RequestUDS":["\ud800",1]}`, ErrSyntax},
	{"lone trailing surrogate", `{"RequestUDS":["\udc00",1]}`, ErrSyntax},
	{"surrogate then non-surrogate", `{"RequestUDS":["\ud800\u0041",1]}`, ErrSyntax},
	{"lone surrogate in a key", `{"AddMatch":{"\ud800":1,` + addr + `,"protocol":6}}`, ErrSyntax},
	{"invalid escape", `{"RequestUDS":["\x41",1]}`, ErrSyntax},
	{"short unicode escape", `{"RequestUDS":["\u41",1]}`, ErrSyntax},
	{"unterminated string", `{"RequestUDS":["eth0`, ErrSyntax},
	{"missing dst_addr", `{"AddMatch":{"protocol":6}}`, ErrMissingField},
	{"missing protocol", `{"AddMatch":{` + addr + `}}`, ErrMissingField},
	{"null dst_addr", `{"AddMatch":{"dst_addr":null,"protocol":6}}`, ErrWrongType},
	{"null protocol", `{"AddMatch":{` + addr + `,"protocol":null}}`, ErrWrongType},
	{"field case", `{"AddMatch":{"Dst_Addr":{"Ipv4":"198.18.0.1"},"protocol":6}}`, ErrMissingField},
	{"duplicate dst_port", `{"AddMatch":{` + addr + `,"dst_port":1,"dst_port":2,"protocol":6}}`, ErrDuplicateField},
	{"duplicate null src_addr", `{"AddMatch":{` + addr + `,"src_addr":null,"src_addr":null,"protocol":6}}`, ErrDuplicateField},
	{"duplicate dst_addr", `{"AddMatch":{` + addr + `,` + addr + `,"protocol":6}}`, ErrDuplicateField},
	{"port 65536", `{"AddMatch":{` + addr + `,"dst_port":65536,"protocol":6}}`, ErrOutOfRange},
	{"src port 65536", `{"AddMatch":{` + addr + `,"src_port":65536,"protocol":6}}`, ErrOutOfRange},
	{"port negative", `{"AddMatch":{` + addr + `,"dst_port":-1,"protocol":6}}`, ErrOutOfRange},
	{"port float", `{"AddMatch":{` + addr + `,"dst_port":80.0,"protocol":6}}`, ErrWrongType},
	{"port exponent", `{"AddMatch":{` + addr + `,"dst_port":8e1,"protocol":6}}`, ErrWrongType},
	{"port string", `{"AddMatch":{` + addr + `,"dst_port":"80","protocol":6}}`, ErrWrongType},
	{"port bool", `{"AddMatch":{` + addr + `,"dst_port":true,"protocol":6}}`, ErrWrongType},
	{"protocol 256", `{"AddMatch":{` + addr + `,"protocol":256}}`, ErrOutOfRange},
	{"protocol huge", `{"AddMatch":{` + addr + `,"protocol":99999999999999999999999999}}`, ErrOutOfRange},
	{"trailing comma in match", `{"AddMatch":{` + addr + `,"protocol":6,}}`, ErrSyntax},
	{"missing colon", `{"AddMatch":{"dst_addr"{"Ipv4":"198.18.0.1"},"protocol":6}}`, ErrSyntax},
	{"non-string key", `{"AddMatch":{1:2,` + addr + `,"protocol":6}}`, ErrSyntax},
	{"match as string", `{"AddMatch":"x"}`, ErrWrongType},
	{"match sequence 4", `{"AddMatch":[{"Ipv4":"198.18.0.1"},null,null,null]}`, ErrTupleLength},
	{"match sequence 6", `{"AddMatch":[{"Ipv4":"198.18.0.1"},null,null,null,6,7]}`, ErrTupleLength},
	{"bad ignored value", `{"AddMatch":{"x":[1,],` + addr + `,"protocol":6}}`, ErrSyntax},
	{"bad ignored literal", `{"AddMatch":{"x":tru,` + addr + `,"protocol":6}}`, ErrSyntax},
	{"unbalanced ignored nesting", `{"AddMatch":{"x":` + strings.Repeat(`{"a":[`, 3000), ErrSyntax},
	{"ignored raw control char", "{\"AddMatch\":{\"x\":\"\x01\"," + addr + ",\"protocol\":6}}", ErrSyntax},
	{"address bare string", `{"AddMatch":{"dst_addr":"198.18.0.1","protocol":6}}`, ErrAddress},
	{"address family bare", `{"AddMatch":{"dst_addr":"Ipv4","protocol":6}}`, ErrWrongType},
	{"address family unknown", `{"AddMatch":{"dst_addr":{"Ipv5":"198.18.0.1"},"protocol":6}}`, ErrAddress},
	{"address family case", `{"AddMatch":{"dst_addr":{"ipv4":"198.18.0.1"},"protocol":6}}`, ErrAddress},
	{"address two keys", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1","Ipv6":"::1"},"protocol":6}}`, ErrNotOneKey},
	{"address empty object", `{"AddMatch":{"dst_addr":{},"protocol":6}}`, ErrNotOneKey},
	{"address number", `{"AddMatch":{"dst_addr":{"Ipv4":3323068417},"protocol":6}}`, ErrWrongType},
	{"address array", `{"AddMatch":{"dst_addr":[198,18,0,1],"protocol":6}}`, ErrWrongType},
	{"IPv4 tag IPv6 text", `{"AddMatch":{"dst_addr":{"Ipv4":"2001:db8::1"},"protocol":6}}`, ErrAddress},
	{"IPv4 tag mapped text", `{"AddMatch":{"dst_addr":{"Ipv4":"::ffff:198.18.0.1"},"protocol":6}}`, ErrAddress},
	{"IPv6 tag IPv4 text", `{"AddMatch":{"dst_addr":{"Ipv6":"198.18.0.1"},"protocol":6}}`, ErrAddress},
	{"IPv6 zone", `{"AddMatch":{"dst_addr":{"Ipv6":"fe80::1%eth0"},"protocol":6}}`, ErrAddress},
	{"IPv4 leading zero", `{"AddMatch":{"dst_addr":{"Ipv4":"198.018.0.1"},"protocol":6}}`, ErrAddress},
	{"IPv4 short", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.1"},"protocol":6}}`, ErrAddress},
	{"IPv4 with port", `{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1:80"},"protocol":6}}`, ErrAddress},
	{"IPv4 with space", `{"AddMatch":{"dst_addr":{"Ipv4":" 198.18.0.1"},"protocol":6}}`, ErrAddress},
	{"IPv6 brackets", `{"AddMatch":{"dst_addr":{"Ipv6":"[::1]"},"protocol":6}}`, ErrAddress},
	{"address empty", `{"AddMatch":{"dst_addr":{"Ipv4":""},"protocol":6}}`, ErrAddress},
	{"bad src_addr", `{"AddMatch":{` + addr + `,"src_addr":{"Ipv4":"x"},"protocol":6}}`, ErrAddress},
	{"src_addr false", `{"AddMatch":{` + addr + `,"src_addr":false,"protocol":6}}`, ErrWrongType},
	{"too large", `{"AddMatch":{"x":"` + strings.Repeat("a", MaxMessageSize) + `",` + addr + `,"protocol":6}}`, ErrTooLarge},
	{"deep nesting at the top", strings.Repeat("[", 10000), ErrWrongType},
}

func TestDecodeRejects(t *testing.T) {
	for _, c := range rejectCases {
		req, err := DecodeRequest([]byte(c.in))
		if err == nil {
			t.Errorf("%s: DecodeRequest(%.80q) = %#v, want error %v", c.name, c.in, req, c.want)
			continue
		}
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("%s: error %v is %T, want *DecodeError", c.name, err, err)
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: DecodeRequest(%.80q): %v, want %v", c.name, c.in, err, c.want)
		}
	}
}

func TestDecodeErrorMessage(t *testing.T) {
	_, err := DecodeRequest([]byte(`{"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":65536,"protocol":6}}`))
	const want = `control: decode AddMatch.dst_port: 65536 is out of range for u16 (0..65535) (at byte 57)`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
	_, err = DecodeRequest(make([]byte, MaxMessageSize+1))
	const wantSize = `control: decode: 65537 bytes, the limit is 65536 (at byte 65536)`
	if err == nil || err.Error() != wantSize || !errors.Is(err, ErrTooLarge) {
		t.Errorf("got  %v\nwant %s", err, wantSize)
	}
	_, err = DecodeRequest([]byte(`{"RequestUDS":["eth0/1",1]}`))
	const wantIface = `control: decode RequestUDS.interface: "eth0/1": contains byte '/' (at byte 15)`
	if err == nil || err.Error() != wantIface {
		t.Errorf("got  %v\nwant %s", err, wantIface)
	}
}

func TestEncodeRequestRejects(t *testing.T) {
	for _, c := range []struct {
		req  Request
		want error
	}{
		{RequestUDS{Interface: "", PID: 1}, ErrInterfaceName},
		{RequestNetmapPipe{Interface: "a/b", PID: 1}, ErrInterfaceName},
		{RequestUDS{Interface: "eth0", PID: -1}, ErrOutOfRange},
		{AddMatch{Match{Protocol: 6}}, ErrAddress},
		{AddMatch{Match{DstAddr: ip("fe80::1%eth0"), Protocol: 6}}, ErrAddress},
		{RemoveMatch{Match{DstAddr: ip("198.18.0.1"), SrcAddr: &netip.Addr{}, Protocol: 6}}, ErrAddress},
		{&RequestUDS{Interface: "eth0"}, nil},
		{nil, nil},
	} {
		b, err := EncodeRequest(c.req)
		if err == nil {
			t.Errorf("EncodeRequest(%#v) = %s, want an error", c.req, b)
			continue
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("EncodeRequest(%#v): %v, want %v", c.req, err, c.want)
		}
	}
}

func TestMatchEqual(t *testing.T) {
	a := Match{DstAddr: ip("198.18.0.1"), DstPort: p16(80), SrcAddr: pa("198.18.0.2"), Protocol: 6}
	b := Match{DstAddr: ip("198.18.0.1"), DstPort: p16(80), SrcAddr: pa("198.18.0.2"), Protocol: 6}
	if !a.Equal(b) {
		t.Error("equal matches with distinct pointers are not Equal")
	}
	for _, c := range []Match{
		{DstAddr: ip("198.18.0.1"), DstPort: p16(81), SrcAddr: pa("198.18.0.2"), Protocol: 6},
		{DstAddr: ip("198.18.0.1"), SrcAddr: pa("198.18.0.2"), Protocol: 6},
		{DstAddr: ip("198.18.0.1"), DstPort: p16(80), Protocol: 6},
		{DstAddr: ip("198.18.0.1"), DstPort: p16(80), SrcAddr: pa("198.18.0.2"), SrcPort: p16(1), Protocol: 6},
		{DstAddr: ip("::ffff:198.18.0.1"), DstPort: p16(80), SrcAddr: pa("198.18.0.2"), Protocol: 6},
		{DstAddr: ip("198.18.0.1"), DstPort: p16(80), SrcAddr: pa("198.18.0.2"), Protocol: 17},
	} {
		if a.Equal(c) {
			t.Errorf("%#v Equal %#v", a, c)
		}
	}
}

// Answers.

const goldenUsedPortsWire = `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},22]],"connected":[[6,{"Ipv4":"198.18.0.1"},41234]]}}`

func TestUsedPortsGolden(t *testing.T) {
	listening := []PortEntry{{Protocol: 6, Addr: ip("198.18.0.1"), Port: 22}}
	connected := []PortEntry{{Protocol: 6, Addr: ip("198.18.0.1"), Port: 41234}}
	if got := string(EncodeUsedPorts(listening, connected)); got != goldenUsedPortsWire {
		t.Errorf("EncodeUsedPorts\n got %s\nwant %s", got, goldenUsedPortsWire)
	}
	a, err := DecodeAnswer([]byte(goldenUsedPortsWire))
	if err != nil {
		t.Fatal(err)
	}
	want := UsedPorts{Listening: listening, Connected: connected}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("DecodeAnswer = %#v, want %#v", a, want)
	}

	const empty = `{"QueryUsedPortsAnswer":{"listening":[],"connected":[]}}`
	if got := string(EncodeUsedPorts(nil, []PortEntry{})); got != empty {
		t.Errorf("empty lists: got %s, want %s", got, empty)
	}
	const mixed = `{"QueryUsedPortsAnswer":{"listening":[[17,{"Ipv6":"2001:db8::1"},53],[132,{"Ipv4":"198.18.0.1"},0]],"connected":[[255,{"Ipv6":"::ffff:198.18.0.1"},65535]]}}`
	got := EncodeUsedPorts(
		[]PortEntry{{17, ip("2001:db8::1"), 53}, {6, netip.Addr{}, 1}, {132, ip("198.18.0.1"), 0}},
		[]PortEntry{{255, ip("::ffff:198.18.0.1%eth0"), 65535}},
	)
	if string(got) != mixed {
		t.Errorf("mixed: got %s\nwant %s", got, mixed)
	}
	if b, _ := EncodeAnswer(UsedPorts{}); string(b) != empty {
		t.Errorf("EncodeAnswer(UsedPorts{}) = %s", b)
	}
}

func TestRawAnswers(t *testing.T) {
	for _, c := range []struct {
		wire string
		a    Answer
	}{{"OK", AnswerOK{}}, {"ER", AnswerER{}}, {"$", AnswerFD{}}} {
		a, err := DecodeAnswer([]byte(c.wire))
		if err != nil || a != c.a {
			t.Errorf("DecodeAnswer(%q) = %#v, %v", c.wire, a, err)
		}
		b, err := EncodeAnswer(c.a)
		if err != nil || string(b) != c.wire {
			t.Errorf("EncodeAnswer(%#v) = %q, %v", c.a, b, err)
		}
		if c.a.Type() != c.wire {
			t.Errorf("%#v.Type() = %q", c.a, c.a.Type())
		}
	}
}

func TestDecodeAnswerTolerant(t *testing.T) {
	for _, c := range []struct{ in, canon string }{
		{`{"QueryUsedPortsAnswer":{"connected":[],"x":1,"listening":[[6,{"Ipv4":"198.18.0.1"},22]]}}`,
			`{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},22]],"connected":[]}}`},
		{`{"QueryUsedPortsAnswer":[[],[[6,{"Ipv4":"198.18.0.1"},41234]]]}`,
			`{"QueryUsedPortsAnswer":{"listening":[],"connected":[[6,{"Ipv4":"198.18.0.1"},41234]]}}`},
		{`{"QueryStatusAnswer":{"future":[1],"version":"x"}}`,
			`{"QueryStatusAnswer":{"version":"x","interfaces":[],"endpoints":[],"rules":[]}}`},
		{`{"QueryStatusAnswer":{"interfaces":null,"endpoints":[{}]}}`,
			`{"QueryStatusAnswer":{"version":"","interfaces":[],"endpoints":[{"id":0,"pid":0,"uid":0,"address":"","interface":"","rules":[],"channels":0,"rx_packets":0,"tx_packets":0,"drops":0,"refused":0,"refused_by":{}}],"rules":[]}}`},
	} {
		a, err := DecodeAnswer([]byte(c.in))
		if err != nil {
			t.Errorf("DecodeAnswer(%s): %v", c.in, err)
			continue
		}
		b, err := EncodeAnswer(a)
		if err != nil || string(b) != c.canon {
			t.Errorf("DecodeAnswer(%s) encodes as %s (%v), want %s", c.in, b, err, c.canon)
		}
	}
}

func TestDecodeAnswerRejects(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     error
	}{
		{"empty", ``, ErrSyntax},
		{"ok lowercase", `ok`, ErrSyntax},
		{"OK with newline", "OK\n", ErrSyntax},
		{"OK as JSON", `"OK"`, ErrUnknownType},
		{"request", `"QueryUsedPorts"`, ErrNotAnAnswer},
		{"request object", `{"RequestUDS":["eth0",1]}`, ErrNotAnAnswer},
		{"unit form", `"QueryUsedPortsAnswer"`, ErrWrongType},
		{"missing connected", `{"QueryUsedPortsAnswer":{"listening":[]}}`, ErrMissingField},
		{"null list", `{"QueryUsedPortsAnswer":{"listening":null,"connected":[]}}`, ErrWrongType},
		{"duplicate list", `{"QueryUsedPortsAnswer":{"listening":[],"listening":[],"connected":[]}}`, ErrDuplicateField},
		{"entry 2 elements", `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"}]],"connected":[]}}`, ErrTupleLength},
		{"entry 4 elements", `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},1,2]],"connected":[]}}`, ErrTupleLength},
		{"entry port 65536", `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},65536]],"connected":[]}}`, ErrOutOfRange},
		{"entry protocol 256", `{"QueryUsedPortsAnswer":{"listening":[[256,{"Ipv4":"198.18.0.1"},1]],"connected":[]}}`, ErrOutOfRange},
		{"entry bad address", `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"::1"},1]],"connected":[]}}`, ErrAddress},
		{"two keys", `{"QueryUsedPortsAnswer":{"listening":[],"connected":[]},"x":1}`, ErrNotOneKey},
		{"trailing", `{"QueryStatusAnswer":{}} x`, ErrTrailingData},
		{"status wrong type", `{"QueryStatusAnswer":{"version":1}}`, ErrWrongType},
		{"status duplicate", `{"QueryStatusAnswer":{"version":"a","version":"b"}}`, ErrDuplicateField},
		{"status negative pid", `{"QueryStatusAnswer":{"endpoints":[{"pid":-1}]}}`, ErrOutOfRange},
		{"status uid too big", `{"QueryStatusAnswer":{"endpoints":[{"uid":4294967296}]}}`, ErrOutOfRange},
		{"status rule without match", `{"QueryStatusAnswer":{"rules":[{"owner":"x"}]}}`, ErrMissingField},
		{"status sticky string", `{"QueryStatusAnswer":{"rules":[{"match":{"dst_addr":{"Ipv4":"198.18.0.1"},"protocol":6},"sticky":"yes"}]}}`, ErrWrongType},
		{"status as array", `{"QueryStatusAnswer":[]}`, ErrWrongType},
		{"refused_by as list", `{"QueryStatusAnswer":{"endpoints":[{"refused_by":[]}]}}`, ErrWrongType},
		{"refused_by string count", `{"QueryStatusAnswer":{"endpoints":[{"refused_by":{"src_ip":"1"}}]}}`, ErrWrongType},
		{"refused_by negative", `{"QueryStatusAnswer":{"endpoints":[{"refused_by":{"src_ip":-1}}]}}`, ErrOutOfRange},
		{"refused_by duplicate", `{"QueryStatusAnswer":{"endpoints":[{"refused_by":{"src_ip":1,"src_ip":2}}]}}`, ErrDuplicateField},
		{"invalid UTF-8", "{\"QueryStatusAnswer\":{\"version\":\"\xff\"}}", ErrInvalidUTF8},
		{"too large", `{"QueryStatusAnswer":{"version":"` + strings.Repeat("a", MaxAnswerSize) + `"}}`, ErrTooLarge},
	} {
		a, err := DecodeAnswer([]byte(c.in))
		if err == nil {
			t.Errorf("%s: DecodeAnswer = %#v, want %v", c.name, a, c.want)
			continue
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: DecodeAnswer(%.80q): %v, want %v", c.name, c.in, err, c.want)
		}
	}
}

var goldenStatus = Status{
	Version: "0.1.0",
	Interfaces: []InterfaceStatus{
		{Name: "eth0", Backend: "xdp", Queues: 4, XDPMode: "native"},
		{Name: "veth1", Backend: "memory", Queues: 1},
	},
	Endpoints: []EndpointStatus{{
		ID: 3, PID: 4242, UID: 1000, Address: "/run/user/1000/usnet-client-4242-x", Interface: "eth0",
		Rules:    []Match{{DstAddr: ip("198.18.0.1"), DstPort: p16(8080), Protocol: 6}},
		Channels: 1, RxPackets: 10, TxPackets: 18446744073709551615, Drops: 2, Refused: 5,
		RefusedBy: map[string]uint64{"src_ip": 4, "neigh_spoof": 1},
	}},
	Rules: []RuleStatus{
		{Match: Match{DstAddr: ip("198.18.0.1"), DstPort: p16(8080), Protocol: 6}, Owner: "endpoint 3", Kind: RuleRegistered},
		{Match: Match{DstAddr: ip("2001:db8::1"), DstPort: p16(22), SrcAddr: pa("2001:db8::2"), SrcPort: p16(50000), Protocol: 6}, Owner: "kernel eth0", Kind: RuleLearned, Sticky: true},
	},
}

const goldenStatusWire = `{"QueryStatusAnswer":{"version":"0.1.0",` +
	`"interfaces":[{"name":"eth0","backend":"xdp","queues":4,"xdp_mode":"native"},{"name":"veth1","backend":"memory","queues":1,"xdp_mode":""}],` +
	`"endpoints":[{"id":3,"pid":4242,"uid":1000,"address":"/run/user/1000/usnet-client-4242-x","interface":"eth0",` +
	`"rules":[{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":null,"src_port":null,"protocol":6}],` +
	`"channels":1,"rx_packets":10,"tx_packets":18446744073709551615,"drops":2,"refused":5,"refused_by":{"neigh_spoof":1,"src_ip":4}}],` +
	`"rules":[{"match":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":null,"src_port":null,"protocol":6},"owner":"endpoint 3","kind":"registered","sticky":false},` +
	`{"match":{"dst_addr":{"Ipv6":"2001:db8::1"},"dst_port":22,"src_addr":{"Ipv6":"2001:db8::2"},"src_port":50000,"protocol":6},"owner":"kernel eth0","kind":"learned","sticky":true}]}}`

// TestStatusChannelKinds: channel_kinds is written when known, after
// refused_by, and read back; absent, it reads as nil.
func TestStatusChannelKinds(t *testing.T) {
	st := Status{Endpoints: []EndpointStatus{{ID: 1, Channels: 2, ChannelKinds: []string{"shm", "uds"}}}}
	b, err := EncodeStatus(st)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"QueryStatusAnswer":{"version":"","interfaces":[],"endpoints":[{"id":1,"pid":0,"uid":0,"address":"","interface":"","rules":[],"channels":2,"rx_packets":0,"tx_packets":0,"drops":0,"refused":0,"refused_by":{},"channel_kinds":["shm","uds"]}],"rules":[]}}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	a, err := DecodeAnswer(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, st) {
		t.Fatalf("decoded %#v", a)
	}
}

func TestStatusGolden(t *testing.T) {
	b, err := EncodeStatus(goldenStatus)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != goldenStatusWire {
		t.Errorf("EncodeStatus\n got %s\nwant %s", b, goldenStatusWire)
	}
	a, err := DecodeAnswer(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, goldenStatus) {
		t.Errorf("DecodeAnswer = %#v\nwant %#v", a, goldenStatus)
	}
	b, err = EncodeStatus(Status{})
	const empty = `{"QueryStatusAnswer":{"version":"","interfaces":[],"endpoints":[],"rules":[]}}`
	if err != nil || string(b) != empty {
		t.Errorf("EncodeStatus(Status{}) = %s, %v", b, err)
	}
	// Strings are escaped as serde_json escapes them: no HTML escaping.
	b, _ = EncodeStatus(Status{Version: "<&>\u2028\x00\xff"})
	if want := `{"QueryStatusAnswer":{"version":"<&>` + "\u2028" + `\u0000` + "\uFFFD" + `","interfaces":[],"endpoints":[],"rules":[]}}`; string(b) != want {
		t.Errorf("escaping: got %s\nwant %s", b, want)
	}
	for _, s := range []Status{
		{Interfaces: []InterfaceStatus{{Queues: -1}}},
		{Endpoints: []EndpointStatus{{PID: -1}}},
		{Endpoints: []EndpointStatus{{Rules: []Match{{}}}}},
		{Rules: []RuleStatus{{}}},
	} {
		if b, err := EncodeStatus(s); err == nil {
			t.Errorf("EncodeStatus(%#v) = %s, want an error", s, b)
		}
	}
}

// The serde oracle: testdata/serde_oracle.txt holds, for each input, what
// the original's serde_json types (testdata/serde-oracle) made of it: the
// re-serialized message, or an error. Our decoder must agree, except where
// the package doc says it is stricter on purpose.
func TestSerdeOracle(t *testing.T) {
	f, err := os.Open("testdata/serde_oracle.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		n++
		fields := strings.SplitN(line, " ", 3)
		if len(fields) < 2 {
			t.Fatalf("bad oracle line %q", line)
		}
		in, err := hex.DecodeString(fields[0])
		if err != nil {
			t.Fatalf("bad oracle line %q: %v", line, err)
		}
		req, ourErr := DecodeRequest(in)
		switch fields[1] {
		case "ERR":
			// serde rejects: so must we, but for our new QueryStatus and RequestSHM.
			if ourErr == nil {
				if _, ok := req.(QueryStatus); !ok && req.Type() != "RequestSHM" {
					t.Errorf("serde rejects %.100q (%s) but we accept it as %#v", in, fields[2], req)
				}
			}
		case "OK":
			serdeOut, err := hex.DecodeString(fields[2])
			if err != nil {
				t.Fatalf("bad oracle line %q: %v", line, err)
			}
			if ourErr != nil {
				// Only the documented extra checks may reject what serde takes.
				var de *DecodeError
				errors.As(ourErr, &de)
				switch {
				case errors.Is(ourErr, ErrAddress), errors.Is(ourErr, ErrInterfaceName), errors.Is(ourErr, ErrNotARequest):
				case errors.Is(ourErr, ErrOutOfRange) && strings.HasSuffix(de.Field, ".pid"):
				default:
					t.Errorf("serde accepts %.100q but we reject it: %v", in, ourErr)
				}
				continue
			}
			enc, err := EncodeRequest(req)
			if err != nil {
				t.Errorf("%.100q: decoded %#v does not encode: %v", in, req, err)
				continue
			}
			if bytes.Equal(enc, serdeOut) {
				continue
			}
			// serde keeps address text as it came; we write it canonically.
			// The messages must still mean the same.
			req2, err := DecodeRequest(serdeOut)
			if err != nil || !requestsEqual(req, req2) {
				t.Errorf("%.100q: we encode %s, serde %s", in, enc, serdeOut)
			}
		default:
			t.Fatalf("bad oracle line %q", line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 100 {
		t.Errorf("only %d oracle cases", n)
	}
}

var oracleInputs = flag.String("oracle-inputs", "", "write the inputs for testdata/serde-oracle to this file (hex, one a line) and skip")

// TestWriteOracleInputs writes every request input of this package's tests
// for the serde oracle; see testdata/serde-oracle/README.md.
func TestWriteOracleInputs(t *testing.T) {
	if *oracleInputs == "" {
		t.Skip("no -oracle-inputs")
	}
	var ins []string
	for _, g := range goldenRequests {
		ins = append(ins, g.wire)
	}
	for _, s := range fuzzSeeds {
		ins = append(ins, s.in)
	}
	for _, c := range tolerantCases {
		ins = append(ins, c.in)
	}
	for _, c := range rejectCases {
		ins = append(ins, c.in)
	}
	ins = append(ins, oracleCorpus(t)...)
	seen := map[string]bool{}
	var out bytes.Buffer
	for _, in := range ins {
		if seen[in] || len(in) > 4000 { // the original's receive buffer
			continue
		}
		seen[in] = true
		fmt.Fprintf(&out, "%x\n", in)
	}
	if err := os.WriteFile(*oracleInputs, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// oracleCorpus returns the inputs of the committed fuzz corpus.
func oracleCorpus(t *testing.T) []string {
	files, err := filepath.Glob("testdata/fuzz/FuzzDecodeRequest/*")
	if err != nil {
		t.Fatal(err)
	}
	var ins []string
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		// go test fuzz v1 / []byte("...")
		lines := strings.SplitN(string(b), "\n", 3)
		if len(lines) < 2 || !strings.HasPrefix(lines[1], "[]byte(") {
			t.Fatalf("%s: not a []byte corpus file", name)
		}
		q := strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")")
		in, err := strconv.Unquote(q)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ins = append(ins, in)
	}
	return ins
}

func TestMatchString(t *testing.T) {
	for _, c := range []struct {
		m    Match
		want string
	}{
		{Match{DstAddr: ip("198.18.0.1"), DstPort: p16(8080), Protocol: 6}, "tcp 198.18.0.1:8080"},
		{Match{DstAddr: ip("2001:db8::1"), DstPort: p16(53), Protocol: 17}, "udp [2001:db8::1]:53"},
		{Match{DstAddr: ip("198.18.0.1"), Protocol: 1}, "icmp 198.18.0.1"},
		{Match{DstAddr: ip("198.18.0.1"), DstPort: p16(22), SrcAddr: pa("198.18.0.2"), SrcPort: p16(41234), Protocol: 6}, "tcp 198.18.0.1:22 <- 198.18.0.2:41234"},
		{Match{DstAddr: ip("198.18.0.1"), DstPort: p16(22), SrcAddr: pa("2001:db8::2"), Protocol: 6}, "tcp 198.18.0.1:22 <- [2001:db8::2]"},
		{Match{DstAddr: ip("198.18.0.1"), DstPort: p16(53), SrcPort: p16(5353), Protocol: 17}, "udp 198.18.0.1:53 <- *:5353"},
		{Match{DstAddr: ip("198.18.0.1"), Protocol: 200}, "proto-200 198.18.0.1"},
	} {
		if got := c.m.String(); got != c.want {
			t.Errorf("%#v: %q, want %q", c.m, got, c.want)
		}
	}
}

// TestLargeUsedPortsAnswer: a QueryUsedPorts answer as large as usnetd
// sends (up to 1,000,000 bytes, the original client's buffer) decodes;
// a larger one than MaxAnswerSize does not.
func TestLargeUsedPortsAnswer(t *testing.T) {
	var listening []PortEntry
	for i := 0; ; i++ {
		listening = append(listening, PortEntry{Protocol: 6, Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), Port: uint16(i)})
		if len(listening)%1000 == 0 && len(EncodeUsedPorts(listening, nil)) > 990_000 {
			break
		}
	}
	b := EncodeUsedPorts(listening, nil)
	if len(b) > 1_000_000 || len(b) <= 256<<10 {
		t.Fatalf("test answer of %d bytes", len(b))
	}
	a, err := DecodeAnswer(b)
	if err != nil {
		t.Fatalf("%d-byte answer: %v", len(b), err)
	}
	if u, ok := a.(UsedPorts); !ok || len(u.Listening) != len(listening) || u.Listening[len(listening)-1] != listening[len(listening)-1] {
		t.Errorf("decoded %T with %d entries, want %d", a, len(u.Listening), len(listening))
	}
	for len(b) <= MaxAnswerSize {
		listening = append(listening, listening...)
		b = EncodeUsedPorts(listening, nil)
	}
	if _, err := DecodeAnswer(b); !errors.Is(err, ErrTooLarge) {
		t.Errorf("%d-byte answer: %v, want ErrTooLarge", len(b), err)
	}
}
