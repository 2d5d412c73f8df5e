package netorder

import (
	"encoding/binary"
	"testing"
	"unsafe"
)

// TestHtons: the result, stored in host order, reads as v in network order.
func TestHtons(t *testing.T) {
	for _, v := range []uint16{0, 1, 0x0003, 0x0800, 0x86dd, 0xffff} {
		h := Htons(v)
		b := (*[2]byte)(unsafe.Pointer(&h))
		if got := binary.BigEndian.Uint16(b[:]); got != v {
			t.Errorf("Htons(%#04x) stored as % x, reads as %#04x in network order", v, b[:], got)
		}
	}
}
