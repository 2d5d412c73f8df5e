package firewall

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// HostMark is the skb mark (SO_MARK, fwmark) of the frames that the host
// path puts into the NIC's ingress (bpf/firewall.c HOST_MARK). Packet
// sockets on the NIC leave such frames out: usnetd's AF_PACKET sockets
// (the socket filter) and the neighbour tap of the AF_XDP backend.
const HostMark = 0x75736e64

// AttachHostPort makes tapIfindex, a TAP that usnetd reads and writes in
// the firewall's network namespace, the kernel's side port of the switch
// (the host path):
//
//   - endpoint → kernel: a TCX ingress program on the TAP judges every
//     frame usnetd writes there with the classifier, as if it came from
//     the wire, and redirects the kernel's into the NIC's ingress (marked
//     HostMark), as if the NIC had received them; the rest is dropped
//     (counter host_in_dropped). The kernel's firewall holds for the host
//     path as for the wire.
//   - kernel → endpoint: the egress program sends the kernel's frames to
//     a MAC in macs (ADD_MACS) to the TAP instead of the wire (host_out),
//     and clones its ARP, NDP and EAPOL frames to group addresses to the
//     TAP (host_clone), after its own checks (the kernel still cannot send
//     from an endpoint's flow).
//
// tapIfindex is resolved in the calling thread's network namespace, which
// must be the NIC's. A second call replaces the first. The link on the TAP
// is not pinned: it goes with the TAP. DetachHostPort, Close and Release undo it.
func (fw *Firewall) AttachHostPort(tapIfindex int, macs []net.HardwareAddr) error {
	if tapIfindex <= 0 {
		return fmt.Errorf("firewall: host port: bad ifindex %d", tapIfindex)
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return ErrClosed
	}
	fw.detachHost()
	if err := fw.setEndpointMACs(macs); err != nil {
		return err
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: tapIfindex,
		Program:   fw.objs.UsnetdHostIngress,
		Attach:    ebpf.AttachTCXIngress,
		Anchor:    link.Head(),
	})
	if err != nil {
		return fmt.Errorf("%w: TCX ingress to the host port (ifindex %d): %w", ErrAttach, tapIfindex, err)
	}
	hp := bpfHostPort{TapIfindex: uint32(tapIfindex), NicIfindex: uint32(fw.ifindex), Macs: uint32(len(macs))}
	if err := fw.objs.HostPort.Put(uint32(0), &hp); err != nil {
		_ = l.Close()
		return fmt.Errorf("firewall: host port: %w", err)
	}
	fw.host = l
	fw.log.Info().Int("tap_ifindex", tapIfindex).Int("endpoint_macs", len(macs)).Msg("firewall: host path attached")
	return nil
}

// DetachHostPort undoes AttachHostPort: the kernel's frames to the
// endpoints' MACs go to the wire again.
func (fw *Firewall) DetachHostPort() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return nil
	}
	return fw.detachHost()
}

// detachHost clears the host_port entry and closes the TAP's link; fw.mu
// is held.
func (fw *Firewall) detachHost() error {
	var errs []error
	if fw.objs.HostPort != nil {
		if err := fw.objs.HostPort.Put(uint32(0), &bpfHostPort{}); err != nil {
			errs = append(errs, fmt.Errorf("firewall: host port: %w", err))
		}
	}
	if fw.host != nil {
		if err := fw.host.Close(); err != nil {
			errs = append(errs, err)
		}
		fw.host = nil
	}
	return errors.Join(errs...)
}

// setEndpointMACs makes endpoint_macs hold exactly macs (6-byte MACs;
// others are refused).
func (fw *Firewall) setEndpointMACs(macs []net.HardwareAddr) error {
	want := map[bpfMacKey]bool{}
	for _, m := range macs {
		if len(m) != 6 {
			return fmt.Errorf("firewall: endpoint MAC %v: not 6 bytes", m)
		}
		var k bpfMacKey
		copy(k.Mac[:], m)
		want[k] = true
	}
	var k bpfMacKey
	var v uint32
	var stale []bpfMacKey
	for it := fw.objs.EndpointMacs.Iterate(); it.Next(&k, &v); {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	for _, s := range stale {
		if err := fw.objs.EndpointMacs.Delete(&s); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("firewall: endpoint MAC: %w", err)
		}
	}
	for k := range want {
		if err := fw.objs.EndpointMacs.Put(&k, uint32(0)); err != nil {
			return fmt.Errorf("firewall: endpoint MAC %x: %w", k.Mac, err)
		}
	}
	return nil
}
