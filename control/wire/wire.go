package wire

// The wire types of the control protocol.
//
// The original (Rust) encoded its messages with serde_json in serde's
// externally tagged form. Its types, for reference:
//
//	enum ClientMessageIp { Ipv4(String), Ipv6(String) }
//	enum ClientMessage {
//	    RequestNetmapPipe(String, u64),
//	    RequestUDS(String, u64),
//	    DeleteClient,
//	    AddMatch(WantMsg),
//	    RemoveMatch(WantMsg),
//	    QueryUsedPorts,
//	    QueryUsedPortsAnswer {
//	        listening: Vec<(u8, ClientMessageIp, u16)>,
//	        connected: Vec<(u8, ClientMessageIp, u16)>,
//	    },
//	}
//	struct WantMsg {
//	    dst_addr: ClientMessageIp, dst_port: Option<u16>,
//	    src_addr: Option<ClientMessageIp>, src_port: Option<u16>, protocol: u8,
//	}
//
// so a unit variant is a bare string ("QueryUsedPorts"), a tuple variant a
// one-key object holding an array ({"RequestUDS":["eth0",1234]}), a newtype
// or struct variant a one-key object holding an object, and an address
// {"Ipv4":"198.18.0.1"}. EncodeRequest, EncodeUsedPorts and EncodeAnswer
// write exactly serde_json's compact bytes. DecodeRequest and DecodeAnswer
// accept what serde_json accepts for these types (any field order, unknown
// fields ignored, Option fields that are absent read as null, a unit variant
// also as {"QueryUsedPorts":null}, a struct also as an array of its fields
// in order), and on top of that check what the original checked later or
// not at all: the addresses parse, the interface name is one Linux could
// have, the PID fits pid_t.
//
// Differences from the original, all deliberate:
//
//   - PID is an int32 (Linux pid_t). The original's field was a u64, so
//     serde accepted 0..2^64-1; we accept 0..2^31-1 and reject the rest with
//     ErrOutOfRange. No process or thread id lies beyond that (the kernel's
//     PID_MAX_LIMIT is 2^22), and the server never trusts the number anyway:
//     credentials come from the kernel (SCM_CREDENTIALS).
//   - The interface name must be one Linux could have (the kernel's
//     dev_valid_name: 1..15 bytes, not "." or "..", no '/', ':', NUL or
//     white space); serde took any string and the original then found no
//     such NIC and sent no answer. Such a name is ErrInterfaceName.
//   - The address strings are parsed here (net/netip). The original kept
//     them as strings and parsed them when acting on the message: an invalid
//     dst_addr meant no answer at all (the client hung), an invalid src_addr
//     was silently read as "any source", and any Ipv6 address panicked the
//     daemon. We reject an unparsable address, an address whose family does
//     not match its tag ({"Ipv4":"2001:db8::1"}) and an IPv6 zone
//     ("fe80::1%eth0", which Rust's Ipv6Addr does not parse either).
//   - IPv6 text: we write netip's form, which is RFC 5952 (lowercase, no
//     leading zeros, the first longest run of two or more zero groups
//     written as "::", IPv4-mapped addresses as ::ffff:a.b.c.d). Current
//     Rust's Display for Ipv6Addr gives the same text for every address
//     (compared on 200,000 addresses with Rust 1.95, see
//     testdata/serde-oracle). Rust releases from before the change proposed
//     in rust-lang/libs-team#239 (2023) also wrote IPv4-compatible
//     addresses (::/96 but :: and ::1) in dotted form, ::1.2.3.4 where both
//     now write ::102:304. Decoding accepts every text form netip parses
//     (uppercase hex, embedded dotted quad), so either spelling reads as the
//     same address.
//   - An IPv4-mapped IPv6 address ({"Ipv6":"::ffff:198.18.0.1"}) is kept as
//     the IPv6 address it says it is (netip.Addr.Is4In6); it is not unmapped
//     to 198.18.0.1. Code that stores addresses in the mapped 16-byte form
//     (l4.Addr) would alias it with the IPv4 address: the policy that turns
//     a Match into a rule must reject or unmap it.
//   - QueryUsedPortsAnswer and QueryStatusAnswer sent to the server are an
//     error (ErrNotARequest); the original decoded the first and ignored it.
//   - QueryStatus is new (a bare string, like QueryUsedPorts); the original
//     rejected it as an unknown variant, old clients never send it.
//   - QueryPortsInUse is new ({"QueryPortsInUse":6}, a newtype variant
//     holding the protocol number): the answer, QueryPortsInUseAnswer, is
//     one bit per port (PortSet) and so of fixed size however many sockets
//     the host has. Old clients never send it.
//   - RequestSHM is new ({"RequestSHM":["eth0",1234]}, like RequestUDS);
//     the original rejected it as an unknown variant (no answer; this
//     usnetd without the feature answers "ER"), old clients never send it.
//     Its answer is "$" with two descriptors: the channel's memfd and the
//     endpoint's end of its wake-up socket pair (backends/shm/ring).

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/usnetd/usnetd/internal/ipproto"
)

// DefaultSocketPath is where the original and this usnetd listen: the
// control socket's path unless the server's SOCKET_PATH or a client's
// configuration says otherwise. It is the one definition of that path.
const DefaultSocketPath = "/run/usnetd.socket"

// MaxMessageSize is the largest request DecodeRequest accepts, in bytes.
// Every real request is under 300 bytes; the original read requests into a
// 4000-byte buffer. A server should receive into a buffer of
// MaxMessageSize+1 bytes so that a longer datagram is seen as too long
// rather than silently truncated.
const MaxMessageSize = 64 << 10

// MaxAnswerSize is the largest answer DecodeAnswer accepts, in bytes: room
// for a QueryUsedPorts answer as large as the original's client reads
// (1,000,000 bytes, which usnetd never exceeds) and so a bound only on a
// broken peer. A client receives into a buffer of MaxAnswerSize+1 bytes.
const MaxAnswerSize = 1 << 20

// The raw answers. They are bytes on the wire, not JSON strings.
const (
	RawOK = "OK" // AddMatch succeeded
	RawER = "ER" // a request failed
	RawFD = "$"  // RequestUDS succeeded; the datagram carries one fd (SCM_RIGHTS); RequestSHM: two
)

