package usnet

import (
	"encoding/binary"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// kernelRoutes reads the kernel's unicast routes through the NIC with
// index ifindex from the main routing table, IPv4 and IPv6, with a netlink
// dump (RTM_GETROUTE) in the calling thread's network namespace. Routes
// with a gateway come back with gw set, on-link routes without.
// Multipath routes are left out.
func kernelRoutes(ifindex int) ([]route, error) {
	var rs []route
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		b, err := syscall.NetlinkRIB(unix.RTM_GETROUTE, fam)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(b)
		if err != nil {
			return nil, err
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Header.Type != unix.RTM_NEWROUTE || len(m.Data) < unix.SizeofRtMsg {
				continue
			}
			if r, ok := parseRoute(m, ifindex); ok {
				rs = append(rs, r)
			}
		}
	}
	return rs, nil
}

// parseRoute reads one RTM_NEWROUTE message; ok is false for routes that
// are not unicast routes of the main table through ifindex.
func parseRoute(m *syscall.NetlinkMessage, ifindex int) (route, bool) {
	// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
	family, dstLen, table, typ := m.Data[0], int(m.Data[1]), uint32(m.Data[4]), m.Data[7]
	attrs, err := syscall.ParseNetlinkRouteAttr(m)
	if err != nil || typ != unix.RTN_UNICAST {
		return route{}, false
	}
	var r route
	var dst netip.Addr
	oif := -1
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_TABLE:
			if len(a.Value) == 4 {
				table = binary.NativeEndian.Uint32(a.Value)
			}
		case unix.RTA_OIF:
			if len(a.Value) == 4 {
				oif = int(binary.NativeEndian.Uint32(a.Value))
			}
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(a.Value)
		case unix.RTA_GATEWAY:
			r.gw, _ = netip.AddrFromSlice(a.Value)
		}
	}
	if table != unix.RT_TABLE_MAIN || oif != ifindex {
		return route{}, false
	}
	if !dst.IsValid() {
		if family == unix.AF_INET {
			dst = netip.IPv4Unspecified()
		} else {
			dst = netip.IPv6Unspecified()
		}
	}
	p, err := dst.Prefix(dstLen)
	if err != nil {
		return route{}, false
	}
	r.dst = p
	return r, true
}
