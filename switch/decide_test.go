package l4

import (
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// Each test is named after a step of docs/switching.md.

func parsed(t testing.TB, p pkt) *Frame {
	t.Helper()
	f := new(Frame)
	if r := Parse(p.build(t), f); r != DropNone {
		t.Fatalf("Parse: %v", r)
	}
	return f
}

func newTestSwitch(t testing.TB) *Switch {
	t.Helper()
	s := NewSwitch(NewTable())
	localTo(s, macNIC, macEP)
	l := MustParseAddr(ipLocal)
	must(t, s.Table.Insert(Rule{Key: ListenKey(l, ProtoTCP, 22), Owner: kernel, Kind: Registered, Sticky: true}))
	must(t, s.Table.Insert(reg(ListenKey(l, ProtoTCP, 80), epA)))
	must(t, s.Table.Insert(reg(ListenKey(MustParseAddr(ip6Local), ProtoTCP, 80), epA)))
	return s
}

// localTo makes macs the domain's local MACs and ipLocal, ip6Local and
// fe80::1 the addresses its endpoints may use.
func localTo(s *Switch, macs ...MAC) {
	s.SetLocal(macs, []Addr{MustParseAddr(ipLocal), MustParseAddr(ip6Local), MustParseAddr("fe80::1")})
}

func wantVerdict(t *testing.T, got Verdict, want Verdict) {
	t.Helper()
	if got != want {
		t.Fatalf("verdict %+v, want %+v", got, want)
	}
}

func fwd(o Owner) Verdict { return Verdict{Action: ActForward, To: o} }

func TestStep1ARPAndEAPOLMirrored(t *testing.T) {
	s := newTestSwitch(t)
	arp := pkt{src: macRemote, dst: macBcast, ethType: layers.EthernetTypeARP}
	wantVerdict(t, s.Decide(nic, parsed(t, arp), 0), Verdict{Action: ActFlood})
	eapol := pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeEAPOL}
	wantVerdict(t, s.Decide(nic, parsed(t, eapol), 0), Verdict{Action: ActFlood})
	// An endpoint's ARP is mirrored too (when it claims what is its own,
	// see isolate_test.go), and teaches the switch nothing.
	s.SetLocal([]MAC{macNIC}, []Addr{MustParseAddr(ipRemote)})
	arp.src = macNIC
	wantVerdict(t, s.Decide(epA, parsed(t, arp), 0), Verdict{Action: ActFlood})
	if macs, _ := s.Local(); len(macs) != 1 || macs[0] != macNIC {
		t.Fatalf("local MACs after an endpoint's ARP: %v", macs)
	}
}

func TestStep1NeighborDiscoveryMirrored(t *testing.T) {
	s := newTestSwitch(t)
	ns := pkt{src: macRemote, dst: MAC{0x33, 0x33, 0xff, 0, 0, 1}, ethType: layers.EthernetTypeIPv6, srcIP: ip6Remote,
		dstIP: "ff02::1:ff00:1", proto: layers.IPProtocolICMPv6, icmpType: 135}
	wantVerdict(t, s.Decide(nic, parsed(t, ns), 0), Verdict{Action: ActFlood})
}

func TestStep2LoopbackDropped(t *testing.T) {
	s := newTestSwitch(t)
	wantVerdict(t, s.Decide(nic, parsed(t, tcp4(macRemote, macNIC, ipRemote, 1, "127.0.0.1", 22)), 0), drop(DropLoopback))
	wantVerdict(t, s.Decide(epA, parsed(t, tcp6(macEP, macNIC, ip6Local, 1, "::1", 22)), 0), drop(DropLoopback))
}

