package firewall

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// SocketFilter is the AF_PACKET backend's socket filter
// (bpf/sockfilter.c): a BPF_PROG_TYPE_SOCKET_FILTER program for
// SO_ATTACH_BPF on the backend's receive sockets, which keeps out the
// frames that belong to the kernel alone (an unfragmented TCP, UDP, DCCP,
// SCTP or UDP-Lite packet, or a non-error ICMP one, whose tuple a kernel
// rule or a learned kernel flow owns), so that usnetd neither copies them
// nor counts them as drops. It reads the Firewall's own maps, so it
// follows every change to the kernel's rules at once. Frames the switch
// must also see (ARP, EAPOL, DHCP answers, neighbour discovery, ICMP
// errors, fragments) pass.
type SocketFilter struct {
	objs sockfilterObjects
}

// SocketFilter loads the socket filter over the firewall's kernel maps.
// The caller attaches Program to its sockets and closes the filter when
// they are closed (a socket keeps its own reference to the program).
func (fw *Firewall) SocketFilter() (*SocketFilter, error) {
	spec, err := loadSockfilter()
	if err != nil {
		return nil, fmt.Errorf("%w: socket filter: %w", ErrLoad, err)
	}
	replace := map[string]*ebpf.Map{"kernel_rules": fw.objs.KernelRules, "kernel_learned": fw.objs.KernelLearned}
	for name, m := range replace {
		ms, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("%w: socket filter: no map %s", ErrLoad, name)
		}
		// The firewall may have sized its maps at load: take its sizes.
		// Type, key and value must match as compiled; the load checks.
		ms.MaxEntries, ms.Flags = m.MaxEntries(), m.Flags()
	}
	f := &SocketFilter{}
	if err := spec.LoadAndAssign(&f.objs, &ebpf.CollectionOptions{MapReplacements: replace}); err != nil {
		return nil, fmt.Errorf("%w: socket filter: %w", ErrLoad, err)
	}
	return f, nil
}

// Program returns the filter program, for SO_ATTACH_BPF.
func (f *SocketFilter) Program() *ebpf.Program { return f.objs.UsnetdSockFilter }

// Counters returns how many frames the filter kept from the sockets (the
// kernel's) and let through, over every socket it is attached to.
func (f *SocketFilter) Counters() (kernel, passed uint64, err error) {
	for i, dst := range []*uint64{&kernel, &passed} {
		var per []uint64
		if err := f.objs.SfCounters.Lookup(uint32(i), &per); err != nil {
			return 0, 0, fmt.Errorf("firewall: socket filter counters: %w", err)
		}
		for _, v := range per {
			*dst += v
		}
	}
	return kernel, passed, nil
}

// Close releases the program and the filter's references to the maps.
func (f *SocketFilter) Close() error { return f.objs.Close() }
