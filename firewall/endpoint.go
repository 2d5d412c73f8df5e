package firewall

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	l4 "github.com/usnetd/usnetd/switch"
)

// The endpoints' rules, for the kernel side: the control plane adds each
// rule an endpoint registers (AddMatch) before it answers OK, and removes
// it with the rule (RemoveMatch, the endpoint's end). With them the
// programs keep the kernel and the endpoints apart both ways:
//
//   - ingress: a frame whose lookup (the three steps of l4.Table, over
//     the endpoints' and the kernel's entries at once) ends in an
//     endpoint's rule is never the kernel's, whatever learned or
//     registered kernel entry a later step holds;
//   - egress: a frame the kernel sends from an endpoint's flow (a kernel
//     socket bound to an endpoint's port, on the host's address: its
//     replies would find the endpoint's rule) is dropped and counted as
//     egress_endpoint_dropped, and never learned, so the kernel can
//     neither answer into the endpoint's connections (RSTs) nor open the
//     endpoint's port to itself by sending first.

// AddEndpointPort tells the firewall that an endpoint holds the rule k
// (l4.Key as registered: listening, or with a remote side). Adding a key
// the firewall knows already is a no-op. A full map gives an error
// wrapping unix.E2BIG: the control plane then refuses the rule.
func (fw *Firewall) AddEndpointPort(k l4.Key) error {
	if err := checkKey(k); err != nil {
		return err
	}
	if err := fw.rlock(); err != nil {
		return err
	}
	defer fw.mu.RUnlock()
	fw.epMu.Lock()
	defer fw.epMu.Unlock()
	bk := keyOf(k)
	err := fw.objs.EndpointRules.Update(bk, uint32(0), ebpf.UpdateNoExist)
	if errors.Is(err, ebpf.ErrKeyExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("firewall: endpoint rule %v on %s: %w", k, fw.ifname, err)
	}
	for i, pk := range portKeysOf(k) {
		if err := fw.objs.EndpointPorts.Put(pk, fw.epPorts[pk]+1); err != nil {
			if i == 1 {
				_ = fw.countDown(portKeysOf(k)[0])
			}
			_ = fw.objs.EndpointRules.Delete(bk)
			return fmt.Errorf("firewall: endpoint rule %v on %s: %w", k, fw.ifname, err)
		}
		fw.epPorts[pk]++
	}
	n, err := fw.purgeLearned(k)
	if err != nil {
		return fmt.Errorf("firewall: endpoint rule %v on %s: %w", k, fw.ifname, err)
	}
	fw.log.Debug().Stringer("key", k).Int("learned_removed", n).Msg("firewall: endpoint rule added")
	return nil
}

// purgeLearned removes the learned kernel flows that the endpoint rule k
// covers: flows of a kernel socket that is gone (the control plane gives
// no port a live kernel socket holds), whose exact entries would otherwise
// take the first lookup step from the endpoint's rule until they expire.
// It walks the learned map: at most MaxLearned entries, once per rule.
func (fw *Firewall) purgeLearned(k l4.Key) (int, error) {
	var (
		bk   bpfFwKey
		v    bpfFwValue
		dead []bpfFwKey
	)
	it := fw.objs.KernelLearned.Iterate()
	for it.Next(&bk, &v) {
		lk := l4Key(bk)
		if lk.Local != k.Local || lk.Proto != k.Proto || lk.LocalPort != k.LocalPort ||
			k.Flags&l4.KeyRemote != 0 && lk.Remote != k.Remote ||
			k.Flags&l4.KeyRemotePort != 0 && lk.RemotePort != k.RemotePort {
			continue
		}
		dead = append(dead, bk)
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	n := 0
	for _, d := range dead {
		if err := fw.objs.KernelLearned.Delete(d); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
	}
	return n, nil
}

// RemoveEndpointPort forgets the endpoint rule k. An absent key gives an
// error wrapping ebpf.ErrKeyNotExist.
func (fw *Firewall) RemoveEndpointPort(k l4.Key) error {
	if err := fw.rlock(); err != nil {
		return err
	}
	defer fw.mu.RUnlock()
	fw.epMu.Lock()
	defer fw.epMu.Unlock()
	if err := fw.objs.EndpointRules.Delete(keyOf(k)); err != nil {
		return fmt.Errorf("firewall: removing endpoint rule %v on %s: %w", k, fw.ifname, err)
	}
	for _, pk := range portKeysOf(k) {
		if err := fw.countDown(pk); err != nil {
			return fmt.Errorf("firewall: removing endpoint rule %v on %s: %w", k, fw.ifname, err)
		}
	}
	fw.log.Debug().Stringer("key", k).Msg("firewall: endpoint rule removed")
	return nil
}

// EndpointPorts returns the endpoint rules the firewall holds, sorted.
func (fw *Firewall) EndpointPorts() ([]l4.Key, error) {
	if err := fw.rlock(); err != nil {
		return nil, err
	}
	defer fw.mu.RUnlock()
	var (
		out []l4.Key
		k   bpfFwKey
		v   uint32
	)
	it := fw.objs.EndpointRules.Iterate()
	for it.Next(&k, &v) {
		out = append(out, l4Key(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("firewall: reading endpoint rules on %s: %w", fw.ifname, err)
	}
	sortKeys(out)
	return out, nil
}

// countDown takes one rule off pk's count in endpoint_ports (epMu held).
func (fw *Firewall) countDown(pk bpfEpPortKey) error {
	n := fw.epPorts[pk]
	if n > 1 {
		fw.epPorts[pk] = n - 1
		return fw.objs.EndpointPorts.Put(pk, n-1)
	}
	delete(fw.epPorts, pk)
	if err := fw.objs.EndpointPorts.Delete(pk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// portKeysOf returns the endpoint_ports keys that count the rule k:
// (local, proto, lport) and (local, proto, any port).
func portKeysOf(k l4.Key) [2]bpfEpPortKey {
	return [2]bpfEpPortKey{
		{Local: k.Local, Lport: k.LocalPort, Proto: k.Proto},
		{Local: k.Local, Proto: k.Proto, Any: 1},
	}
}

func sortKeys(ks []l4.Key) { slices.SortFunc(ks, compareKeys) }
