package l4

// Isolation: the checks on every frame that an endpoint (a PortEndpoint
// port: a userspace stack, or whatever writes into its channel) sends,
// before the frame is switched or anything is learned from it. The kernel
// port and the NIC are not checked. Each failure is a DropReason of its
// own, counted per port like every drop.
//
// An endpoint may send:
//   - from a local MAC only (the NIC's or one of ADD_MACS: an endpoint with
//     a MAC of its own must be listed there), DropSrcMAC;
//   - from an address it may use only (the interface's addresses and those
//     granted by ENDPOINT_ADDRS; 0.0.0.0 only for a DHCP request, :: only
//     for duplicate address detection and MLD), DropSrcIP;
//   - from a source (address, protocol, port) that is free or its own: the
//     reverse tuple of its frame must not be another owner's (DropSpoof,
//     learn), and a frame switched locally that lands in another owner's
//     connection must come from a source the sender already holds
//     (DropFlowForeign);
//   - from a source port below 1024 only with uid 0 or CAP_NET_BIND_SERVICE
//     (PortPolicy.BindPrivileged), or from one of its registered ports,
//     DropSrcPortPrivileged;
//   - ICMP errors about its own flows only (the quoted packet must have
//     been one that its rules brought it), DropICMPErrorForeign;
//   - later fragments only of a datagram whose first fragment it sent and
//     that passed, DropFragForeign (its first fragment is remembered in the
//     fragment memory with its sender; when that memory is full, the later
//     fragments are dropped too: fail closed);
//   - ARP and neighbour discovery only with its MACs and addresses as
//     sender and link-layer addresses (a neighbour advertisement only for
//     an address it may use), DropNeighSpoof;
//   - no router advertisement or redirect (ICMPv6 134, 137; ICMP 5, 9),
//     no DHCP or DHCPv6 server message (UDP from port 67 or 547), no EAPOL:
//     DropHostConfig.
//
// The checks read the local identity (one atomic load, local.go) and the
// table, take no lock and do not allocate; the port's policy is read only
// for a privileged source port.

// PrivilegedPorts is the first source port that needs no privilege.
const PrivilegedPorts = 1024

// checkEndpoint is the part of the checks that needs only the frame and the
// local identity.
func checkEndpoint(loc *localSet, f *Frame) DropReason {
	if !loc.macs.has(f.SrcMAC) {
		return DropSrcMAC
	}
	switch f.Kind {
	case KindEAPOL:
		return DropHostConfig
	case KindARP:
		if f.NeighBad || !loc.macs.has(f.NeighMAC) || f.Src != v4Unspecified && !loc.addrs.has(f.Src) {
			return DropNeighSpoof
		}
		return DropNone
	}
	if f.NeighborDiscovery {
		return checkND(loc, f)
	}
	if !loc.addrs.has(f.Src) && !unspecifiedSourceOK(f) {
		return DropSrcIP
	}
	if f.Ports && f.Proto == ProtoUDP && (f.SrcPort == 67 || f.SrcPort == 547) {
		return DropHostConfig // a DHCP or DHCPv6 server's answer
	}
	if f.Proto == ProtoICMP && f.Src.Is4() && (f.ICMPType == 5 || f.ICMPType == 9) && f.FirstFragment() {
		return DropHostConfig // an ICMP redirect or router advertisement
	}
	return DropNone
}

var v4Unspecified = Addr{10: 0xff, 11: 0xff}

// unspecifiedSourceOK reports whether f may come from the unspecified
// address: a DHCP request from 0.0.0.0, a multicast listener message
// (MLD, ICMPv6 130-132 and 143) from :: while the stack's address is
// tentative. (Neighbour solicitations from :: are checkND's.)
func unspecifiedSourceOK(f *Frame) bool {
	switch f.Src {
	case v4Unspecified:
		return f.DHCP == DHCPRequest
	case Addr{}:
		return f.Proto == ProtoICMPv6 && (f.ICMPType >= 130 && f.ICMPType <= 132 || f.ICMPType == 143)
	}
	return false
}

// checkND checks an ICMPv6 neighbour discovery message from an endpoint.
func checkND(loc *localSet, f *Frame) DropReason {
	switch f.ICMPType {
	case 134, 137: // router advertisement, redirect
		return DropHostConfig
	}
	if f.NeighBad || f.NeighMACSet && !loc.macs.has(f.NeighMAC) {
		return DropNeighSpoof
	}
	// Solicitations may come from :: (duplicate address detection).
	if !loc.addrs.has(f.Src) && !(f.Src.IsZero() && (f.ICMPType == 133 || f.ICMPType == 135)) {
		return DropNeighSpoof
	}
	if f.ICMPType == 136 && !loc.addrs.has(f.NeighTarget) {
		return DropNeighSpoof // advertising an address that is not the endpoint's
	}
	return DropNone
}

// checkICMPError checks an ICMP or ICMPv6 error from endpoint in: the
// packet it quotes went from a remote (Inner.Src) to the endpoint
// (Inner.Dst), so the table must give that packet to in.
func (s *Switch) checkICMPError(in Owner, f *Frame) DropReason {
	if !f.InnerOK {
		return DropICMPErrorForeign
	}
	q := &f.Inner
	if o, ok := s.Table.LookupOwner(q.Dst, q.DstPort, q.Src, q.SrcPort, q.Proto); !ok || o.Port != in.Port {
		return DropICMPErrorForeign
	}
	return DropNone
}

// checkNewSource checks a frame from endpoint in whose source the table
// does not give to anyone yet (learn is about to give it to in).
func (s *Switch) checkNewSource(in Owner, f *Frame, local bool) DropReason {
	if f.Ports && f.SrcPort < PrivilegedPorts && !s.policy(in.Port).BindPrivileged {
		return DropSrcPortPrivileged
	}
	if local {
		// The frame is switched locally: if it lands in a connection
		// (a rule with a remote side) of another owner, its source is
		// that connection's peer, which the sender does not hold.
		k, e, ok := s.Table.lookup(f.Dst, f.DstPort, f.Src, f.SrcPort, f.Proto)
		if ok && k.Flags&KeyRemote != 0 && e.port() != in.Port {
			return DropFlowForeign
		}
	}
	return DropNone
}
