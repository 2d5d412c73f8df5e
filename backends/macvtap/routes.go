package macvtap

import (
	"errors"
	"fmt"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Moving routes.
//
// The routes of the main table that leave through the NIC (IPv4 and IPv6,
// directly or as a nexthop of a multipath route) move to the TAP: each is
// first added on the TAP (appended: the kernel made the TAP's own prefix
// routes for its addresses already, and a copy that exists is left
// alone), and only then deleted from the NIC. Giving them back works the
// same way round: added on the NIC, and they leave the TAP with it. So at
// no moment, a crash included, is a route on neither link; the next start
// finds the ones on a leftover TAP and moves them back.
//
// Routes with a nexthop need the route to that nexthop first: adding
// goes link routes first, deleting the other way round.

// mainRoutes returns the routes of the main table that use link idx, link
// routes first.
func mainRoutes(h *netlink.Handle, idx int) ([]netlink.Route, error) {
	all, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("macvtap: listing routes: %w", err)
	}
	var rs []netlink.Route
	for _, r := range all {
		if r.Table == unix.RT_TABLE_MAIN && (r.Family == unix.AF_INET || r.Family == unix.AF_INET6) && uses(r, idx) {
			rs = append(rs, r)
		}
	}
	slices.SortStableFunc(rs, func(a, b netlink.Route) int { return viaGateway(a) - viaGateway(b) })
	return rs, nil
}

func uses(r netlink.Route, idx int) bool {
	if r.LinkIndex == idx {
		return true
	}
	for _, nh := range r.MultiPath {
		if nh.LinkIndex == idx {
			return true
		}
	}
	return false
}

// viaGateway is 1 for a route with a nexthop address, else 0.
func viaGateway(r netlink.Route) int {
	if r.Gw != nil || r.Via != nil {
		return 1
	}
	for _, nh := range r.MultiPath {
		if nh.Gw != nil || nh.Via != nil {
			return 1
		}
	}
	return 0
}

// settableFlags are the route and nexthop flags a route may be added with
// (the kernel refuses its own: linkdown, dead, offload...).
const settableFlags = unix.RTNH_F_ONLINK

// retarget returns a copy of r that leaves through link to where r leaves
// through from, with only the flags that may be set.
func retarget(r netlink.Route, from, to int) netlink.Route {
	t := r
	if t.LinkIndex == from {
		t.LinkIndex = to
	}
	t.ILinkIndex = 0
	t.Flags &= settableFlags
	if r.MultiPath != nil {
		t.MultiPath = make([]*netlink.NexthopInfo, len(r.MultiPath))
		for i, nh := range r.MultiPath {
			c := *nh
			if c.LinkIndex == from {
				c.LinkIndex = to
			}
			c.Flags &= settableFlags
			t.MultiPath[i] = &c
		}
	}
	return t
}

// settable returns r with only the flags that may be set.
func settable(r netlink.Route) netlink.Route { return retarget(r, 0, 0) }

// addRoute appends r; a route that exists already is fine.
func addRoute(h *netlink.Handle, r netlink.Route) error {
	if err := h.RouteAppend(&r); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("macvtap: add route %s: %w", r, err)
	}
	return nil
}

// moveRoutes moves the NIC's routes to the TAP.
func (c *Claim) moveRoutes() error {
	rs, err := mainRoutes(c.h, c.nicIdx)
	if err != nil {
		return err
	}
	// Recorded first: whatever happens below, teardown adds them back.
	c.moved = rs
	for _, r := range rs {
		if err := addRoute(c.h, retarget(r, c.nicIdx, c.tapIdx)); err != nil {
			return err
		}
	}
	for _, r := range slices.Backward(rs) {
		d := settable(r)
		if err := c.h.RouteDel(&d); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("macvtap: delete route %s from %s: %w", r, c.nicName, err)
		}
	}
	return nil
}

// restoreRoutes adds the routes (as they were on the NIC), going on after
// an error.
func restoreRoutes(h *netlink.Handle, rs []netlink.Route) error {
	var errs []error
	for _, r := range rs {
		if err := addRoute(h, settable(r)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
