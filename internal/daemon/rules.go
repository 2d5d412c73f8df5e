package daemon

import (
	"fmt"
	"net/netip"

	"github.com/usnetd/usnetd/internal/config"
	l4 "github.com/usnetd/usnetd/switch"
)

// ifAddrs are the addresses of a claimed interface that the kernel's rules
// are made for.
type ifAddrs struct {
	v4  netip.Addr   // the first IPv4 address, as in the original
	v6  []netip.Addr // global IPv6 addresses
	all []netip.Addr // every address, IPv6 link-local included: endpoints may use them
}

// kernelRules turns the DEBUG_PORTS entries for interface ifname into
// sticky rules owned by the kernel. As in the original, an entry opens the
// port on the interface's first IPv4 address; usnetd switches IPv6 too, so
// it also opens it on the interface's global IPv6 addresses. An entry with
// a remote address opens it only for that remote, on the addresses of the
// remote's family; ICMP towards an IPv6 remote means ICMPv6.
func kernelRules(specs []config.PortSpec, ifname string, a ifAddrs) ([]l4.Rule, error) {
	var rules []l4.Rule
	for _, s := range specs {
		if s.Interface != ifname {
			continue
		}
		var locals []netip.Addr
		switch {
		case !s.Remote.IsValid():
			if a.v4.IsValid() {
				locals = append(locals, a.v4)
			}
			locals = append(locals, a.v6...)
		case s.Remote.Is4():
			if a.v4.IsValid() {
				locals = append(locals, a.v4)
			}
		default:
			locals = append(locals, a.v6...)
		}
		if len(locals) == 0 {
			return nil, fmt.Errorf("DEBUG_PORTS=%q: interface %s has no address for it", s.String(), ifname)
		}
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
				return nil, fmt.Errorf("DEBUG_PORTS=%q: %w", s.String(), err)
			}
			rules = append(rules, l4.Rule{Key: k, Owner: l4.KernelOwner, Kind: l4.Registered, Sticky: true})
		}
	}
	return rules, nil
}
