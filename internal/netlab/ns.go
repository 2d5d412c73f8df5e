package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// An NS is one network namespace of a lab. Its methods are safe for
// concurrent use; after the lab's Close they return ErrClosed.
type NS struct {
	lab  *Lab
	name string // LAB-NAME, the name under NetnsDir

	mu sync.Mutex
	fd netns.NsHandle  // keeps the namespace open; closed by Lab.Close
	nl *netlink.Handle // a netlink socket inside the namespace
}

// Name returns the namespace's full name, as `ip netns list` shows it.
func (ns *NS) Name() string { return ns.name }

// Path returns the namespace's bind mount, for setns(2) or nsenter --net.
func (ns *NS) Path() string { return filepath.Join(NetnsDir, ns.name) }

// Lab returns the lab the namespace belongs to.
func (ns *NS) Lab() *Lab { return ns.lab }

func (ns *NS) String() string { return ns.name }

// handle returns the namespace's netlink handle, with ns.mu held; the
// caller must unlock.
func (ns *NS) handle() (*netlink.Handle, error) {
	ns.mu.Lock()
	if ns.nl == nil {
		ns.mu.Unlock()
		return nil, ErrClosed
	}
	return ns.nl, nil
}

// Do runs fn on the calling goroutine with its OS thread inside the
// namespace, and puts the thread back afterwards.
//
// What fn does directly happens in the namespace: sockets it opens (and
// listeners, AF_XDP and AF_PACKET sockets, netlink sockets) belong to the
// namespace for their whole life and may be used from any goroutine after Do
// returns; ifindexes it passes to the kernel (bind, BPF link creation) are
// resolved in the namespace. Goroutines fn starts do not run in the
// namespace, and /sys and /proc/self/net still show the mount's and the
// process leader's namespace: use /proc/thread-self/net, or Command.
// Conversely, while Do runs on the process's main thread, the process's
// /proc/self/ns/net and /proc/self/net show ns: code that wants to know its
// own namespace reads /proc/thread-self/ns/net.
//
// If the thread cannot be put back, Do returns an error and leaves the
// goroutine locked to that thread, so that the runtime discards the thread
// when the goroutine exits; the caller should let it exit (t.Fatal does).
func (ns *NS) Do(fn func() error) error {
	ns.mu.Lock()
	fd := ns.fd
	if !fd.IsOpen() {
		ns.mu.Unlock()
		return ErrClosed
	}
	// Keep our own reference: Close may close ns.fd while fn runs.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	ns.mu.Unlock()
	if err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	h := netns.NsHandle(dup)
	defer h.Close()
	return inNetns(h, fn)
}

// Link returns the link of that name in the namespace.
func (ns *NS) Link(name string) (netlink.Link, error) {
	h, err := ns.handle()
	if err != nil {
		return nil, err
	}
	defer ns.mu.Unlock()
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("netlab: link %s in %s: %w", name, ns.name, err)
	}
	return l, nil
}

// SetUp sets the link up and waits until it is ready for traffic (see
// ReadyTimeout): its carrier applied and its IPv6 addresses no longer
// tentative. When link is a veth end of this lab whose peer is up, SetUp
// waits for the peer too, since the peer gets its carrier only now.
func (ns *NS) SetUp(link string) error {
	if err := ns.setUp(link); err != nil {
		return err
	}
	peer, ok := ns.lab.peerOf(ns, link)
	if !ok {
		return nil
	}
	h, err := peer.NS.handle()
	if err != nil {
		return err
	}
	defer peer.NS.mu.Unlock()
	return waitReady(h, peer.NS.name, peer.Name)
}

func (ns *NS) setUp(link string) error {
	h, err := ns.handle()
	if err != nil {
		return err
	}
	defer ns.mu.Unlock()
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("netlab: link %s in %s: %w", link, ns.name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("netlab: set %s up in %s: %w", link, ns.name, err)
	}
	return waitReady(h, ns.name, link)
}

// AddAddr assigns addr (address and prefix length, e.g. 198.18.7.1/24, see
// Host) to the link. Only addresses inside Range4 or Range6 are accepted;
// anything else is refused with an error wrapping ErrOutsideLab. IPv6
// addresses skip duplicate address detection (IFA_F_NODAD) so they are
// usable at once instead of after about a second of "tentative" state, and
// AddAddr waits until the kernel has finished adding them (see
// ReadyTimeout).
func (ns *NS) AddAddr(link string, addr netip.Prefix) error {
	if err := checkLabPrefix("address", addr); err != nil {
		return err
	}
	h, err := ns.handle()
	if err != nil {
		return err
	}
	defer ns.mu.Unlock()
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("netlab: link %s in %s: %w", link, ns.name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   addr.Addr().AsSlice(),
		Mask: net.CIDRMask(addr.Bits(), addr.Addr().BitLen()),
	}}
	if addr.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("netlab: add %s to %s in %s: %w", addr, link, ns.name, err)
	}
	return waitReady(h, ns.name, link)
}

// AddRoute adds a route to dst via the gateway via (optional: the zero
// Addr for an on-link route) out of the link dev (optional when via is
// set). dst must be inside Range4 or Range6, or a default route (0.0.0.0/0,
// ::/0), which is harmless in a namespace whose only links lead to other lab
// namespaces; via must be inside the lab ranges. Otherwise the error wraps
// ErrOutsideLab.
func (ns *NS) AddRoute(dst netip.Prefix, via netip.Addr, dev string) error {
	if !(dst.IsValid() && dst.Bits() == 0) {
		if err := checkLabPrefix("route", dst); err != nil {
			return err
		}
	}
	if via.IsValid() {
		if err := checkLabPrefix("gateway", netip.PrefixFrom(via, via.BitLen())); err != nil {
			return err
		}
		if via.Is4() != dst.Addr().Is4() {
			return fmt.Errorf("netlab: route %s via %s: mixed address families", dst, via)
		}
	} else if dev == "" {
		return errors.New("netlab: route needs a gateway or a device")
	}
	h, err := ns.handle()
	if err != nil {
		return err
	}
	defer ns.mu.Unlock()
	r := &netlink.Route{Dst: &net.IPNet{
		IP:   dst.Masked().Addr().AsSlice(),
		Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen()),
	}}
	if via.IsValid() {
		r.Gw = via.AsSlice()
	}
	if dev != "" {
		l, err := h.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("netlab: link %s in %s: %w", dev, ns.name, err)
		}
		r.LinkIndex = l.Attrs().Index
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("netlab: add route %s in %s: %w", dst, ns.name, err)
	}
	return nil
}

// SetSysctl writes a per-namespace sysctl, named as sysctl(8) names it:
// ns.SetSysctl("net.ipv4.ip_forward", "1"). Only keys under "net." are
// accepted, since only those belong to the network namespace.
func (ns *NS) SetSysctl(key, value string) error {
	if !strings.HasPrefix(key, "net.") || strings.Contains(key, "..") || strings.Contains(key, "/") {
		return fmt.Errorf("netlab: sysctl %q: only net.* keys belong to a network namespace", key)
	}
	return ns.setSysctl(key, value)
}

func (ns *NS) setSysctl(key, value string) error {
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return ns.Do(func() error {
		// /proc/sys/net resolves to the namespace of the opening thread.
		if err := os.WriteFile(p, []byte(value), 0); err != nil {
			return fmt.Errorf("netlab: sysctl %s in %s: %w", key, ns.name, err)
		}
		return nil
	})
}
