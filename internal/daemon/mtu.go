package daemon

import (
	"errors"
	"fmt"

	l4 "github.com/usnetd/usnetd/switch"
)

// Frame sizes.
//
// usnetd reads each NIC's MTU when it claims it and carries frames of that
// size on every path: the pipeline's buffers, the backend (AF_XDP with
// multi-buffer sockets where a frame exceeds a UMEM chunk, AF_PACKET
// rings, macvtap reads) and the endpoints' channels (one frame per
// datagram, as long as a buffer). Where a backend cannot, the claim fails
// with a line that names the MTU and the limit; nothing is lost silently.
// QueryStatus reports the MTU per interface, and usnet takes it as its
// default.

// vlanTag is the one 802.1Q tag a frame may carry besides its MTU.
const vlanTag = 4

// ethHeader is the Ethernet header (no FCS: no backend hands it over).
const ethHeader = 14

// frameBytes is the longest Ethernet frame that an IP packet of mtu bytes
// makes: the header and one VLAN tag.
func frameBytes(mtu int) int { return mtu + ethHeader + vlanTag }

// bufSizeFor is the pipeline buffer size for mtu: a whole frame, rounded
// up to a cache line, and never below l4.DefaultBufSize (what 1,500 bytes
// have always had).
func bufSizeFor(mtu int) int {
	n := (frameBytes(mtu) + 63) &^ 63
	return max(n, l4.DefaultBufSize)
}

// ErrMTU is returned (wrapped) when a NIC's MTU is more than usnetd can
// carry on it; the message names the MTU and the limit.
var ErrMTU = errors.New("MTU too large")

// MTUChanged is what the daemon calls when it learns that ifname's MTU is
// now mtu (link following). An MTU whose frames fit what usnetd set up
// when it claimed the NIC (buffers and backend) is taken at once: endpoints
// that ask QueryStatus from then on get it. A larger one is refused with
// an error that names the MTU and the limit; the caller then gives the NIC
// up (or keeps it and says so), since frames above the limit would be
// dropped (counted as the backend's rx_oversize or rx_too_long drop).
func (d *daemon) MTUChanged(ifname string, mtu int) error {
	for _, dom := range d.domains {
		if dom.ifname != ifname {
			continue
		}
		dom.mu.Lock()
		defer dom.mu.Unlock()
		return d.mtuChanged(dom, mtu)
	}
	return fmt.Errorf("interface %s: not claimed", ifname)
}

// mtuChanged is MTUChanged for dom, whose mutex the caller holds (the
// follower, on every link event and once a second).
func (d *daemon) mtuChanged(dom *domain, mtu int) error {
	if dom.nic == nil {
		return fmt.Errorf("interface %s: not claimed", dom.ifname)
	}
	if err := dom.checkMTU(mtu); err != nil {
		return err
	}
	old := dom.mtu.Swap(int64(mtu))
	d.log.Info().Str("interface", dom.ifname).Int64("old_mtu", old).Int("mtu", mtu).Msg("MTU changed")
	return nil
}

// checkMTU says whether frames of mtu fit the domain's buffers and backend.
func (dom *domain) checkMTU(mtu int) error {
	if mtu < 68 {
		return fmt.Errorf("interface %s: MTU %d is below the minimum of 68", dom.ifname, mtu)
	}
	if lim := dom.maxMTU; mtu > lim {
		return fmt.Errorf("interface %s: %w: MTU %d needs frames of %d bytes, and usnetd carries at most %d-byte frames (MTU %d) on it, "+
			"as sized when it claimed the NIC (%s); restart usnetd to carry the new MTU",
			dom.ifname, ErrMTU, mtu, frameBytes(mtu), frameBytes(lim), lim, dom.nic.Describe())
	}
	return nil
}
