package netlab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// DefaultPrefix is the name prefix of labs made with an empty prefix.
const DefaultPrefix = "ul"

// ErrClosed is returned by the methods of a closed Lab and its namespaces.
var ErrClosed = errors.New("netlab: lab is closed")

// A Lab is a set of network namespaces and the veth pairs between them,
// all removed by Close. Its methods are safe for concurrent use.
//
// Every name the lab puts into the shared root namespace's view is its own:
// namespaces are NAME-prefixed files in NetnsDir, and no link is ever
// created in the root namespace (both ends of a veth are created directly
// inside lab namespaces), so link names only need to be unique inside a lab
// namespace and may be anything, "eth0" included.
type Lab struct {
	name string // PREFIX + 6 hex digits
	id   uint32 // the 24 random bits behind the hex digits

	ctx    context.Context // cancelled by Close: kills processes of Command
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	closeErr error
	lock     *labLock
	nss      []*NS
	subnets  int // handed out by Subnet
	subnets6 int // handed out by Subnet6

	peersMu sync.Mutex
	peers   map[linkKey]VethEnd // each veth end of the lab to its peer
}

type linkKey struct {
	ns   *NS
	name string
}

// peerOf returns the peer of a veth end the lab created.
func (l *Lab) peerOf(ns *NS, link string) (VethEnd, bool) {
	l.peersMu.Lock()
	defer l.peersMu.Unlock()
	p, ok := l.peers[linkKey{ns, link}]
	return p, ok
}

// New creates an empty lab named PREFIX plus 6 random hex digits, e.g.
// "ul3fa9c1"; prefix is 1 to 8 lowercase letters or digits, "" means
// DefaultPrefix. Before that it sweeps away stale labs of the same prefix
// left by crashed runs (see Sweep); errors of that sweep are logged to t,
// or ignored without one.
//
// With a non-nil t, New first calls Require(t) — skipping the test, or
// failing it under CI=true, when namespaces cannot be made — and registers
// Close with t.Cleanup, so the lab is removed however the test ends (a
// failure, t.FailNow, a panic); an error from that Close fails the test.
// With a nil t (a command such as usnetd-lab) the caller must Close.
func New(t testing.TB, prefix string) (*Lab, error) {
	if t != nil {
		t.Helper()
		Require(t)
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	if _, err := Sweep(prefix, SweepOpts{}); err != nil && t != nil {
		t.Logf("netlab: sweeping stale labs: %v", err)
	}
	var (
		l   *Lab
		err error
	)
	for range 16 { // a name collision with a live lab is 1 in 2^24; retry
		var b [4]byte
		if _, err = rand.Read(b[1:]); err != nil {
			return nil, err
		}
		id := binary.BigEndian.Uint32(b[:])
		name := prefix + hex.EncodeToString(b[1:])
		var lk *labLock
		lk, err = acquireLabLock(name)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		l = &Lab{name: name, id: id, lock: lk}
		break
	}
	if l == nil {
		return nil, err
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if t != nil {
		t.Cleanup(func() {
			if err := l.Close(); err != nil {
				t.Errorf("netlab: closing lab %s: %v", l.name, err)
			}
		})
	}
	return l, nil
}

func checkPrefix(prefix string) error {
	if len(prefix) < 1 || len(prefix) > 8 {
		return fmt.Errorf("netlab: prefix %q: want 1 to 8 characters", prefix)
	}
	for _, c := range prefix {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return fmt.Errorf("netlab: prefix %q: want lowercase letters and digits only", prefix)
		}
	}
	return nil
}

// Name returns the lab's name, the prefix of all its namespaces' names.
func (l *Lab) Name() string { return l.name }

// Namespaces returns the lab's namespaces in the order they were added.
func (l *Lab) Namespaces() []*NS {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*NS(nil), l.nss...)
}

// Subnet hands out the lab's next IPv4 /24 inside 198.18.0.0/15. The first
// one is derived from the lab's random id, the following ones count up
// (wrapping from 198.19.255.0 to 198.18.0.0), so labs that run in parallel
// get different subnets, which keeps captures and logs readable even though
// separate namespaces would not clash anyway. A lab has 512 of them; Subnet
// panics when asked for a 513th.
func (l *Lab) Subnet() netip.Prefix {
	l.mu.Lock()
	n := l.subnets
	l.subnets++
	l.mu.Unlock()
	if n >= 512 {
		panic("netlab: lab " + l.name + " ran out of /24 subnets")
	}
	x := (int(l.id) + n) % 512
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(x>>8), byte(x), 0}), 24)
}

