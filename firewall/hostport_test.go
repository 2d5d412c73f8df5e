package firewall

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// The host path, without usnetd: frames written into a TAP carrying the
// host program reach the kernel as if they came from the wire, only where
// the firewall lets them (a SYN to the open port gets the kernel's SYN-ACK
// back on the TAP; a SYN to a kernel listener that the firewall keeps
// closed never reaches it: host_in_dropped), and the kernel's ARP request
// for the endpoint's address comes out of the TAP (a clone) as well as on
// the wire; the endpoint's ARP answer, written into the TAP, reaches the
// kernel. On every hook.
func TestHostPort(t *testing.T) {
	for _, mode := range []string{ModeNative, ModeGeneric, ModeTCX} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t)
			open := listen(t, l.host)
			closed := listen(t, l.host) // a kernel listener the operator did not open
			allowed := []Allowed{{Key: l4.ListenKey(la(l.h4), l4.ProtoTCP, open), Sticky: true}}
			opts := Options{XDPMode: mode, Allow: allowed}
			if mode == ModeTCX {
				opts = Options{Hook: HookTC, Allow: allowed}
			}
			fw := l.attach(t, opts)
			tap, idx := openTestTAP(t, l)
			epMAC := net.HardwareAddr{0x02, 0, 0x5e, 0, 0, 0x77}
			epIP := netip.AddrFrom4([4]byte(l.h4.AsSlice())).Next().Next().Next().Next().Next().Next().Next().Next().Next() // .10
			// The TAP's ifindex is the host namespace's.
			if err := l.host.Do(func() error { return fw.AttachHostPort(idx, []net.HardwareAddr{epMAC}) }); err != nil {
				t.Fatal(err)
			}

			// What the TAP gives out: the kernel's frames to the endpoint.
			var mu sync.Mutex
			var got [][]byte
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 2048)
				for {
					n, err := tap.Read(buf)
					if err != nil {
						if errors.Is(err, os.ErrDeadlineExceeded) {
							_ = tap.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
							continue
						}
						return
					}
					f := append([]byte(nil), buf[:n]...)
					// The endpoint answers the kernel's ARP requests for its address.
					if len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 1 && bytes.Equal(f[38:42], epIP.AsSlice()) {
						_, _ = tap.Write(arpReply(epMAC, epIP, net.HardwareAddr(f[22:28]), netip.AddrFrom4([4]byte(f[28:32]))))
					}
					mu.Lock()
					got = append(got, f)
					mu.Unlock()
				}
			}()
			t.Cleanup(func() { tap.Close(); <-done })
			synAck := func(port uint16) func([]byte) bool {
				return func(f []byte) bool {
					return len(f) >= 54 && f[12] == 0x08 && f[13] == 0x00 && f[23] == 6 &&
						binary.BigEndian.Uint16(f[34:]) == port && bytes.Equal(f[0:6], epMAC)
				}
			}
			find := func(match func([]byte) bool) bool {
				mu.Lock()
				defer mu.Unlock()
				for _, f := range got {
					if match(f) {
						return true
					}
				}
				return false
			}

			// The attack first, then the legitimate SYN: when the second's
			// answer is in, the first would have been too.
			if _, err := tap.Write(tcpSyn(epMAC, l.hostMAC, epIP, 40001, l.h4, closed)); err != nil {
				t.Fatal(err)
			}
			if _, err := tap.Write(tcpSyn(epMAC, l.hostMAC, epIP, 40000, l.h4, open)); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for !find(synAck(open)) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if !find(synAck(open)) {
				t.Fatalf("no SYN-ACK from the kernel's open port %d on the TAP; counters %v", open, counters(t, fw))
			}
			if find(synAck(closed)) {
				t.Errorf("the kernel answered on port %d, which the firewall keeps closed", closed)
			}
			c := counters(t, fw)
			if c["host_in_dropped"] == 0 || c["host_in"] < 2 || c["host_out"] == 0 || c["host_clone"] == 0 {
				t.Errorf("counters %v: want host_in_dropped (the closed port's SYN), host_in (the SYN and the ARP answer), host_out, host_clone", c)
			}
			if err := fw.DetachHostPort(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// openTestTAP makes a TAP (gone with its fd) in the lab's host namespace,
// up, without ARP and IPv6, and returns it in Go's netpoller with its
// ifindex.
func openTestTAP(t *testing.T, l *fwLab) (*os.File, int) {
	t.Helper()
	name := l.lab.Name() + "t"
	var fd, idx int
	err := l.host.Do(func() error {
		var err error
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return err
		}
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0)
		lk, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		idx = lk.Attrs().Index
		if err := netlink.LinkSetARPOff(lk); err != nil {
			return err
		}
		return netlink.LinkSetUp(lk)
	})
	if err != nil {
		t.Fatalf("TAP: %v", err)
	}
	f := os.NewFile(uintptr(fd), name)
	_ = f.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	return f, idx
}

func tcpSyn(srcMAC, dstMAC net.HardwareAddr, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) []byte {
	f := make([]byte, 14+20+20)
	copy(f[0:], dstMAC)
	copy(f[6:], srcMAC)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	copy(ip[12:], src.AsSlice())
	copy(ip[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip))
	tcp := f[34:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], 1)
	tcp[12], tcp[13] = 5<<4, 0x02
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	pseudo := append(append(append([]byte(nil), src.AsSlice()...), dst.AsSlice()...), 0, 6, 0, 20)
	binary.BigEndian.PutUint16(tcp[16:], inetChecksum(append(pseudo, tcp...)))
	return f
}

func arpReply(mac net.HardwareAddr, ip netip.Addr, toMAC net.HardwareAddr, to netip.Addr) []byte {
	f := make([]byte, 42)
	copy(f[0:], toMAC)
	copy(f[6:], mac)
	f[12], f[13] = 0x08, 0x06
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], 0x0800)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 2)
	copy(a[8:], mac)
	copy(a[14:], ip.AsSlice())
	copy(a[18:], toMAC)
	copy(a[24:], to.AsSlice())
	return f
}
