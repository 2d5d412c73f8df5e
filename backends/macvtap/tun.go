package macvtap

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// The TUN/TAP driver has no netlink interface for making a device that a
// process reads: a TAP is made, and each of its queues attached, by
// opening /dev/net/tun and TUNSETIFF (in the network namespace of the
// opening thread). Everything else about it (MAC, MTU, addresses, routes,
// deletion) goes through netlink.

// tunFlags are the flags of every TAP queue: Ethernet frames without the
// packet-information header and without a virtio-net header, so that a
// read is one whole frame and a write takes one.
const tunFlags = unix.IFF_TAP | unix.IFF_NO_PI

// openTAP makes the persistent TAP name with queues queues and returns a
// non-blocking fd per queue. IFF_TUN_EXCL makes the first TUNSETIFF fail
// if a device of that name exists (then it is not ours).
func openTAP(name string, queues int) (fds []int, err error) {
	defer func() {
		if err != nil {
			closeAll(fds)
			fds = nil
		}
	}()
	flags := uint16(tunFlags)
	if queues > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	for q := range queues {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fds, fmt.Errorf("macvtap: open /dev/net/tun: %w", err)
		}
		fds = append(fds, fd)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return fds, fmt.Errorf("macvtap: TAP name %q: %w", name, err)
		}
		f := flags
		if q == 0 {
			f |= unix.IFF_TUN_EXCL
		}
		ifr.SetUint16(f)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			if errors.Is(err, unix.EBUSY) && q == 0 {
				return fds, fmt.Errorf("%w: %s exists", ErrNameTaken, name)
			}
			return fds, fmt.Errorf("macvtap: TUNSETIFF %s queue %d: %w", name, q, err)
		}
		if q == 0 {
			if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
				return fds, fmt.Errorf("macvtap: TUNSETPERSIST %s: %w", name, err)
			}
		}
	}
	return fds, nil
}

// setTapQueueFlags makes a macvtap queue read and write plain frames: a
// macvtap queue starts with IFF_VNET_HDR set (the flags are per fd, and
// TUNSETIFF on a macvtap ignores the name). It returns the name of the
// device the fd belongs to (TUNGETIFF).
func setTapQueueFlags(fd int) (string, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", err
	}
	ifr.SetUint16(tunFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return "", fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return "", fmt.Errorf("TUNGETIFF: %w", err)
	}
	if f := ifr.Uint16(); f&unix.IFF_VNET_HDR != 0 {
		return "", fmt.Errorf("queue still has IFF_VNET_HDR (flags %#x)", f)
	}
	return ifr.Name(), nil
}