func TestStep3NoFrameJoinsTheLocalSet(t *testing.T) {
	s := NewSwitch(NewTable(), macNIC)
	s.SetLocal([]MAC{macNIC}, []Addr{MustParseAddr(ipLocal)})
	// Not the kernel's, not the NIC's, not an endpoint's source MAC, not
	// even an ARP's sender: the set is the NIC's and ADD_MACS.
	s.Decide(kernel, parsed(t, tcp4(macEP, macRemote, ipLocal, 80, ipRemote, 999)), 0)
	s.Decide(epA, parsed(t, tcp4(macRemote, macRemote, ipLocal, 80, ipRemote, 999)), 0)
	s.Decide(nic, parsed(t, tcp4(macRemote, macNIC, ipRemote, 999, ipLocal, 80)), 0)
	s.Decide(epA, parsed(t, pkt{src: macRemote, dst: macBcast, ethType: layers.EthernetTypeARP}), 0)
	for _, m := range []MAC{macEP, macRemote} {
		if s.IsLocalMAC(m) {
			t.Fatalf("%v joined the local set", m)
		}
	}
	if !s.IsLocalMAC(macNIC) {
		t.Fatal("the NIC's MAC is not local")
	}
}

func TestStep3LearnsReverseTuple(t *testing.T) {
	s := newTestSwitch(t)
	out := tcp4(macEP, macRemote, ipLocal, 50000, ipRemote, 443)
	wantVerdict(t, s.Decide(epB, parsed(t, out), 0), Verdict{Action: ActUplink})
	r, ok := s.Table.Get(FlowKey(MustParseAddr(ipLocal), 50000, MustParseAddr(ipRemote), 443, ProtoTCP))
	if !ok || r.Owner != epB || r.Kind != Learned || r.Sticky {
		t.Fatalf("learned rule: %v %v", r, ok)
	}
	// The reply finds the sender.
	wantVerdict(t, s.Decide(nic, parsed(t, tcp4(macRemote, macEP, ipRemote, 443, ipLocal, 50000)), 0), fwd(epB))
	// IPv6 too.
	s.Decide(epB, parsed(t, tcp6(macEP, macRemote, ip6Local, 50001, ip6Remote, 443)), 0)
	wantVerdict(t, s.Decide(nic, parsed(t, tcp6(macRemote, macEP, ip6Remote, 443, ip6Local, 50001)), 0), fwd(epB))
	// Portless protocols learn a (local, proto, remote) rule: a ping's reply comes back.
	ping := pkt{src: macEP, dst: macRemote, ethType: layers.EthernetTypeIPv4, srcIP: ipLocal, dstIP: "198.18.1.7", proto: layers.IPProtocolICMPv4, icmpType: 8}
	s.Decide(epB, parsed(t, ping), 0)
	pong := pkt{src: macRemote, dst: macEP, ethType: layers.EthernetTypeIPv4, srcIP: "198.18.1.7", dstIP: ipLocal, proto: layers.IPProtocolICMPv4}
	wantVerdict(t, s.Decide(nic, parsed(t, pong), 0), fwd(epB))
}

func TestStep3NoLearningFromOwnListeningRule(t *testing.T) {
	s := newTestSwitch(t)
	before := s.Table.Len()
	s.Decide(epA, parsed(t, tcp4(macEP, macRemote, ipLocal, 80, ipRemote, 40000)), 0)
	if s.Table.Len() != before {
		t.Fatalf("a reply from the sender's listening rule learned a rule: %v", s.Table.Rules())
	}
}

func TestStep3LearningCannotClaimAnotherOwnersFlow(t *testing.T) {
	s := newTestSwitch(t)
	// epB sends from the kernel's port 22: a reply would reach the kernel,
	// so epB has no business sending it.
	wantVerdict(t, s.Decide(epB, parsed(t, tcp4(macEP, macRemote, ipLocal, 22, ipRemote, 40000)), 0), drop(DropSpoof))
	// epB sends from epA's listening port 80.
	wantVerdict(t, s.Decide(epB, parsed(t, tcp4(macEP, macRemote, ipLocal, 80, ipRemote, 40000)), 0), drop(DropSpoof))
	// epA opened a connection; epB forges a frame of it.
	s.Decide(epA, parsed(t, tcp4(macEP, macRemote, ipLocal, 50000, ipRemote, 443)), 0)
	wantVerdict(t, s.Decide(epB, parsed(t, tcp4(macEP, macRemote, ipLocal, 50000, ipRemote, 443)), 0), drop(DropSpoof))
	// Nothing was learned for epB, and the replies still go to their owners.
	for _, r := range s.Table.Rules() {
		if r.Owner == epB {
			t.Fatalf("epB learned %v", r)
		}
	}
	wantVerdict(t, s.Decide(nic, parsed(t, tcp4(macRemote, macNIC, ipRemote, 443, ipLocal, 50000)), 0), fwd(epA))
	wantVerdict(t, s.Decide(nic, parsed(t, tcp4(macRemote, macNIC, ipRemote, 40000, ipLocal, 22)), 0), fwd(kernel))
}

