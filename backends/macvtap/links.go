package macvtap

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// repair deletes the helper links that a crashed run left on the NIC,
// after moving the routes of the leftover TAP back to the NIC.
func (c *Claim) repair() (Repair, error) {
	var r Repair
	if l, err := c.h.LinkByName(c.tapName); err == nil {
		if _, ok := l.(*netlink.Tuntap); !ok {
			return r, fmt.Errorf("%w: %s is a %s, not a TAP", ErrNameTaken, c.tapName, l.Type())
		}
		rs, err := mainRoutes(c.h, l.Attrs().Index)
		if err != nil {
			return r, err
		}
		back := make([]netlink.Route, 0, len(rs))
		for _, rt := range rs {
			back = append(back, retarget(rt, l.Attrs().Index, c.nicIdx))
		}
		if err := restoreRoutes(c.h, back); err != nil {
			return r, fmt.Errorf("macvtap: moving the routes of the leftover %s back to %s: %w", c.tapName, c.nicName, err)
		}
		if err := delLink(c.h, l.Attrs().Index); err != nil {
			return r, fmt.Errorf("macvtap: delete leftover %s: %w", c.tapName, err)
		}
		r.TAP, r.Routes = true, len(rs)
	} else if !isNotFound(err) {
		return r, fmt.Errorf("macvtap: %s: %w", c.tapName, err)
	}
	if l, err := c.h.LinkByName(c.mvName); err == nil {
		m, ok := l.(*netlink.Macvtap)
		if !ok || m.Mode != netlink.MACVLAN_MODE_PASSTHRU || m.ParentIndex != c.nicIdx {
			return r, fmt.Errorf("%w: %s is a %s, not a passthru macvtap on %s", ErrNameTaken, c.mvName, l.Type(), c.nicName)
		}
		if err := delLink(c.h, l.Attrs().Index); err != nil {
			return r, fmt.Errorf("macvtap: delete leftover %s: %w", c.mvName, err)
		}
		r.Macvtap = true
	} else if !isNotFound(err) {
		return r, fmt.Errorf("macvtap: %s: %w", c.mvName, err)
	}
	return r, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// makeMacvtap makes the passthru macvtap on the NIC, down: frames reach
// its queues once it is up. It inherits the NIC's MAC (a passthru
// macvtap's MAC is the NIC's: setting one would change the NIC's).
func (c *Claim) makeMacvtap() error {
	la := netlink.NewLinkAttrs()
	la.Name = c.mvName
	la.ParentIndex = c.nicIdx
	la.TxQLen = c.opt.TxQueueLen
	m := &netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: la, Mode: netlink.MACVLAN_MODE_PASSTHRU}}
	if err := c.h.LinkAdd(m); err != nil {
		return fmt.Errorf("macvtap: add passthru macvtap %s on %s: %w", c.mvName, c.nicName, err)
	}
	l, err := c.h.LinkByName(c.mvName)
	if err != nil {
		return fmt.Errorf("macvtap: %s after adding it: %w", c.mvName, err)
	}
	c.mvIdx = l.Attrs().Index
	// The macvtap is no interface of the kernel's: no IPv6 link-local
	// address (and no fe80::/64 route) for it when it comes up. Without
	// IPv6 this fails; nothing to do.
	_ = c.h.LinkSetIP6AddrGenMode(l, nl.IN6_ADDR_GEN_MODE_NONE)
	// Every multicast frame, not only the groups someone joined on the
	// macvtap: the switch decides who gets them (EAPOL to the PAE group
	// address, the solicited-node groups of the endpoints' addresses).
	if err := c.h.LinkSetAllmulticastOn(l); err != nil {
		return fmt.Errorf("macvtap: allmulticast on %s: %w", c.mvName, err)
	}
	return nil
}

func mvLink(idx int) netlink.Link {
	return &netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Index: idx}}}
}

// makeTAP makes the kernel's TAP, persistent (so that a crash leaves it,
// with the routes, for the next start to find), gives it the NIC's MAC,
// MTU and addresses, and sets it up.
func (c *Claim) makeTAP(nic netlink.Link) error {
	fds, err := openTAP(c.tapName, c.opt.Queues)
	if err != nil {
		return err
	}
	// From here the TAP exists: teardown deletes it.
	l, err := c.h.LinkByName(c.tapName)
	if err != nil {
		closeAll(fds)
		return fmt.Errorf("macvtap: %s after making it: %w", c.tapName, err)
	}
	c.tapIdx = l.Attrs().Index
	if c.kernel, err = newPort(c.tapName, kindKernel, fds); err != nil {
		closeAll(fds)
		return err
	}
	na := nic.Attrs()
	if err := c.h.LinkSetHardwareAddr(l, na.HardwareAddr); err != nil {
		return fmt.Errorf("macvtap: set the MAC of %s: %w", c.tapName, err)
	}
	if err := c.h.LinkSetMTU(l, na.MTU); err != nil {
		return fmt.Errorf("macvtap: set the MTU of %s: %w", c.tapName, err)
	}
	if err := c.h.LinkSetTxQLen(l, c.opt.TxQueueLen); err != nil {
		return fmt.Errorf("macvtap: set the queue length of %s: %w", c.tapName, err)
	}
	// No IPv6 address of its own making: the TAP gets the NIC's,
	// link-local ones included, so that it has exactly the NIC's
	// addresses and prefix routes. Without IPv6 this fails; nothing to do.
	_ = c.h.LinkSetIP6AddrGenMode(l, nl.IN6_ADDR_GEN_MODE_NONE)
	addrs, err := c.h.AddrList(nic, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("macvtap: addresses of %s: %w", c.nicName, err)
	}
	for _, a := range addrs {
		ta, ok := tapAddr(a)
		if !ok {
			continue
		}
		if err := c.h.AddrAdd(l, ta); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("macvtap: add %s to %s: %w", a.IPNet, c.tapName, err)
		}
	}
	if err := c.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("macvtap: set %s up: %w", c.tapName, err)
	}
	return nil
}

// tapAddr is the TAP's copy of one of the NIC's addresses: the same
// address, prefix, peer and broadcast address and the flags the kernel
// takes from userspace; no DAD for IPv6 (the address is the NIC's, which
// did it); no lifetime (a deprecated address stays deprecated). Addresses
// whose DAD failed are not copied.
func tapAddr(a netlink.Addr) (*netlink.Addr, bool) {
	if a.IPNet == nil || a.Flags&unix.IFA_F_DADFAILED != 0 {
		return nil, false
	}
	keep := unix.IFA_F_NOPREFIXROUTE
	if a.IP.To4() == nil {
		keep |= unix.IFA_F_HOMEADDRESS
	}
	ta := &netlink.Addr{
		IPNet:     &net.IPNet{IP: a.IP, Mask: a.Mask},
		Peer:      a.Peer,
		Broadcast: a.Broadcast,
		Flags:     a.Flags & keep,
	}
	if a.IP.To4() == nil {
		ta.Flags |= unix.IFA_F_NODAD
	} else {
		ta.Scope = a.Scope
	}
	if a.Flags&unix.IFA_F_DEPRECATED != 0 {
		ta.PreferedLft, ta.ValidLft = 0, int(^uint32(0)) // valid forever, preferred no more
	}
	return ta, true
}
