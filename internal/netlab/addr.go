package netlab

import (
	"errors"
	"fmt"
	"net/netip"
)

// The only address ranges a lab assigns or routes to.
var (
	// Range4 is 198.18.0.0/15, reserved for benchmarking network devices
	// (RFC 2544, RFC 6890): never routed on the Internet, rarely used on a
	// real LAN.
	Range4 = netip.MustParsePrefix("198.18.0.0/15")
	// Range6 is 2001:db8::/32, the IPv6 documentation prefix (RFC 3849).
	Range6 = netip.MustParsePrefix("2001:db8::/32")
)

// ErrOutsideLab is returned (wrapped) for an address, gateway or route
// outside Range4 and Range6.
var ErrOutsideLab = errors.New("outside the lab ranges 198.18.0.0/15 and 2001:db8::/32")

// InLab reports whether every address of p lies inside Range4 or Range6.
// A prefix shorter than the range itself (198.18.0.1/8) is not inside: the
// kernel would add an on-link route that covers foreign addresses.
func InLab(p netip.Prefix) bool {
	if !p.IsValid() {
		return false
	}
	for _, r := range []netip.Prefix{Range4, Range6} {
		if p.Addr().Is4() == r.Addr().Is4() && p.Bits() >= r.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// checkLabPrefix returns a wrapped ErrOutsideLab unless InLab(p).
func checkLabPrefix(what string, p netip.Prefix) error {
	if p.Addr().Is4In6() {
		return fmt.Errorf("netlab: %s %s: IPv4-mapped IPv6 address: %w", what, p, ErrOutsideLab)
	}
	if !InLab(p) {
		return fmt.Errorf("netlab: %s %s: %w", what, p, ErrOutsideLab)
	}
	return nil
}

// Host returns address number n of the subnet p with p's prefix length, ready
// for AddAddr: Host(198.18.7.0/24, 1) is 198.18.7.1/24. It panics when n is
// negative or does not fit into p.
func Host(p netip.Prefix, n int) netip.Prefix {
	p = p.Masked()
	a := p.Addr().AsSlice()
	hostBits := len(a)*8 - p.Bits()
	if n < 0 || (hostBits < 63 && uint64(n) >= 1<<hostBits) {
		panic(fmt.Sprintf("netlab: host %d does not fit into %s", n, p))
	}
	v := uint64(n)
	for i := len(a) - 1; i >= 0 && v != 0; i-- {
		a[i] |= byte(v)
		v >>= 8
	}
	addr, _ := netip.AddrFromSlice(a)
	return netip.PrefixFrom(addr, p.Bits())
}