func TestStep3DHCPRequestMarksReceiverOfAnswer(t *testing.T) {
	s := newTestSwitch(t)
	req := udp4(macEP, macBcast, "0.0.0.0", 68, "255.255.255.255", 67)
	wantVerdict(t, s.Decide(epB, parsed(t, req), 0), Verdict{Action: ActUplink})
	if s.Table.Len() != 3 {
		t.Fatalf("the DHCP request learned a rule: %v", s.Table.Rules())
	}
	ans := udp4(macRemote, macBcast, "198.18.1.1", 67, "255.255.255.255", 68)
	wantVerdict(t, s.Decide(nic, parsed(t, ans), 0), fwd(epB))
	// The mark is one-shot: a second answer (another server's offer) is
	// dropped until the next request, whose answer goes to its sender.
	wantVerdict(t, s.Decide(nic, parsed(t, ans), 0), drop(DropNoMatch))
	wantVerdict(t, s.Decide(epA, parsed(t, req), 0), Verdict{Action: ActUplink})
	wantVerdict(t, s.Decide(nic, parsed(t, ans), 0), fwd(epA))
	wantVerdict(t, s.Decide(nic, parsed(t, ans), 0), drop(DropNoMatch))
	// Without a mark, an answer is dropped.
	wantVerdict(t, newTestSwitch(t).Decide(nic, parsed(t, ans), 0), drop(DropNoMatch))
}

func TestStep3LocalMACSwitching(t *testing.T) {
	s := NewSwitch(NewTable())
	localTo(s, macNIC, macEP)
	l := MustParseAddr(ipLocal)
	must(t, s.Table.Insert(reg(ListenKey(l, ProtoTCP, 8080), epA)))
	// epB connects to epA on the same IP through the NIC's (local) MAC.
	wantVerdict(t, s.Decide(epB, parsed(t, tcp4(macEP, macNIC, ipLocal, 50000, ipLocal, 8080)), 0), fwd(epA))
	// A frame to a MAC that is not local leaves through the NIC, whatever its IP.
	wantVerdict(t, s.Decide(epB, parsed(t, tcp4(macEP, macRemote, ipLocal, 50001, ipLocal, 8080)), 0), Verdict{Action: ActUplink})
	// A locally switched frame with no rule is dropped.
	wantVerdict(t, s.Decide(epB, parsed(t, tcp4(macEP, macNIC, ipLocal, 50002, ipLocal, 9999)), 0), drop(DropNoMatch))
}

func TestStep4MatchOwnedByNICOrSenderIsNoMatch(t *testing.T) {
	s := NewSwitch(NewTable())
	localTo(s, macNIC, macEP)
	l := MustParseAddr(ipLocal)
	must(t, s.Table.Insert(reg(ListenKey(l, ProtoUDP, 7), nic)))
	must(t, s.Table.Insert(reg(ListenKey(l, ProtoUDP, 8), epA)))
	wantVerdict(t, s.Decide(nic, parsed(t, udp4(macRemote, macNIC, ipRemote, 1, ipLocal, 7)), 0), drop(DropNoMatch))
	wantVerdict(t, s.Decide(epA, parsed(t, udp4(macEP, macNIC, ipLocal, 8, ipLocal, 8)), 0), drop(DropNoMatch))
}

