package netlab

import (
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// txChecksum reads the link's TX checksum offload (ETHTOOL_GTXCSUM).
func txChecksum(t *testing.T, ns *NS, link string) bool {
	t.Helper()
	var on bool
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		val := struct{ cmd, data uint32 }{cmd: 0x16}
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
			return errno
		}
		on = val.data != 0
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return on
}

func TestTxChecksumOff(t *testing.T) {
	t.Parallel()
	_, a, b, _, _ := pair(t, VethOpts{Up: true})
	if !txChecksum(t, a, "va") || !txChecksum(t, b, "vb") {
		t.Fatal("a new veth has TX checksum offload off already: the test proves nothing")
	}
	if err := a.TxChecksumOff("va"); err != nil {
		t.Fatal(err)
	}
	if txChecksum(t, a, "va") {
		t.Error("va: TX checksum offload still on")
	}
	if !txChecksum(t, b, "vb") {
		t.Error("vb changed too")
	}
	if err := a.TxChecksumOff("nosuch"); err == nil {
		t.Error("TxChecksumOff of a missing link succeeded")
	}
}
