package firewall

// counterNames names the per-CPU counters of the eBPF programs, by their
// index (enum fw_counter in bpf/firewall.c). Every frame the XDP hook sees
// counts in exactly one of pass_kernel, to_xsk and dropped_no_xsk; every
// frame the TC hook sees in exactly one of pass_kernel and tc_dropped. The
// pass_* reasons add up to pass_kernel; parse_error, fragment_to_xsk and
// no_host_rings say why some frames were not the kernel's (in the TC hook
// too, despite the name of fragment_to_xsk).
// learn_* count the egress learner's work per outgoing frame;
// egress_endpoint_dropped the frames the kernel sent from an endpoint's
// flow (a local port an endpoint registered), which the egress program
// dropped instead. pass_fragment_early counts later fragments that came
// before their first fragment, for a (destination, protocol) on which no
// endpoint has a rule. host_* count the host path (AttachHostPort):
// frames from usnetd's TAP put into the kernel (host_in) or refused by the
// classifier (host_in_dropped), the kernel's frames to an endpoint's MAC
// sent to the TAP (host_out) and its ARP, NDP and EAPOL cloned to it
// (host_clone).
var counterNames = [...]string{
	bpfFwCounterCNT_PASS_KERNEL:         "pass_kernel",
	bpfFwCounterCNT_TO_XSK:              "to_xsk",
	bpfFwCounterCNT_DROPPED_NO_XSK:      "dropped_no_xsk",
	bpfFwCounterCNT_PASS_ALLOWED:        "pass_allowed",
	bpfFwCounterCNT_PASS_ARP:            "pass_arp",
	bpfFwCounterCNT_PASS_EAPOL:          "pass_eapol",
	bpfFwCounterCNT_PASS_DHCP:           "pass_dhcp",
	bpfFwCounterCNT_PASS_NDP:            "pass_ndp",
	bpfFwCounterCNT_PASS_ICMP_ERROR:     "pass_icmp_error",
	bpfFwCounterCNT_PASS_FRAGMENT:       "pass_fragment",
	bpfFwCounterCNT_PASS_FRAGMENT_EARLY: "pass_fragment_early",
	bpfFwCounterCNT_PARSE_ERROR:         "parse_error",
	bpfFwCounterCNT_FRAGMENT_TO_XSK:     "fragment_to_xsk",
	bpfFwCounterCNT_NO_HOST_RINGS:       "no_host_rings",
	bpfFwCounterCNT_LEARN_NEW:           "learn_new",
	bpfFwCounterCNT_LEARN_REFRESH:       "learn_refresh",
	bpfFwCounterCNT_LEARN_COVERED:       "learn_covered",
	bpfFwCounterCNT_LEARN_SKIPPED:       "learn_skipped",
	bpfFwCounterCNT_LEARN_FAILED:        "learn_failed",
	bpfFwCounterCNT_TC_DROPPED:          "tc_dropped",
	bpfFwCounterCNT_EGRESS_ENDPOINT:     "egress_endpoint_dropped",
	bpfFwCounterCNT_HOST_IN:             "host_in",
	bpfFwCounterCNT_HOST_IN_DROPPED:     "host_in_dropped",
	bpfFwCounterCNT_HOST_OUT:            "host_out",
	bpfFwCounterCNT_HOST_CLONE:          "host_clone",
}

// CounterNames returns the names of the counters that Counters reports, in
// the order of their indexes.
func CounterNames() []string { return append([]string(nil), counterNames[:]...) }

// A compile-time check that every counter has a name.
var _ [0]struct{} = [len(counterNames) - int(bpfFwCounterCNT_MAX)]struct{}{}
