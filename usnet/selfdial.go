package usnet

// Dials to the stack's own address on a port the stack does not listen
// on: the kernel's service there, through a kernel socket.
//
// The stack shares its address with the kernel (passthru, or a static
// address the kernel has too). gVisor would answer a dial to its own
// address itself (HandleLocal) and refuse it on any port without a usnet
// listener, so a usnet program could not reach a kernel service on the
// shared address; and the kernel's frames to its own address never leave
// the kernel (they go over its loopback), so no channel from usnetd could
// carry them either. The program runs on the host, so it dials the
// kernel's service the way any program there does: with a kernel socket.
// That gives it nothing a plain net.Dial in the same process could not.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
)

// errNotKernelAddr: the kernel has no such address (the stack's own
// address is not shared with the kernel); the dial stays in the stack.
var errNotKernelAddr = errors.New("usnet: not an address of the kernel")

// listens reports whether the stack has a listening socket of proto on
// ap: a rule of an open listener (or UDP socket from ListenPacket) for
// that address and port.
func (n *netStack) listens(proto uint8, ap netip.AddrPort) bool {
	n.attMu.Lock()
	defer n.attMu.Unlock()
	for _, m := range n.live {
		if m.Protocol == proto && m.DstAddr == ap.Addr() && m.DstPort != nil && *m.DstPort == ap.Port() {
			return true
		}
	}
	return false
}

// toKernel reports whether a dial of proto to ap goes to the kernel: ap
// is one of the stack's own addresses and the stack does not listen there.
func (n *netStack) toKernel(proto uint8, ap netip.AddrPort) bool {
	return n.hasAddr(ap.Addr()) && !n.listens(proto, ap)
}

// dialKernel dials ap with a kernel socket bound to ap's address, in the
// calling thread's network namespace. If the kernel does not have that
// address on an interface, it fails with errNotKernelAddr. A link-local
// address gets the stack's interface as its zone. Keep-alive is off, as
// on the stack's connections, until SetKeepAlive.
func dialKernel(ctx context.Context, network, iface string, ap netip.AddrPort) (net.Conn, error) {
	ip := ap.Addr()
	if !kernelHasAddr(ip) {
		// (Not left to the bind below alone: with ip_nonlocal_bind
		// that succeeds for any address, and the connect would go out
		// on the wire.)
		return nil, errNotKernelAddr
	}
	zone := ""
	if ip.Is6() && (ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast()) {
		// By index, looked up in this namespace: net's cache of zone
		// names may hold another namespace's index for the name.
		nic, err := net.InterfaceByName(iface)
		if err != nil {
			return nil, err
		}
		zone = strconv.Itoa(nic.Index)
	}
	d := net.Dialer{KeepAlive: -1}
	if network[:3] == "tcp" {
		d.LocalAddr = &net.TCPAddr{IP: ip.AsSlice(), Zone: zone}
	} else {
		d.LocalAddr = &net.UDPAddr{IP: ip.AsSlice(), Zone: zone}
	}
	c, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip.WithZone(zone), ap.Port()).String())
	if err != nil {
		var se *os.SyscallError
		if errors.As(err, &se) && se.Syscall == "bind" && errors.Is(se.Err, syscall.EADDRNOTAVAIL) {
			return nil, errNotKernelAddr
		}
		var oe *net.OpError
		if errors.As(err, &oe) {
			return nil, oe.Err // the caller makes the OpError
		}
		return nil, err
	}
	return c, nil
}

// adoptKernel wraps the kernel's connection as the stack's *TCPConn or
// *UDPConn (it holds a reference on the stack, as every socket of the
// stack does, and Stack.Close closes it).
func adoptKernel(n *netStack, kc net.Conn) (net.Conn, error) {
	switch k := kc.(type) {
	case *net.TCPConn:
		tc := kernelTCPConn(n, k)
		return adopt[net.Conn](n, tc, tc, tc.Close)
	case *net.UDPConn:
		uc := kernelUDPConn(n, k)
		return adopt[net.Conn](n, uc, uc, uc.Close)
	}
	kc.Close()
	n.release()
	return nil, errors.New("usnet: the kernel's connection is neither TCP nor UDP")
}

// kernelHasAddr reports whether ip is an address of one of the kernel's
// interfaces in the calling thread's network namespace.
func kernelHasAddr(ip netip.Addr) bool {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range as {
		if ipn, ok := a.(*net.IPNet); ok {
			if ka, ok := netip.AddrFromSlice(ipn.IP); ok && ka.Unmap() == ip {
				return true
			}
		}
	}
	return false
}
