package netlab

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TxChecksumOff turns off TX checksum offload of the link (what `ethtool
// -K LINK tx off` does inside the namespace).
//
// A veth hands a frame to its peer with CHECKSUM_PARTIAL: the TCP or UDP
// checksum is left for a NIC that does not exist, and only the kernel on
// the receiving end knows to ignore that. A frame that reaches a userspace
// stack through AF_XDP or AF_PACKET carries the unfinished checksum, and
// gVisor (rightly) drops it. A real wire always carries complete
// checksums; in a lab, the namespace that sends to a userspace stack over
// a veth computes them in software after this call.
func (ns *NS) TxChecksumOff(link string) error {
	if err := checkLinkName(link); err != nil {
		return err
	}
	return ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("netlab: %w", err)
		}
		defer unix.Close(fd)
		const ethtoolSTXCSUM = 0x17 // ETHTOOL_STXCSUM, data 0: off
		val := struct{ cmd, data uint32 }{cmd: ethtoolSTXCSUM}
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data uintptr
			_    [16]byte
		}
		copy(ifr.name[:], link)
		ifr.data = uintptr(unsafe.Pointer(&val))
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
		runtime.KeepAlive(&val)
		if errno != 0 {
			return fmt.Errorf("netlab: ethtool -K %s tx off in %s: %w", link, ns.name, errno)
		}
		return nil
	})
}