// Errors. Every error of DecodeRequest and DecodeAnswer is a *DecodeError
// whose Err is one of these, so errors.Is works on them.
var (
	ErrTooLarge       = errors.New("control: message too large")
	ErrInvalidUTF8    = errors.New("control: message is not valid UTF-8")
	ErrSyntax         = errors.New("control: malformed JSON")
	ErrTrailingData   = errors.New("control: data after the end of the message")
	ErrUnknownType    = errors.New("control: unknown message type")
	ErrNotOneKey      = errors.New("control: a tagged object must have exactly one key")
	ErrWrongType      = errors.New("control: wrong JSON type")
	ErrOutOfRange     = errors.New("control: number out of range")
	ErrMissingField   = errors.New("control: missing field")
	ErrDuplicateField = errors.New("control: duplicate field")
	ErrTupleLength    = errors.New("control: wrong number of elements")
	ErrInterfaceName  = errors.New("control: invalid interface name")
	ErrAddress        = errors.New("control: invalid IP address")
	ErrNotARequest    = errors.New("control: an answer was sent as a request")
	ErrNotAnAnswer    = errors.New("control: a request was sent as an answer")
)

// DecodeError describes why a message was rejected.
type DecodeError struct {
	Offset int    // byte offset in the message where the problem was found
	Field  string // the field being decoded, e.g. "AddMatch.dst_port"; "" at the top
	Msg    string // what was wrong, for people
	Err    error  // one of the Err* sentinels
}

func (e *DecodeError) Error() string {
	s := "control: decode"
	if e.Field != "" {
		s += " " + e.Field
	}
	return s + ": " + e.Msg + " (at byte " + strconv.Itoa(e.Offset) + ")"
}

// Unwrap returns the sentinel, so errors.Is(err, ErrOutOfRange) works.
func (e *DecodeError) Unwrap() error { return e.Err }

// Request is a message from a client to the server: one of RequestUDS,
// RequestNetmapPipe, AddMatch, RemoveMatch, QueryUsedPorts, DeleteClient,
// QueryStatus. Use the values, not pointers to them.
type Request interface {
	// Type is the message's tag on the wire, e.g. "AddMatch".
	Type() string
	isRequest()
}

// RequestUDS asks for a packet channel: the answer is RawFD with one end of
// a socketpair(AF_UNIX, SOCK_DGRAM), one Ethernet frame per datagram, or
// RawER. Wire form: {"RequestUDS":["eth0",1234]}.
type RequestUDS struct {
	Interface string // the NIC: a valid Linux interface name (1..15 bytes, no '/', ':', NUL, white space)
	PID       int32  // the client's process or thread id, 0..2^31-1 (u64 in the original)
}

// RequestSHM (new, not in the original) asks for a shared-memory packet
// channel: the answer is RawFD with two descriptors, the channel's memfd
// and the endpoint's end of its wake-up socket pair (layout and protocol:
// backends/shm/ring), or RawER. Wire form: {"RequestSHM":["eth0",1234]}.
type RequestSHM struct {
	Interface string
	PID       int32
}

// RequestNetmapPipe asks for a netmap pipe: the answer is the nmreq struct
// with the fd, or RawER. Wire form: {"RequestNetmapPipe":["eth0",1234]}.
type RequestNetmapPipe struct {
	Interface string
	PID       int32
}

// AddMatch registers a rule for the client's channel: the answer is RawOK,
// or RawER (e.g. the rule exists already).
// Wire form: {"AddMatch":{"dst_addr":{"Ipv4":"198.18.0.1"},"dst_port":8080,"src_addr":null,"src_port":null,"protocol":6}}.
type AddMatch struct{ Match Match }

// RemoveMatch removes one of the client's rules. There is no answer.
type RemoveMatch struct{ Match Match }

// QueryUsedPorts asks for the registered and learned rules with a local
// port; the answer is UsedPorts. Wire form: "QueryUsedPorts".
type QueryUsedPorts struct{}

// DeleteClient drops the client's channel and rules. There is no answer.
// Wire form: "DeleteClient".
type DeleteClient struct{}

// QueryStatus (new, not in the original) asks for the server's state; the
// answer is Status. Wire form: "QueryStatus".
type QueryStatus struct{}

// QueryPortsInUse (new, not in the original) asks which local ports of
// one protocol are in use on the claimed interfaces, by anyone: every rule
// with a local port (any owner, any local address) and every kernel socket
// of the protocol (any state, any address). The answer is PortsInUse, of
// fixed size. Wire form: {"QueryPortsInUse":6}.
type QueryPortsInUse struct{ Protocol uint8 }

func (QueryPortsInUse) Type() string { return "QueryPortsInUse" }
func (QueryPortsInUse) isRequest()   {}

func (RequestUDS) Type() string        { return "RequestUDS" }
func (RequestNetmapPipe) Type() string { return "RequestNetmapPipe" }
func (AddMatch) Type() string          { return "AddMatch" }
func (RemoveMatch) Type() string       { return "RemoveMatch" }
func (QueryUsedPorts) Type() string    { return "QueryUsedPorts" }
func (DeleteClient) Type() string      { return "DeleteClient" }
func (QueryStatus) Type() string       { return "QueryStatus" }
func (RequestSHM) Type() string        { return "RequestSHM" }

func (RequestUDS) isRequest()        {}
func (RequestNetmapPipe) isRequest() {}
func (AddMatch) isRequest()          {}
func (RemoveMatch) isRequest()       {}
func (QueryUsedPorts) isRequest()    {}
func (DeleteClient) isRequest()      {}
func (QueryStatus) isRequest()       {}
func (RequestSHM) isRequest()        {}

// Match is a rule as the protocol states it (the original's WantMsg): the
// local ("dst") address and port the client wants to receive, optionally
// only from one remote ("src") address and port. Nil means any.
type Match struct {
	DstAddr  netip.Addr  // required; no zone
	DstPort  *uint16     // nil: no port (ICMP and other protocols without ports)
	SrcAddr  *netip.Addr // nil: any remote address
	SrcPort  *uint16     // nil: any remote port
	Protocol uint8       // IP protocol number: 6 TCP, 17 UDP, 1 ICMP, ...
}

