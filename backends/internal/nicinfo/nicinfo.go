// Package nicinfo answers what the NIC backends need to know about an
// interface before they claim it: how many receive queues it has. It only
// asks the kernel; it never changes a NIC's settings.
package nicinfo

import (
	"net"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// QueueCount returns the interface's number of RX queues and where the
// number came from: ETHTOOL_GCHANNELS first (combined channels plus RX-only
// ones: the queues an AF_XDP socket can bind; veth reports rx_count only),
// then netlink's IFLA_NUM_RX_QUEUES; a device that reports nothing has one.
// Both afxdp and afpacket use it, so both make as many workers. It asks in
// the calling thread's network namespace.
func QueueCount(ifi *net.Interface) (int, string) {
	if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err == nil {
		ch, err := ethtoolGChannels(fd, ifi.Name)
		unix.Close(fd)
		if err == nil && ch.combinedCnt+ch.rxCount > 0 {
			return int(ch.combinedCnt + ch.rxCount), "ethtool channels"
		}
	}
	if l, err := netlink.LinkByIndex(ifi.Index); err == nil && l.Attrs().NumRxQueues > 0 {
		return l.Attrs().NumRxQueues, "netlink"
	}
	return 1, "default"
}

// ethtoolChannels is struct ethtool_channels.
type ethtoolChannels struct {
	cmd                                       uint32
	maxRx, maxTx, maxOther, maxCombined       uint32
	rxCount, txCount, otherCount, combinedCnt uint32
}

// ifreqData is struct ifreq with ifr_data, the form SIOCETHTOOL takes.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtoolGChannels runs ETHTOOL_GCHANNELS for ifname on socket fd (any
// socket of the network namespace).
func ethtoolGChannels(fd int, ifname string) (*ethtoolChannels, error) {
	ch := &ethtoolChannels{cmd: unix.ETHTOOL_GCHANNELS}
	ifr := &ifreqData{data: unsafe.Pointer(ch)}
	copy(ifr.name[:unix.IFNAMSIZ-1], ifname)
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
	if e != 0 {
		return nil, e
	}
	return ch, nil
}
