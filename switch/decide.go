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
// kernel path, endpoints), with its rule table, its local identity (local
// MACs and the addresses endpoints may use, local.go), the policies of its
// endpoint ports, its fragment memory and its DHCP relay mark.
type Switch struct {
	// Table holds the rules; it may be shared with the control plane,
	// which adds and removes registered rules.
	Table  *Table
	local  atomic.Pointer[localSet]
	pol    policies
	polMap atomic.Pointer[map[PortID]PortPolicy]
	frags  *fragTable
	dhcp   atomic.Uint64 // owner waiting for the next DHCP answer: port<<8 | kind; 0 none; one-shot
	// noIsolation turns the checks on endpoints' frames off: benchmarks
	// use it for the baseline that shows what the checks cost.
	noIsolation bool
	// flows, when set, sees the frames of endpoints' flows (flowwatch.go).
	flows atomic.Pointer[FlowWatch]
}

// NewSwitch returns a domain over table t with the local MACs macs (the
// NIC's and ADD_MACS) and no address that endpoints may use yet: see
// SetLocal.
func NewSwitch(t *Table, macs ...MAC) *Switch {
	s := &Switch{Table: t, frags: newFragTable()}
	s.SetLocal(macs, nil)
	s.polMap.Store(&map[PortID]PortPolicy{})
	return s
}

// Decide is the forwarding decision of docs/switching.md for frame f
// (already parsed, without drop reason) that arrived on port in. h is the
// caller's handle for the frame's buffer: when the verdict is ActHold, the
// switch keeps h (a fragment that came before its first fragment) and the
// caller must not free the buffer; it gets h back from TakeHeld or
// FragSweep.
//
// A frame from an endpoint (PortEndpoint) first passes the isolation
// checks (isolate.go): what it may send, whatever it writes into its
// channel. Decide then changes the domain's state the way the original
// did, except that no frame adds to the local-MAC set: a frame that a
// non-NIC port sends teaches the table its reverse tuple (see learn, where
// the anti-hijack check lives); a DHCP request marks its sender; a first
// fragment's verdict is remembered. Everything else is a pure function of
// the frame and the state. It does not allocate on the path of
// unfragmented frames.
func (s *Switch) Decide(in Owner, f *Frame, h uint64) Verdict {
	loc := s.local.Load()
	ep := in.Kind == PortEndpoint && !s.noIsolation
	if ep {
		if r := checkEndpoint(loc, f); r != DropNone {
			return drop(r)
		}
	}
	// 1. ARP, EAPOL and IPv6 neighbour discovery go to every other port.
	if f.Kind == KindARP || f.Kind == KindEAPOL || f.NeighborDiscovery {
		return Verdict{Action: ActFlood}
	}
	// 2. Nothing goes to a loopback address.
	if f.Dst.IsLoopback() {
		return drop(DropLoopback)
	}
	// 3. A frame that an endpoint or the kernel sends.
	if in.Kind != PortNIC {
		local := loc.macs.has(f.DstMAC)
		if ep {
			if f.Fragment && f.FragOffset != 0 {
				return s.frags.sentBy(f, in.Port)
			}
			if f.ICMPError {
				if r := s.checkICMPError(in, f); r != DropNone {
					return drop(r)
				}
			}
		}
		if r := s.learn(in, f, ep, local); r != DropNone {
			return drop(r)
		}
		if ep && f.Fragment {
			// An endpoint's first fragment: its later fragments follow
			// only as long as this one passed, and only from this port.
			v := Verdict{Action: ActUplink}
			if local {
				v = s.match(in, f)
			}
			v.Release = s.frags.remember(f, v, in.Port)
			return v
		}
		if !local {
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
		v.Release = s.frags.remember(f, v, in.Port)
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
	o, ok, watched := f.pre.owner, f.pre.ok, f.pre.watched // looked up with the frame's batch (batch.go)
	if !f.pre.done {
		var e entry
		e, _, ok = s.Table.find(&f.Dst, f.DstPort, &f.Src, f.SrcPort, f.Proto)
		o, watched = e.owner(), e.watched()
	}
	if ok && valid(o, in) {
		if watched && f.Ports {
			s.noteFlow(&f.Dst, f.DstPort, &f.Src, f.SrcPort, f, false)
		}
		return Verdict{Action: ActForward, To: o}
	}
	if f.DHCP == DHCPAnswer {
		// The mark is one-shot: the answer that takes it clears it, so
		// that a port's one request brings it one answer, and a later
		// answer (another server's offer, a stray one) only with a request
		// of its own.
		if m := s.dhcp.Load(); m != 0 {
			if o := unpackOwner(m); o.Port != 0 && o.Port != in.Port && s.dhcp.CompareAndSwap(m, 0) {
				return Verdict{Action: ActForward, To: o}
			}
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
//
// For an endpoint (ep) whose source the table does not give it yet, two
// more checks come before the rule is learned (isolate.go): a privileged
// source port needs its port's policy (DropSrcPortPrivileged), and a frame
// switched locally (local) must not land in another owner's connection
// (DropFlowForeign).
func (s *Switch) learn(in Owner, f *Frame, ep, local bool) DropReason {
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
	if e, ok := s.Table.get(ListenKey(f.Src, f.Proto, f.SrcPort)); ok && e.port() == in.Port && e.kind() == Registered {
		return DropNone
	}
	e, _, ok := s.Table.find(&f.Src, f.SrcPort, &f.Dst, f.DstPort, f.Proto)
	if ok {
		if o := e.owner(); o.Port == in.Port || o.Kind == PortNIC {
			if e.watched() && f.Ports && o.Port == in.Port {
				s.noteFlow(&f.Src, f.SrcPort, &f.Dst, f.DstPort, f, true)
			}
			return DropNone // known already
		}
		return DropSpoof
	}
	if ep {
		if r := s.checkNewSource(in, f, local); r != DropNone {
			return r
		}
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