// Equal reports whether m and o state the same rule (it compares the values
// the pointers point to).
func (m Match) Equal(o Match) bool {
	return m.DstAddr == o.DstAddr && m.Protocol == o.Protocol &&
		eqPtr(m.DstPort, o.DstPort) && eqPtr(m.SrcAddr, o.SrcAddr) && eqPtr(m.SrcPort, o.SrcPort)
}

// String is how usnetd writes a rule for people (ipproto.Rule): the
// protocol's name, the local address and port, and the remote side if the
// rule has one: "tcp 198.18.0.1:8080", "icmp 198.18.0.1",
// "tcp 198.18.0.1:22 <- 198.18.0.2:41234", "udp [2001:db8::1]:53 <- *:5353".
func (m Match) String() string {
	lp, rp := -1, -1
	if m.DstPort != nil {
		lp = int(*m.DstPort)
	}
	if m.SrcPort != nil {
		rp = int(*m.SrcPort)
	}
	var remote netip.Addr
	if m.SrcAddr != nil {
		remote = *m.SrcAddr
	}
	return ipproto.Rule(m.Protocol, m.DstAddr, lp, remote, rp)
}

func eqPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// Answer is a message from the server to a client: AnswerOK, AnswerER,
// AnswerFD, UsedPorts or Status.
type Answer interface {
	// Type is "OK", "ER", "$", "QueryUsedPortsAnswer" or "QueryStatusAnswer".
	Type() string
	isAnswer()
}

// AnswerOK is the raw answer "OK".
type AnswerOK struct{}

// AnswerER is the raw answer "ER".
type AnswerER struct{}

// AnswerFD is the raw answer "$", which comes with one file descriptor in
// the datagram's control message; reading the descriptor is the caller's.
type AnswerFD struct{}

// PortEntry is one element of QueryUsedPortsAnswer's lists; on the wire a
// tuple [protocol, address, port]: [6,{"Ipv4":"198.18.0.1"},22].
type PortEntry struct {
	Protocol uint8
	Addr     netip.Addr
	Port     uint16
}

// UsedPorts answers QueryUsedPorts. Rules with a remote address are listed
// under Connected, those without under Listening; rules without a local
// port are not listed.
// Wire form: {"QueryUsedPortsAnswer":{"listening":[...],"connected":[...]}}.
type UsedPorts struct {
	Listening []PortEntry
	Connected []PortEntry
}

// PortSet is a set of ports: bit p%8 of byte p/8 is port p.
type PortSet [65536 / 8]byte

// Has reports whether p is in the set.
func (s *PortSet) Has(p uint16) bool { return s[p/8]&(1<<(p%8)) != 0 }

// Add puts p into the set.
func (s *PortSet) Add(p uint16) { s[p/8] |= 1 << (p % 8) }

// PortsInUse answers QueryPortsInUse (new in this version). Wire form:
// {"QueryPortsInUseAnswer":{"protocol":6,"ports":"..."}} where ports is
// the PortSet in standard base64 (10,924 characters).
type PortsInUse struct {
	Protocol uint8
	Ports    *PortSet // never nil after DecodeAnswer
}

func (PortsInUse) Type() string { return "QueryPortsInUseAnswer" }
func (PortsInUse) isAnswer()    {}

// EncodePortsInUse returns the bytes of the answer to QueryPortsInUse.
func EncodePortsInUse(proto uint8, ports *PortSet) []byte {
	b := []byte(`{"QueryPortsInUseAnswer":{"protocol":`)
	b = strconv.AppendUint(b, uint64(proto), 10)
	b = append(b, `,"ports":"`...)
	if ports == nil {
		ports = new(PortSet)
	}
	b = base64.StdEncoding.AppendEncode(b, ports[:])
	return append(b, `"}}`...)
}

// portsInUse decodes the value of QueryPortsInUseAnswer: an object with
// both fields (unknown ones ignored).
func (r *reader) portsInUse() (PortsInUse, error) {
	a := PortsInUse{Ports: new(PortSet)}
	var seen [2]bool
	startOff := r.i
	if c, ok := r.peek(); !ok || c != '{' {
		return a, r.wrongType("an object")
	}
	err := r.object(func(key string, keyOff int) error {
		switch key {
		case "protocol", "ports":
			k := 0
			if key == "ports" {
				k = 1
			}
			if seen[k] {
				return r.errAt(keyOff, ErrDuplicateField, "duplicate field %q", key)
			}
			seen[k] = true
			r.push(key)
			defer r.pop()
			if k == 0 {
				v, err := r.uint(255, "u8")
				a.Protocol = uint8(v)
				return err
			}
			off := r.i
			s, err := r.str(true)
			if err != nil {
				return err
			}
			n, derr := base64.StdEncoding.Decode(a.Ports[:], []byte(s))
			if derr != nil || n != len(a.Ports) || base64.StdEncoding.EncodedLen(len(a.Ports)) != len(s) {
				return r.errAt(off, ErrWrongType, "ports: want %d bytes in base64", len(a.Ports))
			}
			return nil
		}
		return r.skip()
	})
	if err != nil {
		return a, err
	}
	if !seen[0] || !seen[1] {
		return a, r.errAt(startOff, ErrMissingField, "missing field \"protocol\" or \"ports\"")
	}
	return a, nil
}

// Status answers QueryStatus (new in this version). Wire form:
//
//	{"QueryStatusAnswer":{"version":"...","interfaces":[...],"endpoints":[...],"rules":[...]}}
//
// with the fields of Status, InterfaceStatus, EndpointStatus and RuleStatus
// in the order declared, named as in their comments, and a Match written as
// in AddMatch. Lists are written as [] when empty. Decoding ignores unknown
// fields and reads absent fields as zero (so later versions may add fields),
// rejects duplicate fields and wrong types, and gives nil for empty lists.
type Status struct {
	Version    string            // "version": the server's version
	Interfaces []InterfaceStatus // "interfaces"
	Endpoints  []EndpointStatus  // "endpoints"
	Rules      []RuleStatus      // "rules"
}

// InterfaceStatus describes one claimed NIC.
type InterfaceStatus struct {
	Name    string // "name": e.g. "eth0"
	Backend string // "backend": how the NIC is driven, e.g. "xdp", "macvtap", "memory"
	Queues  int    // "queues": number of queues served, >= 0
	XDPMode string // "xdp_mode": "native", "generic", ... or "" when not XDP
	// MTU is "mtu": the largest IP packet the interface's packet channels
	// carry (the NIC's MTU; a frame adds its Ethernet header and a VLAN
	// tag). Written only when known (> 0); absent, as from an older
	// usnetd, it reads as 0, and a client keeps its own default.
	MTU int
}

