// Package netorder converts 16-bit values from the host's byte order to
// network byte order (big endian) where a system call wants them as a
// plain integer: the protocol of an AF_PACKET socket (socket(2),
// sockaddr_ll), for example. It is the one definition of htons in usnetd.
package netorder

import "encoding/binary"

// Htons returns v in network byte order, as C's htons: the bytes of the
// result, stored in the host's order, are v's in big-endian order.
func Htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
