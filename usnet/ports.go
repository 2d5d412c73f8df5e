package usnet

// Port choice for sockets that do not name their port: outgoing
// connections, and listeners on port 0.
//
// The kernel shares the IP address and picks its own ephemeral ports from
// /proc/sys/net/ipv4/ip_local_port_range; usnetd learns the ports of the
// kernel's connections only when their first packet leaves. So usnet takes
// its ports from outside that range (above it first, then below it down to
// 1024), never a port that usnetd reports in use (QueryPortsInUse: its
// rules, i.e. DEBUG_PORTS, other endpoints, connections learned so far, and
// every kernel socket of the protocol, one bit per port), and starts at
// a random place so that stacks of several processes rarely try the same.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip"
)

const (
	lowestPort  = 1024
	maxBindTry  = 64
	portRangeFS = "/proc/sys/net/ipv4/ip_local_port_range"
)

// kernelPortRange reads ip_local_port_range.
func kernelPortRange() (lo, hi uint16, err error) {
	b, err := os.ReadFile(portRangeFS)
	if err != nil {
		return 0, 0, err
	}
	return parsePortRange(string(b))
}

func parsePortRange(s string) (lo, hi uint16, err error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("usnet: ip_local_port_range %q: want two numbers", s)
	}
	l, err1 := strconv.ParseUint(f[0], 10, 16)
	h, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || l > h {
		return 0, 0, fmt.Errorf("usnet: ip_local_port_range %q: want two ports, low first", s)
	}
	return uint16(l), uint16(h), nil
}

// candidatePorts returns the ports outside [lo, hi] and at or above
// lowestPort: those above the range first, then those below, each run
// starting at a random offset.
func candidatePorts(lo, hi uint16) []uint16 {
	var above, below []uint16
	for p := uint32(hi) + 1; p <= 65535; p++ {
		above = append(above, uint16(p))
	}
	for p := uint32(lowestPort); p < uint32(lo); p++ {
		below = append(below, uint16(p))
	}
	rot := func(s []uint16) []uint16 {
		if len(s) == 0 {
			return s
		}
		k := rand.IntN(len(s))
		return append(s[k:len(s):len(s)], s[:k]...)
	}
	return append(rot(above), rot(below)...)
}

// withFreePort calls bind with candidate ports that usnetd has no rule for
// (any address) until bind does not fail with a port in use.
func (n *netStack) withFreePort(proto uint8, bind func(port uint16) tcpip.Error) (uint16, error) {
	rng := n.cfg.localPortRange
	if rng == nil {
		rng = kernelPortRange
	}
	lo, hi, err := rng()
	if err != nil {
		return 0, err
	}
	taken, err := n.usedPorts(proto)
	if err != nil {
		return 0, err
	}
	tries := 0
	for _, p := range candidatePorts(lo, hi) {
		if taken.Has(p) {
			continue
		}
		terr := bind(p)
		if terr == nil {
			return p, nil
		}
		if _, inUse := terr.(*tcpip.ErrPortInUse); !inUse {
			return 0, errors.New(terr.String())
		}
		if tries++; tries == maxBindTry {
			break
		}
	}
	return 0, ErrNoPort
}
