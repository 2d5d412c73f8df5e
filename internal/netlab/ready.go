package netlab

import (
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ReadyTimeout bounds how long SetUp, AddAddr and Veth wait for the kernel
// to finish bringing a link or address into service.
var ReadyTimeout = 10 * time.Second

// waitReady waits until the link can carry traffic as far as the kernel's
// asynchronous work is concerned, so that a packet sent right after SetUp or
// AddAddr is not dropped:
//
//   - Carrier changes are applied by the linkwatch work item: until it has
//     run, the operational state is not up and the device's transmit queues
//     still have the noop qdisc, which drops every packet. Linkwatch defers
//     "non-urgent" events by up to a second; a veth whose ifindex equals its
//     peer's (both ends are often index 2 in fresh namespaces) counts as
//     non-urgent. So: wait for IFF_RUNNING once the link has carrier.
//   - An IPv6 address stays tentative, and its solicited-node multicast
//     group unjoined (so neighbour solicitations for it are dropped), until
//     the addrconf work item has run for it, even with IFA_F_NODAD. That work
//     takes the RTNL lock and queues behind other namespaces' teardown, so
//     under load it can take a while. So: wait until no IPv6 address of the
//     link is tentative and each has its local route.
//
// A link that is down, or up without carrier (a veth whose peer is down),
// is as ready as it gets: nothing is pending until the carrier comes.
// The caller holds the namespace's lock; h is its handle.
func waitReady(h *netlink.Handle, nsName, link string) error {
	deadline := time.Now().Add(ReadyTimeout)
	for sleep := 50 * time.Microsecond; ; sleep = min(2*sleep, 10*time.Millisecond) {
		pending, err := notReady(h, link)
		if err != nil || pending == "" {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netlab: %s in %s not ready after %v: %s", link, nsName, ReadyTimeout, pending)
		}
		time.Sleep(sleep)
	}
}

// notReady says what the link still waits for, or "" when nothing.
func notReady(h *netlink.Handle, link string) (string, error) {
	l, err := h.LinkByName(link)
	if err != nil {
		return "", fmt.Errorf("netlab: link %s: %w", link, err)
	}
	flags := l.Attrs().RawFlags
	if flags&unix.IFF_UP == 0 || flags&unix.IFF_LOWER_UP == 0 {
		return "", nil
	}
	if flags&unix.IFF_RUNNING == 0 {
		return "carrier is on but the link is not running yet (linkwatch)", nil
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return "", fmt.Errorf("netlab: addresses of %s: %w", link, err)
	}
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_DADFAILED != 0 {
			return "", fmt.Errorf("netlab: %s on %s: duplicate address detection failed", a.IPNet, link)
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			return fmt.Sprintf("%s is tentative (addrconf)", a.IPNet), nil
		}
		// The address is usable only with its local route (table local,
		// ADDR/128), which appears later than the tentative flag goes.
		host := &net.IPNet{IP: a.IP, Mask: net.CIDRMask(128, 128)}
		rs, err := h.RouteListFiltered(netlink.FAMILY_V6,
			&netlink.Route{Table: unix.RT_TABLE_LOCAL, Dst: host},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		if err != nil {
			return "", fmt.Errorf("netlab: routes of %s: %w", a.IPNet, err)
		}
		if len(rs) == 0 {
			return fmt.Sprintf("%s has no local route yet (addrconf)", a.IPNet), nil
		}
	}
	return "", nil
}
