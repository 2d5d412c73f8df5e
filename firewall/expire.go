package firewall

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	l4 "github.com/usnetd/usnetd/switch"
)

// ExpireInterval is how often usnetd expires learned kernel entries, as
// the original did.
const ExpireInterval = 90 * time.Second

// ExpireLearned removes learned kernel entries that are no longer backed
// by a kernel socket and returns how many it removed. An entry goes when
// the kernel's outgoing traffic last refreshed it at least MinIdle ago
// (Options.MinIdle) and isOpen(key) is false. isOpen is typically
// (*Inventory).IsOpen after a Refresh; for keys without ports (ICMP echo
// and other portless protocols) it is false, so those go once idle. A nil
// isOpen removes every idle learned entry. Registered entries
// (AllowKernel) are never touched.
//
// Racing with the egress learner is harmless: an entry removed just as its
// flow sends again is learned again by that very frame's successor.
func (fw *Firewall) ExpireLearned(isOpen func(l4.Key) bool) (removed int, err error) {
	if err := fw.rlock(); err != nil {
		return 0, err
	}
	defer fw.mu.RUnlock()
	now := monotonicNow()
	var (
		k    bpfFwKey
		v    bpfFwValue
		dead []bpfFwKey
	)
	it := fw.objs.KernelLearned.Iterate()
	for it.Next(&k, &v) {
		if fw.minIdle > 0 && now < v.LastSeenNs+uint64(fw.minIdle) {
			continue
		}
		if isOpen != nil && isOpen(l4Key(k)) {
			continue
		}
		dead = append(dead, k)
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("firewall: reading learned entries on %s: %w", fw.ifname, err)
	}
	for _, k := range dead {
		err := fw.objs.KernelLearned.Delete(k)
		if err == nil {
			removed++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) { // evicted meanwhile
			return removed, fmt.Errorf("firewall: expiring %v on %s: %w", l4Key(k), fw.ifname, err)
		}
	}
	if removed > 0 {
		fw.log.Debug().Int("removed", removed).Msg("firewall: expired learned kernel entries")
	}
	return removed, nil
}
