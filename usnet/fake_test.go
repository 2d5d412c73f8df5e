package usnet

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
)

// fakeAttacher stands in for usnetd: it hands out one end of a socketpair
// and records the rules.
type fakeAttacher struct {
	mu      sync.Mutex
	ch      *os.File // handed out once by RequestUDS
	used    wire.UsedPorts
	added   []wire.Match
	removed []wire.Match
	queries int
	closed  int
	uds     int // RequestUDS calls
	iface   string
}

func (f *fakeAttacher) RequestUDS(iface string) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.iface = iface
	f.uds++
	if f.ch == nil {
		return nil, errors.New("fake: no channel left")
	}
	ch := f.ch
	f.ch = nil
	return ch, nil
}

func (f *fakeAttacher) AddMatch(m wire.Match) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.active() {
		if a.Equal(m) {
			return ErrRefused
		}
	}
	f.added = append(f.added, m)
	return nil
}

func (f *fakeAttacher) RemoveMatch(m wire.Match) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, m)
	return nil
}

func (f *fakeAttacher) QueryPortsInUse(proto uint8) (*wire.PortSet, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries++
	return portSetOf(f.used, proto), nil
}

// portSetOf is what usnetd answers to QueryPortsInUse when its rules are
// used.
func portSetOf(used wire.UsedPorts, proto uint8) *wire.PortSet {
	ps := new(wire.PortSet)
	for _, l := range [][]wire.PortEntry{used.Listening, used.Connected} {
		for _, e := range l {
			if e.Protocol == proto {
				ps.Add(e.Port)
			}
		}
	}
	return ps
}

func (f *fakeAttacher) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
	return nil
}

// active returns the rules added and not removed; f.mu is held.
func (f *fakeAttacher) active() []wire.Match {
	var act []wire.Match
	for _, a := range f.added {
		n := 0
		for _, b := range f.added {
			if b.Equal(a) {
				n++
			}
		}
		for _, r := range f.removed {
			if r.Equal(a) {
				n--
			}
		}
		if n > 0 && !containsMatch(act, a) {
			act = append(act, a)
		}
	}
	return act
}

func (f *fakeAttacher) snapshot() (added, removed, active []wire.Match, closed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]wire.Match(nil), f.added...), append([]wire.Match(nil), f.removed...), f.active(), f.closed
}

func containsMatch(ms []wire.Match, m wire.Match) bool {
	for _, x := range ms {
		if x.Equal(m) {
			return true
		}
	}
	return false
}

func listenMatch(addr string, port uint16, proto uint8) wire.Match {
	return wire.Match{DstAddr: netip.MustParseAddr(addr), DstPort: &port, Protocol: proto}
}

// testRange is the fake kernel ip_local_port_range of the tests.
const testRangeLo, testRangeHi = 2000, 64000

// stackPair makes two Configs whose stacks are joined by a socketpair:
// a is 198.18.0.1 and 2001:db8::1, b is 198.18.0.2 and 2001:db8::2.
func stackPair(t testing.TB) (a *Config, fa *fakeAttacher, b *Config, fb *fakeAttacher) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fa = &fakeAttacher{ch: os.NewFile(uintptr(fds[0]), "chan-a")}
	fb = &fakeAttacher{ch: os.NewFile(uintptr(fds[1]), "chan-b")}
	mk := func(n byte, f *fakeAttacher) *Config {
		return &Config{
			Interface: "usnet0",
			MAC:       net.HardwareAddr{0x02, 0, 0, 0, 0, n},
			Addrs: []netip.Prefix{
				netip.MustParsePrefix("198.18.0." + string('0'+n) + "/24"),
				netip.MustParsePrefix("2001:db8::" + string('0'+n) + "/64"),
			},
			Gateways: []netip.Addr{netip.MustParseAddr("198.18.0.254")},
			Attach:   func(string) (Attacher, error) { return f, nil },
			localPortRange: func() (uint16, uint16, error) {
				return testRangeLo, testRangeHi, nil
			},
		}
	}
	a, b = mk(1, fa), mk(2, fb)
	t.Cleanup(func() {
		// The channels the stacks never took.
		for _, f := range []*fakeAttacher{fa, fb} {
			if f.ch != nil {
				f.ch.Close()
			}
		}
	})
	return a, fa, b, fb
}
