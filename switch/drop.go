package l4

// DropReason says why a frame was not switched. DropNone means it was.
// Every reason is counted; the names are the label values of
// usnetd_drops_total{reason}.
type DropReason uint8

const (
	DropNone DropReason = iota
	// Parsing.
	DropTruncated        // shorter than its headers say
	DropUnknownEtherType // neither ARP, EAPOL, IPv4 nor IPv6
	DropBadVersion       // IP version field does not match the EtherType
	DropBadIHL           // IPv4 header length below 20 bytes
	DropBadLength        // IPv4 total length below its header length
	DropBadExtHeader     // IPv6 extension header chain truncated or too long
	DropTruncatedL4      // first fragment or packet too short for its ports or ICMP header
	DropMappedAddr       // IPv6 packet with an IPv4-mapped source or destination (::ffff:a.b.c.d)
	// Decision.
	DropLoopback     // IP destination in 127.0.0.0/8 or ::1
	DropNoMatch      // no rule claims the frame
	DropSpoof        // learning would let the sender take another owner's flow
	DropFragNoFirst  // a later fragment whose first fragment never came
	DropFragHoldFull // the hold for fragments that came before their first is full
	DropNoKernel     // NO_HOST_RINGS: the frame was for the kernel path
	DropFragEvicted  // a held fragment evicted, oldest first, to keep the fragment store within its bytes
	DropRuleLimit    // learning the flow would take its sender over its rule limit
	// Pipeline.
	DropRingFull // the ring to the destination port was full
	DropNoBuffer // the buffer pool was exhausted
	DropTooBig   // the frame does not fit a buffer
	DropPortGone // the destination port was detached
	DropTxError  // the backend failed to send
	// Isolation: what an endpoint (a PortEndpoint port) may not send
	// (isolate.go). The kernel port and the NIC are not checked.
	DropSrcMAC            // source MAC neither the NIC's nor one of ADD_MACS
	DropSrcIP             // source IP not one the endpoint may use
	DropSrcPortPrivileged // source port below 1024 without CAP_NET_BIND_SERVICE, not a registered port
	DropFlowForeign       // into another owner's connection, from a source the sender does not hold
	DropICMPErrorForeign  // ICMP error about a flow that is not the sender's
	DropFragForeign       // later fragment whose first fragment the sender did not send
	DropNeighSpoof        // ARP or neighbour discovery claiming a MAC or address not the endpoint's
	DropHostConfig        // router advertisement, redirect, DHCP/DHCPv6 server message or EAPOL
	DropQuota             // the destination port (or all non-NIC ports together) has its quota of frames queued
	numDropReasons
)

// NumDropReasons is the number of DropReason values, DropNone included;
// use it to size per-reason counter arrays.
const NumDropReasons = int(numDropReasons)

var dropNames = [numDropReasons]string{
	DropNone:              "none",
	DropTruncated:         "truncated",
	DropUnknownEtherType:  "unknown_ethertype",
	DropBadVersion:        "bad_ip_version",
	DropBadIHL:            "bad_ihl",
	DropBadLength:         "bad_length",
	DropBadExtHeader:      "bad_ext_header",
	DropTruncatedL4:       "truncated_l4",
	DropMappedAddr:        "mapped_addr",
	DropLoopback:          "loopback",
	DropNoMatch:           "no_match",
	DropSpoof:             "spoof",
	DropFragNoFirst:       "frag_no_first",
	DropFragHoldFull:      "frag_hold_full",
	DropNoKernel:          "no_kernel",
	DropFragEvicted:       "frag_evicted",
	DropRuleLimit:         "rule_limit",
	DropRingFull:          "ring_full",
	DropNoBuffer:          "no_buffer",
	DropTooBig:            "too_big",
	DropPortGone:          "port_gone",
	DropTxError:           "tx_error",
	DropSrcMAC:            "src_mac",
	DropSrcIP:             "src_ip",
	DropSrcPortPrivileged: "src_port_privileged",
	DropFlowForeign:       "flow_foreign",
	DropICMPErrorForeign:  "icmp_error_foreign",
	DropFragForeign:       "frag_foreign",
	DropNeighSpoof:        "neigh_spoof",
	DropHostConfig:        "host_config",
	DropQuota:             "quota",
}

// String returns the reason's metric label, e.g. "truncated".
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// Isolation reports whether r is the verdict of a check on what an
// endpoint may send (isolate.go; DropSpoof included): the frame was the
// sender's fault, not the network's.
func (r DropReason) Isolation() bool {
	return r == DropSpoof || r >= DropSrcMAC && r <= DropHostConfig
}
