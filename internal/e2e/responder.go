package e2e

import (
	"encoding/binary"
	"net"
	"os"
	"sync/atomic"
	"testing"
)

// UDPResponder is a minimal userspace network stack on a usnetd channel:
// it answers every IPv4 UDP datagram to port with the same payload, from
// the host's IP and MAC mac (it shares them with the kernel), and counts
// the answers (each before it is sent, so that a test that got an answer
// sees it counted).
func UDPResponder(t *testing.T, ch *os.File, mac net.HardwareAddr, port uint16) *atomic.Int64 {
	var answered atomic.Int64
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := ch.Read(buf)
			if err != nil {
				return
			}
			f := buf[:n]
			if n < 42 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 17 {
				continue // not IPv4 UDP (ARP copies, NDP, ...)
			}
			ihl := int(f[14]&0x0f) * 4
			udp := f[14+ihl:]
			if len(udp) < 8 || binary.BigEndian.Uint16(udp[2:]) != port {
				continue
			}
			out := append([]byte(nil), f...)
			copy(out[0:6], f[6:12]) // to the sender
			copy(out[6:12], mac)    // from the NIC's MAC
			ip := out[14:]
			copy(ip[12:16], f[14+16:14+20])
			copy(ip[16:20], f[14+12:14+16])
			ip[8] = 64
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:], IPChecksum(ip[:ihl]))
			u := out[14+ihl:]
			copy(u[0:2], udp[2:4])
			copy(u[2:4], udp[0:2])
			u[6], u[7] = 0, 0 // no UDP checksum (allowed for IPv4)
			// Counted before the write: the answer may reach the peer,
			// and the test read the count, before this goroutine runs
			// again.
			answered.Add(1)
			if _, err := ch.Write(out); err != nil {
				answered.Add(-1)
			}
		}
	}()
	return &answered
}

// IPChecksum is the Internet checksum of an IPv4 header h (whose checksum
// field is zero).
func IPChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
