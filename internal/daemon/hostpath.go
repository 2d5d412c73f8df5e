package daemon

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/usnetd/usnetd/backends/macvtap"
	"github.com/usnetd/usnetd/firewall"
	l4 "github.com/usnetd/usnetd/switch"
)

// hostPath is the kernel's switch port with the AF_XDP and AF_PACKET
// backends: a TAP that usnetd owns beside the NIC, with the firewall's
// programs at both ends (firewall.AttachHostPort). What the switch gives
// the kernel (an endpoint's frames to the kernel's rules, ARP and NDP of
// the endpoints) usnetd writes to the TAP, whose TCX ingress program runs
// the classifier on it and puts the kernel's into the NIC's ingress; the
// kernel's frames to an endpoint's MAC (ADD_MACS), and copies of its ARP,
// NDP and EAPOL to group addresses, the NIC's egress program sends to the
// TAP, where usnetd reads them as the kernel's. The kernel gets the NIC's
// frames directly and sends its own to the wire itself, so the port is an
// l4.HostPath: floods from the NIC skip it, and nothing from it goes out
// of the NIC.
type hostPath struct {
	*macvtap.Port
}

// HostPath implements l4.HostPath.
func (hostPath) HostPath() bool { return true }

// openHostPath makes the host path of fw's NIC; without a kernel path
// (NO_HOST_RINGS) there is none (nil).
func (d *daemon) openHostPath(ifname string, fw *firewall.Firewall) (*hostPath, error) {
	if d.cfg.NoHostRings {
		return nil, nil
	}
	lk, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("host path: %w", err)
	}
	port, idx, err := macvtap.OpenHostTAP(ifname, lk.Attrs().MTU)
	if err != nil {
		return nil, err
	}
	macs := make([]net.HardwareAddr, 0, len(d.cfg.AddMACs))
	for _, m := range d.cfg.AddMACs {
		macs = append(macs, net.HardwareAddr(m[:]))
	}
	if err := fw.AttachHostPort(idx, macs); err != nil {
		_ = port.Close()
		return nil, fmt.Errorf("host path: %w", err)
	}
	return &hostPath{Port: port}, nil
}

// attachHostPath adds the host path's port to the pipeline: it owns the
// kernel's rules from then on. Without one, l4.KernelOwner does, and the
// switch drops what it decides for the kernel (port_gone).
func attachHostPath(h *hostPath, p *l4.Pipeline) (l4.Owner, error) {
	if h == nil {
		return l4.KernelOwner, nil
	}
	o, err := p.AddPort(h)
	if err != nil {
		return l4.Owner{}, fmt.Errorf("host path: %w", err)
	}
	return o, nil
}

// addDrops adds the TAP's counters to a backend's drops, as kernel_*
// (as macvtap's TAP).
func (h *hostPath) addDrops(d map[string]uint64) {
	if h == nil {
		return
	}
	st := h.Port.Stats()
	d["kernel_rx_too_long"] += st.RxTooLong
	d["kernel_rx_error"] += st.RxErrors
	d["kernel_tx_dropped"] += st.TxDropped
	d["kernel_tx_error"] += st.TxErrors
}

// close closes the TAP (it goes with its fd) after the firewall's entry
// for it: the kernel's frames to the endpoints' MACs go to the wire again.
func (h *hostPath) close(fw *firewall.Firewall) error {
	if h == nil {
		return nil
	}
	ferr := fw.DetachHostPort()
	perr := h.Port.Close()
	if ferr != nil {
		return ferr
	}
	return perr
}