func TestStep4NoMatchDropped(t *testing.T) {
	s := newTestSwitch(t)
	wantVerdict(t, s.Decide(nic, parsed(t, tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 23)), 0), drop(DropNoMatch))
	wantVerdict(t, s.Decide(nic, parsed(t, tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 22)), 0), fwd(kernel))
	wantVerdict(t, s.Decide(nic, parsed(t, tcp6(macRemote, macNIC, ip6Remote, 1, ip6Local, 80)), 0), fwd(epA))
}

func fragments4(id uint16) (first, later pkt) {
	first = udp4(macRemote, macNIC, ipRemote, 4000, ipLocal, 5353)
	first.fragID, first.moreFrags, first.payload = id, true, make([]byte, 64)
	later = first
	later.moreFrags, later.fragOff, later.payload = false, 9, make([]byte, 32)
	return
}

func TestStep5FragmentsFollowTheFirst(t *testing.T) {
	s := newTestSwitch(t)
	must(t, s.Table.Insert(reg(ListenKey(MustParseAddr(ipLocal), ProtoUDP, 5353), epB)))
	first, later := fragments4(77)
	wantVerdict(t, s.Decide(nic, parsed(t, first), 1), fwd(epB))
	wantVerdict(t, s.Decide(nic, parsed(t, later), 2), fwd(epB))
	// A datagram whose first fragment matched nothing drops its later ones.
	first2, later2 := fragments4(78)
	first2.dport = 9
	wantVerdict(t, s.Decide(nic, parsed(t, first2), 3), drop(DropNoMatch))
	wantVerdict(t, s.Decide(nic, parsed(t, later2), 4), drop(DropNoMatch))
}

func TestStep5FragmentsBeforeTheirFirstAreHeld(t *testing.T) {
	s := newTestSwitch(t)
	must(t, s.Table.Insert(reg(ListenKey(MustParseAddr(ipLocal), ProtoUDP, 5353), epB)))
	first, later := fragments4(90)
	wantVerdict(t, s.Decide(nic, parsed(t, later), 41), Verdict{Action: ActHold})
	wantVerdict(t, s.Decide(nic, parsed(t, later), 42), Verdict{Action: ActHold})
	f := parsed(t, first)
	v := s.Decide(nic, f, 43)
	wantVerdict(t, v, Verdict{Action: ActForward, To: epB, Release: true})
	held := s.TakeHeld(f, nil)
	if len(held) != 2 || held[0] != 41 || held[1] != 42 {
		t.Fatalf("held = %v", held)
	}
	if again := s.TakeHeld(f, nil); len(again) != 0 {
		t.Fatalf("held twice: %v", again)
	}
}

func TestStep5FragmentHoldIsBounded(t *testing.T) {
	s := newTestSwitch(t)
	_, later := fragments4(91)
	f := parsed(t, later)
	for i := range FragHoldPerDatagram {
		wantVerdict(t, s.Decide(nic, f, uint64(i)), Verdict{Action: ActHold})
	}
	wantVerdict(t, s.Decide(nic, f, 99), drop(DropFragHoldFull))
	// Unclaimed fragments are handed back when they time out.
	var expired []uint64
	for range FragTimeoutTicks + 1 {
		s.FragSweep(func(h uint64) { expired = append(expired, h) })
	}
	if len(expired) != FragHoldPerDatagram || s.FragLen() != 0 {
		t.Fatalf("expired %d, left %d", len(expired), s.FragLen())
	}
	// Many datagrams: the memory is bounded too.
	held := 0
	for id := range 3 * FragMaxDatagrams {
		_, l := fragments4(uint16(id))
		l.srcIP = "198.18.1." + string(rune('0'+id%10))
		if s.Decide(nic, parsed(t, l), 0).Action == ActHold {
			held++
		}
	}
	if held > FragMaxDatagrams || s.FragLen() > FragMaxDatagrams {
		t.Fatalf("held %d datagrams, remembered %d", held, s.FragLen())
	}
}