// EndpointStatus describes one attached endpoint.
type EndpointStatus struct {
	ID        uint64  // "id": the server's endpoint number
	PID       int32   // "pid": the client's PID as the kernel told it; 0 for static endpoints
	UID       uint32  // "uid": the client's UID as the kernel told it
	Address   string  // "address": the client's socket path ("" for static endpoints)
	Interface string  // "interface": the NIC the endpoint is attached to
	Rules     []Match // "rules": the endpoint's registered rules
	Channels  int     // "channels": number of packet channels, >= 0
	RxPackets uint64  // "rx_packets": frames delivered to the endpoint
	TxPackets uint64  // "tx_packets": frames the endpoint sent
	Drops     uint64  // "drops": frames dropped on the way to the endpoint
	Refused   uint64  // "refused": frames the endpoint sent that the isolation checks dropped (spoofed sources, foreign flows, ...)
	// "refused_by": Refused by reason (the drop reasons' names, e.g.
	// "src_ip"), an object; reasons with no frames are left out.
	RefusedBy map[string]uint64
	// "channel_kinds": the kind of each channel, oldest first ("uds",
	// "shm"); written only when not empty (older usnetds leave it out).
	ChannelKinds []string
}

// The values of RuleStatus.Kind.
const (
	RuleRegistered = "registered" // AddMatch, DEBUG_PORTS or static configuration
	RuleLearned    = "learned"    // learned from a frame the owner sent
)

// RuleStatus describes one rule of the switch.
type RuleStatus struct {
	Match  Match  // "match"
	Owner  string // "owner": who receives the matching frames, e.g. "endpoint 3", "kernel eth0"
	Kind   string // "kind": RuleRegistered or RuleLearned
	Sticky bool   // "sticky": never expired
}

func (AnswerOK) Type() string  { return "OK" }
func (AnswerER) Type() string  { return "ER" }
func (AnswerFD) Type() string  { return "$" }
func (UsedPorts) Type() string { return "QueryUsedPortsAnswer" }
func (Status) Type() string    { return "QueryStatusAnswer" }

func (AnswerOK) isAnswer()  {}
func (AnswerER) isAnswer()  {}
func (AnswerFD) isAnswer()  {}
func (UsedPorts) isAnswer() {}
func (Status) isAnswer()    {}

// Limits of the kernel's dev_valid_name (net/core/dev.c).
const maxInterfaceName = 15 // IFNAMSIZ - 1

// validInterfaceName applies the kernel's dev_valid_name: 1..15 bytes, not
// "." or "..", and no '/', ':', NUL or white space (the kernel's isspace,
// which includes 0xa0). Any other name cannot be a Linux interface, so it
// cannot be one the server claimed.
func validInterfaceName(s string) error {
	if len(s) == 0 {
		return errors.New("empty")
	}
	if len(s) > maxInterfaceName {
		return fmt.Errorf("%d bytes, at most %d", len(s), maxInterfaceName)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%q is not allowed", s)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '/', ':', 0, ' ', '\t', '\n', '\v', '\f', '\r', 0xa0:
			return fmt.Errorf("contains byte %q", c)
		}
	}
	return nil
}

// checkAddr is the rule for every address in a message.
func checkAddr(a netip.Addr) error {
	if !a.IsValid() {
		return errors.New("no address")
	}
	if a.Zone() != "" {
		return fmt.Errorf("%s has a zone", a)
	}
	return nil
}

func (m Match) check() error {
	if err := checkAddr(m.DstAddr); err != nil {
		return fmt.Errorf("dst_addr: %w: %v", ErrAddress, err)
	}
	if m.SrcAddr != nil {
		if err := checkAddr(*m.SrcAddr); err != nil {
			return fmt.Errorf("src_addr: %w: %v", ErrAddress, err)
		}
	}
	return nil
}

