package l4

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/usnetd/usnetd/internal/ipproto"
)

// PortID names a switch port (a NIC, the kernel path, an endpoint) within
// one switch domain. It is assigned by the pipeline; 0 is "no port".
type PortID uint32

// PortKind is what a port stands for.
type PortKind uint8

const (
	PortNIC      PortKind = iota + 1 // a queue of the claimed NIC
	PortKernel                       // the kernel's network stack
	PortEndpoint                     // a userspace network stack
)

func (k PortKind) String() string {
	switch k {
	case PortNIC:
		return "nic"
	case PortKernel:
		return "kernel"
	case PortEndpoint:
		return "endpoint"
	}
	return "port?"
}

// Owner is who holds a rule: a port and what kind of port it is.
type Owner struct {
	Port PortID
	Kind PortKind
}

// KernelPort is the port of KernelOwner. A Pipeline never hands it out.
const KernelPort PortID = 1<<32 - 1

// KernelOwner owns the kernel's rules where the kernel is not a switch port
// (with AF_XDP and AF_PACKET the kernel's frames never enter the pipeline:
// an eBPF program passes them, and the Go table is the one truth of which
// ones). A frame that the switch decides for KernelOwner is dropped as
// DropPortGone, since no port of the pipeline leads to the kernel.
var KernelOwner = Owner{Port: KernelPort, Kind: PortKernel}

// RuleKind tells how a rule came to be.
type RuleKind uint8

const (
	// Registered rules were asked for: AddMatch, DEBUG_PORTS, STATIC_PIPES.
	Registered RuleKind = iota + 1
	// Learned rules are the reverse tuple of a frame that a port sent.
	Learned
)

func (k RuleKind) String() string {
	switch k {
	case Registered:
		return "registered"
	case Learned:
		return "learned"
	}
	return "kind?"
}

// Key flags say which optional fields of a Key are set.
const (
	KeyLocalPort  uint8 = 1 << iota // LocalPort is set
	KeyRemote                       // Remote is set
	KeyRemotePort                   // RemotePort is set (needs KeyRemote)
)

// Key is what a rule matches: a local address, a protocol, and optionally a
// local port, a remote address and a remote port. Unset fields are zero and
// their flag is clear, so a Key is comparable and usable as a map key.
type Key struct {
	Local      Addr
	Remote     Addr
	LocalPort  uint16
	RemotePort uint16
	Proto      uint8
	Flags      uint8
}

// Rule maps a Key to its owner.
type Rule struct {
	Key
	Owner Owner
	Kind  RuleKind
	// Sticky rules never expire (DEBUG_PORTS, STATIC_PIPES).
	Sticky bool
	// Watched rules are connections' rules whose frames the switch's
	// FlowWatch notes (flowwatch.go); other rules' frames cost it nothing.
	Watched bool
}

// ListenKey returns the key of a listening rule: local address, protocol and
// local port (no port for protocols without ports).
func ListenKey(local Addr, proto uint8, port uint16) Key {
	k := Key{Local: local, Proto: proto}
	if HasPorts(proto) {
		k.LocalPort, k.Flags = port, KeyLocalPort
	}
	return k
}

// FlowKey returns the exact key of a flow seen from our side: local address
// and port, remote address and port.
func FlowKey(local Addr, lport uint16, remote Addr, rport uint16, proto uint8) Key {
	k := Key{Local: local, Remote: remote, Proto: proto, Flags: KeyRemote}
	if HasPorts(proto) {
		k.LocalPort, k.RemotePort = lport, rport
		k.Flags |= KeyLocalPort | KeyRemotePort
	}
	return k
}

// Errors of Key.Validate.
var (
	ErrNoLocal        = errors.New("rule has no local address")
	ErrPortRequired   = errors.New("a local port is required for this protocol")
	ErrPortNotAllowed = errors.New("this protocol has no ports")
	ErrRemotePort     = errors.New("a remote port needs a remote address")
	ErrFamilyMismatch = errors.New("local and remote address are of different IP families")
)

// Validate reports whether k is a rule the table can match: a local
// address; for protocols with ports a local port, and a remote port only
// with a remote address; for protocols without ports no ports at all.
func (k Key) Validate() error {
	if k.Local.IsZero() {
		return ErrNoLocal
	}
	if k.Flags&KeyRemote != 0 && k.Remote.Is4() != k.Local.Is4() {
		return ErrFamilyMismatch
	}
	if k.Flags&KeyRemotePort != 0 && k.Flags&KeyRemote == 0 {
		return ErrRemotePort
	}
	if HasPorts(k.Proto) {
		if k.Flags&KeyLocalPort == 0 {
			return ErrPortRequired
		}
	} else if k.Flags&(KeyLocalPort|KeyRemotePort) != 0 {
		return ErrPortNotAllowed
	}
	if k.Flags&KeyRemote == 0 && !k.Remote.IsZero() || k.Flags&KeyLocalPort == 0 && k.LocalPort != 0 ||
		k.Flags&KeyRemotePort == 0 && k.RemotePort != 0 {
		return errors.New("rule key has a value without its flag")
	}
	return nil
}

// Listening reports whether k has no remote side.
func (k Key) Listening() bool { return k.Flags&KeyRemote == 0 }

// String formats k as "tcp 198.18.0.1:80 <- 198.18.1.2:41000"
// (ipproto.Rule, the one way usnetd writes a rule).
func (k Key) String() string {
	lp, rp := -1, -1
	if k.Flags&KeyLocalPort != 0 {
		lp = int(k.LocalPort)
	}
	var remote netip.Addr
	if k.Flags&KeyRemote != 0 {
		remote = k.Remote.Netip()
		if k.Flags&KeyRemotePort != 0 {
			rp = int(k.RemotePort)
		}
	}
	return ipproto.Rule(k.Proto, k.Local.Netip(), lp, remote, rp)
}

// ProtoName names an IP protocol ("tcp", "udp", "icmp", ... or
// "proto-N"): ipproto.Name.
func ProtoName(p uint8) string { return ipproto.Name(p) }

func (r Rule) String() string {
	st := ""
	if r.Sticky {
		st = " sticky"
	}
	return fmt.Sprintf("%v -> %v/%d (%v%s)", r.Key, r.Owner.Kind, r.Owner.Port, r.Kind, st)
}
