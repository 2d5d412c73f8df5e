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
	DropQuota    // the destination port (or all non-NIC ports together) has its quota of frames queued
	numDropReasons
)

// NumDropReasons is the number of DropReason values, DropNone included;
// use it to size per-reason counter arrays.
const NumDropReasons = int(numDropReasons)

var dropNames = [numDropReasons]string{
	DropNone:             "none",
	DropTruncated:        "truncated",
	DropUnknownEtherType: "unknown_ethertype",
	DropBadVersion:       "bad_ip_version",
	DropBadIHL:           "bad_ihl",
	DropBadLength:        "bad_length",
	DropBadExtHeader:     "bad_ext_header",
	DropTruncatedL4:      "truncated_l4",
	DropLoopback:         "loopback",
	DropNoMatch:          "no_match",
	DropSpoof:            "spoof",
	DropFragNoFirst:      "frag_no_first",
	DropFragHoldFull:     "frag_hold_full",
	DropNoKernel:         "no_kernel",
	DropFragEvicted:      "frag_evicted",
	DropRuleLimit:        "rule_limit",
	DropRingFull:         "ring_full",
	DropNoBuffer:         "no_buffer",
	DropTooBig:           "too_big",
	DropPortGone:         "port_gone",
	DropTxError:          "tx_error",
	DropQuota:            "quota",
}

// String returns the reason's metric label, e.g. "truncated".
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}