// DecodeRequest decodes one request datagram. It never panics; every error
// is a *DecodeError wrapping one of the Err* sentinels.
func DecodeRequest(b []byte) (Request, error) {
	r, err := start(b, MaxMessageSize)
	if err != nil {
		return nil, err
	}
	req, err := r.request()
	if err != nil {
		return nil, err
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return req, nil
}

// start checks size and encoding; the original required valid UTF-8 of the
// whole datagram before parsing.
func start(b []byte, limit int) (*reader, error) {
	r := &reader{b: b}
	if len(b) > limit {
		return nil, &DecodeError{Offset: limit, Msg: fmt.Sprintf("%d bytes, the limit is %d", len(b), limit), Err: ErrTooLarge}
	}
	if !utf8.Valid(b) {
		off := 0
		for off < len(b) {
			c, size := utf8.DecodeRune(b[off:])
			if c == utf8.RuneError && size == 1 {
				break
			}
			off += size
		}
		return nil, &DecodeError{Offset: off, Msg: fmt.Sprintf("invalid UTF-8 byte 0x%02x", b[off]), Err: ErrInvalidUTF8}
	}
	return r, nil
}

func (r *reader) end() error {
	r.ws()
	if r.i != len(r.b) {
		return r.errf(ErrTrailingData, "%d bytes after the end of the message", len(r.b)-r.i)
	}
	return nil
}

// tag reads the start of an externally tagged value: either a bare string
// (a unit variant; hasValue false) or '{' and a key followed by ':' (hasValue
// true; the cursor is then on the value, and closeTag must follow it).
func (r *reader) tag(what string) (name string, hasValue bool, err error) {
	c, ok := r.peek()
	switch {
	case ok && c == '"':
		name, err = r.str(true)
		return name, false, err
	case ok && c == '{':
		r.i++
		if c, ok := r.peek(); ok && c == '}' {
			return "", false, r.errf(ErrNotOneKey, "empty object, expected {\"Type\": value}")
		}
		if c, ok := r.peek(); !ok || c != '"' {
			return "", false, r.errf(ErrSyntax, "expected a string key")
		}
		name, err = r.str(true)
		if err != nil {
			return "", false, err
		}
		return name, true, r.expect(':', "':' after the tag")
	}
	return "", false, r.wrongType(what)
}

// closeTag consumes the '}' that ends a tagged object.
func (r *reader) closeTag() error {
	c, ok := r.peek()
	switch {
	case !ok:
		return r.errf(ErrSyntax, "unexpected end of input, expected '}'")
	case c == '}':
		r.i++
		return nil
	case c == ',':
		return r.errf(ErrNotOneKey, "a second key after the tag")
	}
	return r.errf(ErrSyntax, "expected '}', found %q", c)
}

func (r *reader) request() (Request, error) {
	tagOff := r.i
	name, hasValue, err := r.tag("a message (a string or an object with one key)")
	if err != nil {
		return nil, err
	}
	var req Request
	r.push(name)
	switch name {
	case "QueryUsedPorts", "DeleteClient", "QueryStatus":
		if hasValue {
			if err := r.unitValue(); err != nil {
				return nil, err
			}
		}
		switch name {
		case "QueryUsedPorts":
			req = QueryUsedPorts{}
		case "DeleteClient":
			req = DeleteClient{}
		default:
			req = QueryStatus{}
		}
	case "RequestUDS", "RequestNetmapPipe", "RequestSHM":
		if !hasValue {
			return nil, r.errAt(tagOff, ErrWrongType, "%s needs a value: {%q:[interface,pid]}", name, name)
		}
		iface, pid, err := r.ifacePID(name)
		if err != nil {
			return nil, err
		}
		switch name {
		case "RequestUDS":
			req = RequestUDS{Interface: iface, PID: pid}
		case "RequestSHM":
			req = RequestSHM{Interface: iface, PID: pid}
		default:
			req = RequestNetmapPipe{Interface: iface, PID: pid}
		}
	case "AddMatch", "RemoveMatch":
		if !hasValue {
			return nil, r.errAt(tagOff, ErrWrongType, "%s needs a value: {%q:{...}}", name, name)
		}
		m, err := r.match()
		if err != nil {
			return nil, err
		}
		if name == "AddMatch" {
			req = AddMatch{Match: m}
		} else {
			req = RemoveMatch{Match: m}
		}
	case "QueryPortsInUse":
		if !hasValue {
			return nil, r.errAt(tagOff, ErrWrongType, "%s needs a value: {%q:6}", name, name)
		}
		v, err := r.uint(255, "u8")
		if err != nil {
			return nil, err
		}
		req = QueryPortsInUse{Protocol: uint8(v)}
	case "QueryUsedPortsAnswer", "QueryStatusAnswer", "QueryPortsInUseAnswer":
		return nil, r.errAt(tagOff, ErrNotARequest, "%s is an answer", name)
	default:
		r.pop()
		return nil, r.errAt(tagOff, ErrUnknownType, "unknown message type %q", name)
	}
	r.pop()
	if hasValue {
		if err := r.closeTag(); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// unitValue reads the value of a unit variant in object form: only null.
func (r *reader) unitValue() error {
	isNull, err := r.null()
	if err != nil {
		return err
	}
	if !isNull {
		return r.wrongType("null (a message without a value)")
	}
	return nil
}

func (r *reader) ifacePID(name string) (iface string, pid int32, err error) {
	err = r.tuple(2, name, func(i int) error {
		if i == 0 {
			off := r.i
			r.push("interface")
			s, err := r.str(true)
			if err != nil {
				return err
			}
			if err := validInterfaceName(s); err != nil {
				return r.errAt(off, ErrInterfaceName, "%q: %v", s, err)
			}
			r.pop()
			iface = s
			return nil
		}
		r.push("pid")
		v, err := r.uint(1<<31-1, "a PID")
		if err != nil {
			return err
		}
		r.pop()
		pid = int32(v)
		return nil
	})
	return iface, pid, err
}

// The fields of Match, in the order of the Rust struct.
var matchFields = [5]string{"dst_addr", "dst_port", "src_addr", "src_port", "protocol"}

// match decodes a WantMsg: an object (any order, unknown fields ignored,
// absent ports and src_addr read as null) or, as serde allows for any
// struct, an array of exactly the five fields in order.
func (r *reader) match() (Match, error) {
	var m Match
	var seen [5]bool
	field := func(k int) error {
		r.push(matchFields[k])
		defer r.pop()
		switch k {
		case 0:
			a, err := r.addr()
			if err != nil {
				return err
			}
			m.DstAddr = a
		case 1:
			p, err := r.optPort()
			if err != nil {
				return err
			}
			m.DstPort = p
		case 2:
			isNull, err := r.null()
			if err != nil {
				return err
			}
			m.SrcAddr = nil
			if !isNull {
				a, err := r.addr()
				if err != nil {
					return err
				}
				m.SrcAddr = &a
			}
		case 3:
			p, err := r.optPort()
			if err != nil {
				return err
			}
			m.SrcPort = p
		case 4:
			v, err := r.uint(255, "u8")
			if err != nil {
				return err
			}
			m.Protocol = uint8(v)
		}
		seen[k] = true
		return nil
	}
	c, ok := r.peek()
	switch {
	case ok && c == '[':
		return m, r.tuple(5, "a match in array form", field)
	case ok && c == '{':
	default:
		return m, r.wrongType("a match object")
	}
	startOff := r.i
	err := r.object(func(key string, keyOff int) error {
		for k, f := range matchFields {
			if key == f {
				if seen[k] {
					return r.errAt(keyOff, ErrDuplicateField, "duplicate field %q", key)
				}
				return field(k)
			}
		}
		return r.skip()
	})
	if err != nil {
		return m, err
	}
	if !seen[0] {
		return m, r.errAt(startOff, ErrMissingField, "missing field \"dst_addr\"")
	}
	if !seen[4] {
		return m, r.errAt(startOff, ErrMissingField, "missing field \"protocol\"")
	}
	return m, nil
}

func (r *reader) optPort() (*uint16, error) {
	if isNull, err := r.null(); err != nil || isNull {
		return nil, err
	}
	v, err := r.uint(65535, "u16")
	if err != nil {
		return nil, err
	}
	p := uint16(v)
	return &p, nil
}

// addr decodes {"Ipv4":"a.b.c.d"} or {"Ipv6":"..."}.
func (r *reader) addr() (netip.Addr, error) {
	tagOff := r.i
	fam, hasValue, err := r.tag("an address {\"Ipv4\":...} or {\"Ipv6\":...}")
	if err != nil {
		return netip.Addr{}, err
	}
	if fam != "Ipv4" && fam != "Ipv6" {
		return netip.Addr{}, r.errAt(tagOff, ErrAddress, "unknown address family %q, expected \"Ipv4\" or \"Ipv6\"", fam)
	}
	if !hasValue {
		return netip.Addr{}, r.errAt(tagOff, ErrWrongType, "%s needs a value: {%q:\"...\"}", fam, fam)
	}
	off := r.i
	s, err := r.str(true)
	if err != nil {
		return netip.Addr{}, err
	}
	a, perr := netip.ParseAddr(s)
	switch {
	case perr != nil:
		return netip.Addr{}, r.errAt(off, ErrAddress, "%q is not an IP address", s)
	case a.Zone() != "":
		return netip.Addr{}, r.errAt(off, ErrAddress, "%q has a zone", s)
	case fam == "Ipv4" && !a.Is4():
		return netip.Addr{}, r.errAt(off, ErrAddress, "%q is not an IPv4 address", s)
	case fam == "Ipv6" && !a.Is6():
		return netip.Addr{}, r.errAt(off, ErrAddress, "%q is not an IPv6 address", s)
	}
	return a, r.closeTag()
}

// PeekType returns the tag of a message that may not decode:
// "RequestUDS", "DeleteClient", ..., or "" when not even that can be read.
// It reads at most the first 256 bytes.
func PeekType(b []byte) string {
	r := reader{b: b[:min(len(b), 256)]}
	name, _, err := r.tag("")
	if err != nil {
		return ""
	}
	return name
}

// EncodeRequest returns serde_json's bytes for req. It fails if req is not
// one of the request types (pointers are not accepted) or holds a value
// DecodeRequest would reject.
func EncodeRequest(req Request) ([]byte, error) {
	switch v := req.(type) {
	case QueryUsedPorts, DeleteClient, QueryStatus:
		return appendString(nil, v.Type()), nil
	case QueryPortsInUse:
		return append(strconv.AppendUint([]byte(`{"QueryPortsInUse":`), uint64(v.Protocol), 10), '}'), nil
	case RequestUDS:
		return encodeIfacePID(v.Type(), v.Interface, v.PID)
	case RequestNetmapPipe:
		return encodeIfacePID(v.Type(), v.Interface, v.PID)
	case RequestSHM:
		return encodeIfacePID(v.Type(), v.Interface, v.PID)
	case AddMatch:
		return encodeMatchRequest(v.Type(), v.Match)
	case RemoveMatch:
		return encodeMatchRequest(v.Type(), v.Match)
	}
	return nil, fmt.Errorf("control: encode: %T is not a request type", req)
}

func encodeIfacePID(name, iface string, pid int32) ([]byte, error) {
	if err := validInterfaceName(iface); err != nil {
		return nil, fmt.Errorf("control: encode %s: %w %q: %v", name, ErrInterfaceName, iface, err)
	}
	if pid < 0 {
		return nil, fmt.Errorf("control: encode %s: %w: negative PID %d", name, ErrOutOfRange, pid)
	}
	b := append([]byte(`{"`), name...)
	b = append(b, `":[`...)
	b = appendString(b, iface)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(pid), 10)
	return append(b, "]}"...), nil
}

func encodeMatchRequest(name string, m Match) ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("control: encode %s.%w", name, err)
	}
	b := append([]byte(`{"`), name...)
	b = append(b, `":`...)
	b = appendMatch(b, m)
	return append(b, '}'), nil
}

