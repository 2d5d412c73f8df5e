package daemon

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/usnetd/usnetd/internal/config"
	l4 "github.com/usnetd/usnetd/switch"
)

// ifAddrs are the addresses of a claimed interface that the kernel's rules
// are made for, each list sorted.
type ifAddrs struct {
	v4  []netip.Addr // every IPv4 address
	v6  []netip.Addr // global IPv6 addresses
	all []netip.Addr // every address, IPv6 link-local included: endpoints may use them
}

// list returns the IPv4 addresses, then the IPv6 ones.
func (a ifAddrs) list() []netip.Addr {
	return append(slices.Clone(a.v4), a.v6...)
}

func (a ifAddrs) equal(b ifAddrs) bool {
	return slices.Equal(a.v4, b.v4) && slices.Equal(a.v6, b.v6) && slices.Equal(a.all, b.all)
}

// kernelRules turns the DEBUG_PORTS entries for interface ifname into
// sticky rules owned by the kernel. An entry opens the port on each of the
// interface's IPv4 addresses and global IPv6 addresses (the original took
// the first IPv4 address only; usnetd switches IPv6 too, and follows the
// addresses as they change, so that a renumbering never locks SSH out).
// An entry with a remote address opens it only for that remote, on the
// addresses of the remote's family; ICMP towards an IPv6 remote means
// ICMPv6. Entries for which the interface has no address now are returned
// in missing (a start refuses them; a change of addresses logs them).
func kernelRules(specs []config.PortSpec, ifname string, a ifAddrs) (rules []l4.Rule, missing []config.PortSpec, err error) {
	for _, s := range specs {
		if s.Interface != ifname {
			continue
		}
		keys, err := specKeys(s, a)
		if err != nil {
			return nil, nil, fmt.Errorf("DEBUG_PORTS=%q: %w", s.String(), err)
		}
		if len(keys) == 0 {
			missing = append(missing, s)
			continue
		}
		for _, k := range keys {
			rules = append(rules, l4.Rule{Key: k, Owner: l4.KernelOwner, Kind: l4.Registered, Sticky: true})
		}
	}
	return rules, missing, nil
}

// specKeys turns one DEBUG_PORTS or STATIC_PIPES entry into its keys on
// the addresses a (see kernelRules); none when the interface has no
// address of the entry's family.
func specKeys(s config.PortSpec, a ifAddrs) ([]l4.Key, error) {
	var locals []netip.Addr
	switch {
	case !s.Remote.IsValid():
		locals = a.list()
	case s.Remote.Is4():
		locals = a.v4
	default:
		locals = a.v6
	}
	keys := make([]l4.Key, 0, len(locals))
	for _, local := range locals {
		proto := s.Proto
		if proto == config.ProtoICMP && local.Is6() {
			proto = l4.ProtoICMPv6
		}
		k := l4.ListenKey(l4.AddrFromNetip(local), proto, s.Port)
		if s.Remote.IsValid() {
			k.Remote = l4.AddrFromNetip(s.Remote)
			k.Flags |= l4.KeyRemote
		}
		if err := k.Validate(); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// missingError is the start's error for DEBUG_PORTS entries without an
// address.
func missingError(missing []config.PortSpec, ifname string) error {
	return fmt.Errorf("DEBUG_PORTS=%q: interface %s has no address for it", missing[0].String(), ifname)
}
