package pcap

import (
	"bufio"
	"io"

	"github.com/gopacket/gopacket"
)

func bufioWriter(w io.Writer) *bufio.Writer { return bufio.NewWriterSize(w, 256<<10) }

func gopacketCI(n int) gopacket.CaptureInfo {
	return gopacket.CaptureInfo{CaptureLength: n, Length: n}
}