func TestStep5IPv6FragmentsFollowTheFirst(t *testing.T) {
	s := newTestSwitch(t)
	wantVerdict(t, s.Decide(nic, parsed(t, v6frag(100, false)), 7), Verdict{Action: ActHold})
	f := parsed(t, v6frag(0, true))
	wantVerdict(t, s.Decide(nic, f, 8), Verdict{Action: ActForward, To: epA, Release: true})
	if held := s.TakeHeld(f, nil); len(held) != 1 || held[0] != 7 {
		t.Fatalf("held = %v", held)
	}
	wantVerdict(t, s.Decide(nic, parsed(t, v6frag(200, false)), 9), fwd(epA))
}

func TestStep4ICMPErrorGoesToTheFlowOwner(t *testing.T) {
	s := newTestSwitch(t)
	must(t, s.Table.Insert(reg(ListenKey(MustParseAddr(ipLocal), ProtoICMP, 0), kernel)))
	// epB has a connection out; a router says the path MTU is smaller.
	s.Decide(epB, parsed(t, tcp4(macEP, macRemote, ipLocal, 41000, ipRemote, 443)), 0)
	fragNeeded := func(sport uint16) pkt {
		return pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv4, srcIP: "198.18.9.9", dstIP: ipLocal,
			proto: layers.IPProtocolICMPv4, icmpType: 3, code: 4, inner: quoted4(t, layers.IPProtocolTCP, ipLocal, sport, ipRemote, 443)}
	}
	wantVerdict(t, s.Decide(nic, parsed(t, fragNeeded(41000)), 0), fwd(epB))
	// An error about a flow nobody owns goes where plain ICMP goes.
	wantVerdict(t, s.Decide(nic, parsed(t, fragNeeded(41001)), 0), fwd(kernel))
	// An error about a flow of a listening endpoint reaches it.
	wantVerdict(t, s.Decide(nic, parsed(t, fragNeeded(80)), 0), fwd(epA))
	// ICMPv6 packet too big, about an IPv6 flow.
	s.Decide(epB, parsed(t, tcp6(macEP, macRemote, ip6Local, 41000, ip6Remote, 443)), 0)
	ptb := pkt{src: macRemote, dst: macNIC, ethType: layers.EthernetTypeIPv6, srcIP: "2001:db8:9::9", dstIP: ip6Local,
		proto: layers.IPProtocolICMPv6, icmpType: 2, inner: quoted6(t, layers.IPProtocolTCP, ip6Local, 41000, ip6Remote, 443)}
	wantVerdict(t, s.Decide(nic, parsed(t, ptb), 0), fwd(epB))
	// An endpoint's ICMP error about its own flow is not learned and not
	// a spoof.
	before := s.Table.Len()
	unreach := pkt{src: macEP, dst: macRemote, ethType: layers.EthernetTypeIPv4, srcIP: ipLocal, dstIP: ipRemote,
		proto: layers.IPProtocolICMPv4, icmpType: 3, code: 3, inner: quoted4(t, layers.IPProtocolTCP, ipRemote, 5000, ipLocal, 80)}
	wantVerdict(t, s.Decide(epA, parsed(t, unreach), 0), Verdict{Action: ActUplink})
	if s.Table.Len() != before {
		t.Fatal("an ICMP error learned a rule")
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	s := newTestSwitch(t)
	in := parsed(t, tcp4(macRemote, macNIC, ipRemote, 1, ipLocal, 80))
	out := parsed(t, tcp4(macEP, macRemote, ipLocal, 80, ipRemote, 1))
	learnedOut := parsed(t, tcp4(macEP, macRemote, ipLocal, 50000, ipRemote, 1))
	s.Decide(epB, learnedOut, 0)
	for name, c := range map[string]struct {
		o Owner
		f *Frame
	}{"from nic": {nic, in}, "reply from listener": {epA, out}, "known outgoing flow": {epB, learnedOut}} {
		if n := testing.AllocsPerRun(100, func() { s.Decide(c.o, c.f, 0) }); n != 0 {
			t.Errorf("%s: Decide allocates %v times", name, n)
		}
	}
}
