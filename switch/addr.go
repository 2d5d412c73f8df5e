package l4

import (
	"encoding/binary"
	"net/netip"
	"strconv"
)

// Addr is an IPv4 or IPv6 address in 16 bytes. IPv4 addresses are stored in
// their IPv4-mapped form (::ffff:a.b.c.d), so one comparable fixed-size type
// serves both families without allocation. The zero Addr is "no address".
type Addr [16]byte

var v4Prefix = [12]byte{10: 0xff, 11: 0xff}

// AddrFrom4 returns the IPv4 address b as an Addr.
func AddrFrom4(b [4]byte) Addr {
	var a Addr
	a[10], a[11] = 0xff, 0xff
	a[12], a[13], a[14], a[15] = b[0], b[1], b[2], b[3]
	return a
}

// addrFrom4Slice reads an IPv4 address from the first 4 bytes of b.
func addrFrom4Slice(b []byte) Addr {
	var a Addr
	setAddr4(&a, b)
	return a
}

// setAddr4 sets *a to the IPv4 address in the first 4 bytes of b, in two
// word stores. Building the Addr in a temporary (a 16-byte clear, a 2-byte
// and a 4-byte store) and copying it took a store-forwarding stall per
// address, the costliest step of parsing an IPv4 header.
func setAddr4(a *Addr, b []byte) {
	binary.LittleEndian.PutUint64(a[0:8], 0)
	binary.LittleEndian.PutUint64(a[8:16], 0xffff<<16|uint64(binary.LittleEndian.Uint32(b[:4]))<<32)
}

// addrFrom16Slice reads an IPv6 address from the first 16 bytes of b.
func addrFrom16Slice(b []byte) Addr {
	var a Addr
	copy(a[:], b[:16])
	return a
}

// AddrFromNetip converts a netip.Addr. The invalid netip.Addr gives the zero Addr.
func AddrFromNetip(ip netip.Addr) Addr {
	if !ip.IsValid() {
		return Addr{}
	}
	if ip.Is4() {
		return AddrFrom4(ip.As4())
	}
	return Addr(ip.As16())
}

// MustParseAddr parses s as an IPv4 or IPv6 address and panics on error. For tests
// and constants only.
func MustParseAddr(s string) Addr { return AddrFromNetip(netip.MustParseAddr(s)) }

// Is4 reports whether a is an IPv4 address.
func (a Addr) Is4() bool { return [12]byte(a[:12]) == v4Prefix }

// IsZero reports whether a is the zero Addr.
func (a Addr) IsZero() bool { return a == Addr{} }

// Netip converts a to a netip.Addr (IPv4 unmapped).
func (a Addr) Netip() netip.Addr {
	if a.IsZero() {
		return netip.Addr{}
	}
	ip := netip.AddrFrom16(a)
	if a.Is4() {
		return ip.Unmap()
	}
	return ip
}

// IsLoopback reports whether a is in 127.0.0.0/8 or is ::1.
func (a Addr) IsLoopback() bool {
	if a.Is4() {
		return a[12] == 127
	}
	return a == Addr{15: 1}
}

// String formats a as netip does; the zero Addr is "invalid IP".
func (a Addr) String() string { return a.Netip().String() }

// halves returns the address as two words (for the table's IPv6 keys).
func (a Addr) halves() (uint64, uint64) {
	return binary.LittleEndian.Uint64(a[0:8]), binary.LittleEndian.Uint64(a[8:16])
}

// MAC is an Ethernet address.
type MAC [6]byte

// IsMulticast reports whether the group bit is set (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 == 1 }

// IsBroadcast reports whether m is ff:ff:ff:ff:ff:ff.
func (m MAC) IsBroadcast() bool { return m == MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

const hexDigit = "0123456789abcdef"

// String formats m as aa:bb:cc:dd:ee:ff.
func (m MAC) String() string {
	var b [17]byte
	for i, x := range m {
		if i > 0 {
			b[i*3-1] = ':'
		}
		b[i*3] = hexDigit[x>>4]
		b[i*3+1] = hexDigit[x&0xf]
	}
	return string(b[:])
}

// ParseMAC parses aa:bb:cc:dd:ee:ff (or with '-' separators), case-insensitive.
func ParseMAC(s string) (MAC, error) {
	var m MAC
	if len(s) != 17 {
		return m, errBadMAC(s)
	}
	for i := range 6 {
		if i > 0 && s[i*3-1] != ':' && s[i*3-1] != '-' {
			return m, errBadMAC(s)
		}
		hi, ok1 := unhex(s[i*3])
		lo, ok2 := unhex(s[i*3+1])
		if !ok1 || !ok2 {
			return m, errBadMAC(s)
		}
		m[i] = hi<<4 | lo
	}
	return m, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

type errBadMAC string

func (e errBadMAC) Error() string {
	return "invalid MAC address " + strconv.Quote(string(e)) + " (want aa:bb:cc:dd:ee:ff)"
}