// Subnet6 hands out the lab's next IPv6 /64 inside 2001:db8::/32:
// 2001:db8:IIII:IINN::/64 with the lab's 24-bit id in the I digits and a
// count in NN. A lab has 256 of them; Subnet6 panics when asked for more.
func (l *Lab) Subnet6() netip.Prefix {
	l.mu.Lock()
	n := l.subnets6
	l.subnets6++
	l.mu.Unlock()
	if n >= 256 {
		panic("netlab: lab " + l.name + " ran out of /64 subnets")
	}
	var a [16]byte
	a[0], a[1], a[2], a[3] = 0x20, 0x01, 0x0d, 0xb8
	a[4], a[5], a[6], a[7] = byte(l.id>>16), byte(l.id>>8), byte(l.id), byte(n)
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// AddNS creates a network namespace named LAB-name (visible in `ip netns
// list`, usable with `ip netns exec`) with its loopback interface up. name
// is 1 to 32 letters, digits, '_', '.' or '-'.
func (l *Lab) AddNS(name string) (*NS, error) {
	if err := checkNSName(name); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	full := l.name + "-" + name
	for _, ns := range l.nss {
		if ns.name == full {
			return nil, fmt.Errorf("netlab: namespace %s exists", full)
		}
	}
	h, err := createNamed(full)
	if err != nil {
		return nil, err
	}
	ns := &NS{lab: l, name: full, fd: h}
	l.nss = append(l.nss, ns)
	// From here on Close removes it, also if the rest fails.
	err = inNetns(h, func() error {
		var err error
		// Created inside the namespace: a netlink socket belongs to the
		// namespace it was opened in for its whole life.
		ns.nl, err = netlink.NewHandle()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlab: netlink handle in %s: %w", full, err)
	}
	// No duplicate address detection in a lab: every address is known to
	// be unique, and DAD would keep IPv6 link-local addresses tentative for
	// a second and put extra frames on the links. The kernel may have IPv6
	// disabled; then there is nothing to configure.
	for _, key := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		if err := ns.setSysctl(key, "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if err := ns.setUp("lo"); err != nil {
		return nil, err
	}
	return ns, nil
}

func checkNSName(name string) error {
	if len(name) < 1 || len(name) > 32 {
		return fmt.Errorf("netlab: namespace name %q: want 1 to 32 characters", name)
	}
	for _, c := range name {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("netlab: namespace name %q: want letters, digits, '_', '.', '-'", name)
		}
	}
	return nil
}

// Close removes everything the lab created: it kills the processes started
// by Command, closes the lab's netlink sockets and namespace handles, and
// unmounts and removes the namespaces' names, and finally the lab's lock
// file. It goes on after an error and returns all of them joined. Close is
// idempotent: later calls return the first call's result.
//
// The kernel destroys a network namespace, and with it every link inside
// (and so both ends of every veth that has an end there), once nothing
// refers to it any more: asynchronously, in a batch with other dying
// namespaces, a few milliseconds after Close returns. Deleting each veth
// here instead would cost a synchronize_net() per link, 50 to 500 ms under
// load on these machines. Sockets opened inside a namespace (Do, Listen,
// AF_XDP...) and processes started with Start keep it alive, unreachable by
// name, until they are closed or exit: close them before the lab (t.Cleanup
// runs in reverse order, so cleanups registered after New run before its
// Close).
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return l.closeErr
	}
	l.closed = true
	l.cancel()
	var errs []error
	for _, ns := range l.nss {
		ns.mu.Lock()
		if ns.nl != nil {
			ns.nl.Close()
			ns.nl = nil
		}
		if ns.fd.IsOpen() {
			ns.fd.Close()
			ns.fd = netns.None()
		}
		ns.mu.Unlock()
		if err := deleteNamed(ns.name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := l.lock.release(); err != nil {
		errs = append(errs, err)
	}
	l.closeErr = errors.Join(errs...)
	return l.closeErr
}
