package l4

import (
	"errors"
	"sync/atomic"
)

// Action is what the switch does with a frame.
type Action uint8

const (
	ActDrop    Action = iota // drop it and count Verdict.Reason
	ActForward               // send it to Verdict.To
	ActFlood                 // send it to every port of the domain but the one it came from
	ActUplink                // send it out of the NIC
	ActHold                  // the switch holds it (a fragment before its first); see Switch.Decide
)

func (a Action) String() string {
	switch a {
	case ActDrop:
		return "drop"
	case ActForward:
		return "forward"
	case ActFlood:
		return "flood"
	case ActUplink:
		return "uplink"
	case ActHold:
		return "hold"
	}
	return "action?"
}

// Verdict is the forwarding decision for one frame.
type Verdict struct {
	Action Action
	To     Owner      // with ActForward
	Reason DropReason // with ActDrop
	// Release is set when the frame was a first fragment and later
	// fragments of its datagram were held: the caller fetches them with
	// TakeHeld and sends them the same way.
	Release bool
}

func drop(r DropReason) Verdict { return Verdict{Action: ActDrop, Reason: r} }

// Switch is one switch domain: a NIC and the ports attached to it (the
// kernel path, endpoints), with its rule table, its local-MAC set, its
// fragment memory and its DHCP relay mark.
type Switch struct {
	// Table holds the rules; it may be shared with the control plane,
	// which adds and removes registered rules.
	Table *Table
	// MACs is the local-MAC set.
	MACs  *MACSet
	frags *fragTable
	dhcp  atomic.Uint64 // owner waiting for the next DHCP answer: port<<8 | kind; 0 none
}

// NewSwitch returns a domain over table t with the local MACs macs (ADD_MACS).
func NewSwitch(t *Table, macs ...MAC) *Switch {
	return &Switch{Table: t, MACs: NewMACSet(macs...), frags: newFragTable()}
}

// Decide is the forwarding decision of REFERENCE.md "Switching" for frame f
// (already parsed, without drop reason) that arrived on port in. h is the
// caller's handle for the frame's buffer: when the verdict is ActHold, the
// switch keeps h (a fragment that came before its first fragment) and the
// caller must not free the buffer; it gets h back from TakeHeld or
// FragSweep.
//
// Decide changes the domain's state the way the original did: a frame that
// a non-NIC port sends teaches the local-MAC set its source MAC and the
// table its reverse tuple (see learn, where the anti-hijack check lives);
// a DHCP request marks its sender; a first fragment's verdict is
// remembered. Everything else is a pure function of the frame and the state.
// It does not allocate on the path of unfragmented frames.
func (s *Switch) Decide(in Owner, f *Frame, h uint64) Verdict {
	// 1. ARP, EAPOL and IPv6 neighbour discovery go to every other port.
	if f.Kind == KindARP || f.Kind == KindEAPOL || f.NeighborDiscovery {
		if in.Kind != PortNIC {
			s.learnMAC(f.SrcMAC)
		}
		return Verdict{Action: ActFlood}
	}
	// 2. Nothing goes to a loopback address.
	if f.Dst.IsLoopback() {
		return drop(DropLoopback)
	}
	// 3. A frame that an endpoint or the kernel sends.
	if in.Kind != PortNIC {
		s.learnMAC(f.SrcMAC)
		if r := s.learn(in, f); r != DropNone {
			return drop(r)
		}
		if !s.MACs.Has(f.DstMAC) {
			return Verdict{Action: ActUplink}
		}
	}
	// 4. and 5. From the NIC, or switched locally: match.
	if f.Fragment && f.FragOffset != 0 {
		v, _ := s.frags.follow(f, h)
		if v.Action == ActForward && v.To.Port == in.Port {
			return drop(DropNoMatch) // a datagram never returns to its sender
		}
		return v
	}
	v := s.match(in, f)
	if f.Fragment {
		v.Release = s.frags.remember(f, v)
	}
	return v
}

// TakeHeld appends to dst the handles of the fragments held for the
// datagram of the first fragment f, after Decide returned a verdict with
// Release set. They go the way of that verdict.
func (s *Switch) TakeHeld(f *Frame, dst []uint64) []uint64 { return s.frags.takeHeld(f, dst) }