// appendMatch writes m as serde writes WantMsg. m must have passed check.
func appendMatch(b []byte, m Match) []byte {
	b = append(b, `{"dst_addr":`...)
	b = appendAddr(b, m.DstAddr)
	b = append(b, `,"dst_port":`...)
	b = appendOptU16(b, m.DstPort)
	b = append(b, `,"src_addr":`...)
	if m.SrcAddr == nil {
		b = append(b, "null"...)
	} else {
		b = appendAddr(b, *m.SrcAddr)
	}
	b = append(b, `,"src_port":`...)
	b = appendOptU16(b, m.SrcPort)
	b = append(b, `,"protocol":`...)
	b = strconv.AppendUint(b, uint64(m.Protocol), 10)
	return append(b, '}')
}

func appendOptU16(b []byte, p *uint16) []byte {
	if p == nil {
		return append(b, "null"...)
	}
	return strconv.AppendUint(b, uint64(*p), 10)
}

// appendAddr writes {"Ipv4":"a.b.c.d"} or {"Ipv6":"..."}; a must be valid.
func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		b = append(b, `{"Ipv4":"`...)
	} else {
		b = append(b, `{"Ipv6":"`...)
	}
	b = a.AppendTo(b) // digits, hex, ':' and '.' only: nothing to escape
	return append(b, `"}`...)
}

// EncodeUsedPorts returns serde_json's bytes for the answer to
// QueryUsedPorts. Empty or nil lists are written as []. An entry whose
// address is not valid is left out (no rule has one); a zone is dropped.
func EncodeUsedPorts(listening, connected []PortEntry) []byte {
	b := []byte(`{"QueryUsedPortsAnswer":{"listening":`)
	b = appendPortEntries(b, listening)
	b = append(b, `,"connected":`...)
	b = appendPortEntries(b, connected)
	return append(b, "}}"...)
}

func appendPortEntries(b []byte, es []PortEntry) []byte {
	b = append(b, '[')
	first := true
	for _, e := range es {
		if !e.Addr.IsValid() {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '[')
		b = strconv.AppendUint(b, uint64(e.Protocol), 10)
		b = append(b, ',')
		b = appendAddr(b, e.Addr.WithZone(""))
		b = append(b, ',')
		b = strconv.AppendUint(b, uint64(e.Port), 10)
		b = append(b, ']')
	}
	return append(b, ']')
}

