package macvtap

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// HostTAPName is the name of the host path's TAP for ifname.
func HostTAPName(ifname string) string { return helperName(ifname, "usnh") }

// OpenHostTAP makes the TAP of the host path for NIC ifname (the AF_XDP
// and AF_PACKET backends' kernel port): a TAP that is not persistent (it
// goes with the returned port's fd, also when usnetd is killed), with one
// queue, the NIC's MTU, no addresses, no ARP and no IPv6 of its own, so
// that the kernel sends nothing of its own making there. What usnetd
// writes to it must never reach the kernel as the TAP's: the caller
// attaches the firewall's host program (firewall.AttachHostPort) to it
// before the first write, which moves the kernel's frames to the NIC's
// ingress and drops the rest. It returns the kernel's port on the TAP and
// the TAP's ifindex, in the calling thread's network namespace.
func OpenHostTAP(ifname string, mtu int) (_ *Port, ifindex int, err error) {
	name := HostTAPName(ifname)
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("host TAP: open /dev/net/tun: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, 0, fmt.Errorf("host TAP: name %q: %w", name, err)
	}
	ifr.SetUint16(tunFlags | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, 0, fmt.Errorf("host TAP: %w: %s exists", ErrNameTaken, name)
		}
		return nil, 0, fmt.Errorf("host TAP: TUNSETIFF %s: %w", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, 0, fmt.Errorf("host TAP: %s after making it: %w", name, err)
	}
	// No IPv6 of its own (link-local address, router solicitations, MLD):
	// whatever the kernel sends on the TAP, usnetd reads as the kernel's.
	_ = netlink.LinkSetIP6AddrGenMode(l, nl.IN6_ADDR_GEN_MODE_NONE)
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0)
	if mtu > 0 {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return nil, 0, fmt.Errorf("host TAP: set the MTU of %s: %w", name, err)
		}
	}
	if err := netlink.LinkSetARPOff(l); err != nil {
		return nil, 0, fmt.Errorf("host TAP: ARP off on %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, 0, fmt.Errorf("host TAP: set %s up: %w", name, err)
	}
	p, err := newPort(name, kindKernel, []int{fd})
	if err != nil {
		return nil, 0, err
	}
	return p, l.Attrs().Index, nil
}