// FragSweep ages the fragment memory by one tick (call it once a second)
// and hands the handles of held fragments whose first fragment never came
// to expired, for the caller to free and count as DropFragNoFirst.
func (s *Switch) FragSweep(expired func(h uint64)) { s.frags.sweep(expired) }

// FragLen returns how many datagrams the fragment memory holds.
func (s *Switch) FragLen() int { return s.frags.len() }

func (s *Switch) learnMAC(m MAC) {
	if !m.IsMulticast() && !m.IsZero() && !s.MACs.Has(m) {
		s.MACs.Add(m)
	}
}

// match finds the port that owns an incoming (or locally switched) frame.
// A match owned by a NIC or by the sender itself is no match.
func (s *Switch) match(in Owner, f *Frame) Verdict {
	if f.ICMPError && f.InnerOK {
		// An ICMP error goes to the owner of the flow it is about, so that
		// path-MTU discovery and unreachables reach the stack that sent
		// the packet. The quoted packet went from us (Inner.Src) to the remote.
		q := &f.Inner
		if o, ok := s.Table.LookupOwner(q.Src, q.SrcPort, q.Dst, q.DstPort, q.Proto); ok && valid(o, in) {
			return Verdict{Action: ActForward, To: o}
		}
	}
	if o, ok := s.Table.LookupOwner(f.Dst, f.DstPort, f.Src, f.SrcPort, f.Proto); ok && valid(o, in) {
		return Verdict{Action: ActForward, To: o}
	}
	if f.DHCP == DHCPAnswer {
		if o := unpackOwner(s.dhcp.Load()); o.Port != 0 && o.Port != in.Port {
			return Verdict{Action: ActForward, To: o}
		}
	}
	return drop(DropNoMatch)
}

func valid(o, in Owner) bool { return o.Kind != PortNIC && o.Port != in.Port }

// learn is step 3 of the decision for a frame that a non-NIC port sends:
// it learns the reverse tuple as a rule for the sender, so that replies
// find it. It returns DropSpoof instead when the sender's frame belongs to
// a flow that another owner holds.
//
// This is where learning is kept from claiming another owner's flow: before
// a rule is learned, the reverse tuple is looked up exactly as an incoming
// reply would be; if the reply would reach an owner other than the sender,
// the sender has no business sending the frame, and the frame is dropped.
// Table.Insert adds to this that a learned rule never replaces any rule.
func (s *Switch) learn(in Owner, f *Frame) DropReason {
	if f.Fragment && f.FragOffset != 0 {
		return DropNone // later fragments carry no ports: the first one taught us
	}
	if f.DHCP == DHCPRequest && f.Src == (Addr{10: 0xff, 11: 0xff}) && f.Dst.Is4() && f.Dst[15] == 255 {
		s.dhcp.Store(packOwner(in))
		return DropNone
	}
	if f.ICMPError {
		return DropNone // an error is about a flow, it does not open one
	}
	// A reply from one of the sender's registered listening rules needs no
	// rule of its own: the listening rule already brings the next packet.
	if e, ok := s.Table.get(ListenKey(f.Src, f.Proto, f.SrcPort)); ok && e.port == in.Port && e.kind == Registered {
		return DropNone
	}
	o, ok := s.Table.LookupOwner(f.Src, f.SrcPort, f.Dst, f.DstPort, f.Proto)
	if ok {
		if o.Port == in.Port || o.Kind == PortNIC {
			return DropNone // known already
		}
		return DropSpoof
	}
	// Insert never replaces: losing a race to another owner is fine, the
	// next frame of this flow finds its rule and is dropped as a spoof.
	err := s.Table.Insert(Rule{
		Key:   FlowKey(f.Src, f.SrcPort, f.Dst, f.DstPort, f.Proto),
		Owner: in,
		Kind:  Learned,
	})
	if errors.Is(err, ErrRuleLimit) {
		return DropRuleLimit // the sender holds its limit of rules: no new flow
	}
	return DropNone
}

func packOwner(o Owner) uint64   { return uint64(o.Port)<<8 | uint64(o.Kind) }
func unpackOwner(v uint64) Owner { return Owner{Port: PortID(v >> 8), Kind: PortKind(v & 0xff)} }