// EncodeStatus returns the bytes of the answer to QueryStatus. It fails if
// a Match is invalid (see EncodeRequest) or a count or PID is negative.
func EncodeStatus(s Status) ([]byte, error) {
	b := []byte(`{"QueryStatusAnswer":{"version":`)
	b = appendString(b, s.Version)
	b = append(b, `,"interfaces":[`...)
	for i, in := range s.Interfaces {
		if in.Queues < 0 {
			return nil, fmt.Errorf("control: encode status: interface %q: %w: negative queues %d", in.Name, ErrOutOfRange, in.Queues)
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = appendString(b, in.Name)
		b = append(b, `,"backend":`...)
		b = appendString(b, in.Backend)
		b = append(b, `,"queues":`...)
		b = strconv.AppendInt(b, int64(in.Queues), 10)
		b = append(b, `,"xdp_mode":`...)
		b = appendString(b, in.XDPMode)
		if in.MTU > 0 {
			b = append(b, `,"mtu":`...)
			b = strconv.AppendInt(b, int64(in.MTU), 10)
		}
		b = append(b, '}')
	}
	b = append(b, `],"endpoints":[`...)
	for i, e := range s.Endpoints {
		if e.PID < 0 || e.Channels < 0 {
			return nil, fmt.Errorf("control: encode status: endpoint %d: %w: negative pid or channels", e.ID, ErrOutOfRange)
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = strconv.AppendUint(b, e.ID, 10)
		b = append(b, `,"pid":`...)
		b = strconv.AppendInt(b, int64(e.PID), 10)
		b = append(b, `,"uid":`...)
		b = strconv.AppendUint(b, uint64(e.UID), 10)
		b = append(b, `,"address":`...)
		b = appendString(b, e.Address)
		b = append(b, `,"interface":`...)
		b = appendString(b, e.Interface)
		b = append(b, `,"rules":[`...)
		for j, m := range e.Rules {
			if err := m.check(); err != nil {
				return nil, fmt.Errorf("control: encode status: endpoint %d rule %d: %w", e.ID, j, err)
			}
			if j > 0 {
				b = append(b, ',')
			}
			b = appendMatch(b, m)
		}
		b = append(b, `],"channels":`...)
		b = strconv.AppendInt(b, int64(e.Channels), 10)
		b = append(b, `,"rx_packets":`...)
		b = strconv.AppendUint(b, e.RxPackets, 10)
		b = append(b, `,"tx_packets":`...)
		b = strconv.AppendUint(b, e.TxPackets, 10)
		b = append(b, `,"drops":`...)
		b = strconv.AppendUint(b, e.Drops, 10)
		b = append(b, `,"refused":`...)
		b = strconv.AppendUint(b, e.Refused, 10)
		b = append(b, `,"refused_by":{`...)
		for j, reason := range slices.Sorted(maps.Keys(e.RefusedBy)) {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendString(b, reason)
			b = append(b, ':')
			b = strconv.AppendUint(b, e.RefusedBy[reason], 10)
		}
		b = append(b, '}')
		if len(e.ChannelKinds) > 0 {
			b = append(b, `,"channel_kinds":[`...)
			for j, k := range e.ChannelKinds {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendString(b, k)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	b = append(b, `],"rules":[`...)
	for i, rs := range s.Rules {
		if err := rs.Match.check(); err != nil {
			return nil, fmt.Errorf("control: encode status: rule %d: %w", i, err)
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"match":`...)
		b = appendMatch(b, rs.Match)
		b = append(b, `,"owner":`...)
		b = appendString(b, rs.Owner)
		b = append(b, `,"kind":`...)
		b = appendString(b, rs.Kind)
		b = append(b, `,"sticky":`...)
		b = strconv.AppendBool(b, rs.Sticky)
		b = append(b, '}')
	}
	return append(b, "]}}"...), nil
}

// EncodeAnswer returns the bytes of any answer: the raw "OK", "ER", "$", or
// the JSON of UsedPorts or Status.
func EncodeAnswer(a Answer) ([]byte, error) {
	switch v := a.(type) {
	case AnswerOK:
		return []byte(RawOK), nil
	case AnswerER:
		return []byte(RawER), nil
	case AnswerFD:
		return []byte(RawFD), nil
	case UsedPorts:
		return EncodeUsedPorts(v.Listening, v.Connected), nil
	case Status:
		return EncodeStatus(v)
	case PortsInUse:
		return EncodePortsInUse(v.Protocol, v.Ports), nil
	}
	return nil, fmt.Errorf("control: encode: %T is not an answer type", a)
}

// DecodeAnswer decodes one answer datagram as a client receives it: the
// raw "OK", "ER", "$", or the JSON of QueryUsedPortsAnswer or
// QueryStatusAnswer. (The nmreq struct that answers RequestNetmapPipe is
// binary and not handled here.) It never panics; every error is a
// *DecodeError.
func DecodeAnswer(b []byte) (Answer, error) {
	switch string(b) {
	case RawOK:
		return AnswerOK{}, nil
	case RawER:
		return AnswerER{}, nil
	case RawFD:
		return AnswerFD{}, nil
	}
	r, err := start(b, MaxAnswerSize)
	if err != nil {
		return nil, err
	}
	tagOff := r.i
	name, hasValue, err := r.tag("an answer: \"OK\", \"ER\", \"$\" or an object with one key")
	if err != nil {
		return nil, err
	}
	var a Answer
	r.push(name)
	switch name {
	case "QueryUsedPortsAnswer", "QueryStatusAnswer":
		if !hasValue {
			return nil, r.errAt(tagOff, ErrWrongType, "%s needs a value", name)
		}
		if name == "QueryUsedPortsAnswer" {
			a, err = r.usedPorts()
		} else {
			a, err = r.status()
		}
		if err != nil {
			return nil, err
		}
	case "QueryPortsInUseAnswer":
		if !hasValue {
			return nil, r.errAt(tagOff, ErrWrongType, "%s needs a value", name)
		}
		if a, err = r.portsInUse(); err != nil {
			return nil, err
		}
	case "RequestUDS", "RequestNetmapPipe", "AddMatch", "RemoveMatch", "QueryUsedPorts", "DeleteClient", "QueryStatus", "RequestSHM", "QueryPortsInUse":
		return nil, r.errAt(tagOff, ErrNotAnAnswer, "%s is a request", name)
	default:
		r.pop()
		return nil, r.errAt(tagOff, ErrUnknownType, "unknown answer type %q", name)
	}
	r.pop()
	if err := r.closeTag(); err != nil {
		return nil, err
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return a, nil
}

// usedPorts decodes the struct variant QueryUsedPortsAnswer: an object with
// both lists (unknown fields ignored) or, as serde allows, an array of the
// two lists.
func (r *reader) usedPorts() (UsedPorts, error) {
	var u UsedPorts
	var seen [2]bool
	names := [2]string{"listening", "connected"}
	field := func(k int) error {
		r.push(names[k])
		defer r.pop()
		es, err := r.portEntries()
		if err != nil {
			return err
		}
		if k == 0 {
			u.Listening = es
		} else {
			u.Connected = es
		}
		seen[k] = true
		return nil
	}
	c, ok := r.peek()
	switch {
	case ok && c == '[':
		return u, r.tuple(2, "QueryUsedPortsAnswer in array form", field)
	case ok && c == '{':
	default:
		return u, r.wrongType("an object")
	}
	startOff := r.i
	err := r.object(func(key string, keyOff int) error {
		for k, n := range names {
			if key == n {
				if seen[k] {
					return r.errAt(keyOff, ErrDuplicateField, "duplicate field %q", key)
				}
				return field(k)
			}
		}
		return r.skip()
	})
	if err != nil {
		return u, err
	}
	for k, n := range names {
		if !seen[k] {
			return u, r.errAt(startOff, ErrMissingField, "missing field %q", n)
		}
	}
	return u, nil
}

func (r *reader) portEntries() ([]PortEntry, error) {
	var es []PortEntry
	err := r.array(func(int) error {
		var e PortEntry
		err := r.tuple(3, "a port entry [protocol,address,port]", func(i int) error {
			switch i {
			case 0:
				v, err := r.uint(255, "u8")
				e.Protocol = uint8(v)
				return err
			case 1:
				a, err := r.addr()
				e.Addr = a
				return err
			default:
				v, err := r.uint(65535, "u16")
				e.Port = uint16(v)
				return err
			}
		})
		es = append(es, e)
		return err
	})
	return es, err
}

// fields decodes an object whose known fields are handled by fns: unknown
// fields are skipped, a repeated known field is an error, absent ones stay
// zero.
func (r *reader) fields(fns map[string]func() error) error {
	seen := make(map[string]bool, len(fns))
	return r.object(func(key string, keyOff int) error {
		fn, ok := fns[key]
		if !ok {
			return r.skip()
		}
		if seen[key] {
			return r.errAt(keyOff, ErrDuplicateField, "duplicate field %q", key)
		}
		seen[key] = true
		r.push(key)
		defer r.pop()
		return fn()
	})
}

// list decodes an array (or null, read as empty) calling each per element.
func (r *reader) list(each func() error) error {
	if isNull, err := r.null(); err != nil || isNull {
		return err
	}
	return r.array(func(int) error { return each() })
}

func (r *reader) strInto(p *string) func() error {
	return func() (err error) { *p, err = r.str(true); return err }
}

func (r *reader) uintInto(max uint64, typ string, set func(uint64)) func() error {
	return func() error {
		v, err := r.uint(max, typ)
		if err == nil {
			set(v)
		}
		return err
	}
}

func (r *reader) status() (Status, error) {
	var s Status
	err := r.fields(map[string]func() error{
		"version": r.strInto(&s.Version),
		"interfaces": func() error {
			return r.list(func() error {
				var in InterfaceStatus
				err := r.fields(map[string]func() error{
					"name":     r.strInto(&in.Name),
					"backend":  r.strInto(&in.Backend),
					"queues":   r.uintInto(math.MaxInt, "a count", func(v uint64) { in.Queues = int(v) }),
					"xdp_mode": r.strInto(&in.XDPMode),
					"mtu":      r.uintInto(1<<31-1, "an MTU", func(v uint64) { in.MTU = int(v) }),
				})
				s.Interfaces = append(s.Interfaces, in)
				return err
			})
		},
		"endpoints": func() error {
			return r.list(func() error {
				var e EndpointStatus
				err := r.fields(map[string]func() error{
					"id":        r.uintInto(1<<64-1, "u64", func(v uint64) { e.ID = v }),
					"pid":       r.uintInto(1<<31-1, "a PID", func(v uint64) { e.PID = int32(v) }),
					"uid":       r.uintInto(1<<32-1, "u32", func(v uint64) { e.UID = uint32(v) }),
					"address":   r.strInto(&e.Address),
					"interface": r.strInto(&e.Interface),
					"rules": func() error {
						return r.list(func() error {
							m, err := r.match()
							e.Rules = append(e.Rules, m)
							return err
						})
					},
					"channels":   r.uintInto(math.MaxInt, "a count", func(v uint64) { e.Channels = int(v) }),
					"rx_packets": r.uintInto(1<<64-1, "u64", func(v uint64) { e.RxPackets = v }),
					"tx_packets": r.uintInto(1<<64-1, "u64", func(v uint64) { e.TxPackets = v }),
					"drops":      r.uintInto(1<<64-1, "u64", func(v uint64) { e.Drops = v }),
					"refused":    r.uintInto(1<<64-1, "u64", func(v uint64) { e.Refused = v }),
					"channel_kinds": func() error {
						return r.list(func() error {
							k, err := r.str(true)
							e.ChannelKinds = append(e.ChannelKinds, k)
							return err
						})
					},
					"refused_by": func() error {
						if isNull, err := r.null(); err != nil || isNull {
							return err
						}
						return r.object(func(key string, keyOff int) error {
							if _, dup := e.RefusedBy[key]; dup {
								return r.errAt(keyOff, ErrDuplicateField, "duplicate field %q", key)
							}
							v, err := r.uint(1<<64-1, "u64")
							if err == nil {
								if e.RefusedBy == nil {
									e.RefusedBy = map[string]uint64{}
								}
								e.RefusedBy[key] = v
							}
							return err
						})
					},
				})
				s.Endpoints = append(s.Endpoints, e)
				return err
			})
		},
		"rules": func() error {
			return r.list(func() error {
				var rs RuleStatus
				var hasMatch bool
				startOff := r.i
				err := r.fields(map[string]func() error{
					"match": func() (err error) {
						rs.Match, err = r.match()
						hasMatch = err == nil
						return err
					},
					"owner":  r.strInto(&rs.Owner),
					"kind":   r.strInto(&rs.Kind),
					"sticky": func() (err error) { rs.Sticky, err = r.boolean(); return err },
				})
				if err == nil && !hasMatch {
					err = r.errAt(startOff, ErrMissingField, "missing field \"match\"")
				}
				s.Rules = append(s.Rules, rs)
				return err
			})
		},
	})
	return s, err
}
