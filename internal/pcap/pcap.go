// Package pcap writes frames to capture files that tcpdump, tshark and
// Wireshark read, with nanosecond timestamps: NgWriter writes pcapng
// (PCAP_LOG: interfaces, and a comment per frame), Writer the classic
// format. It is written by hand rather than with gopacket's pcapgo because
// the writer is small and gopacket stays a test-only dependency; the
// benchmark in pcap_test.go compares the two.
//
// A Writer is for one goroutine. It never panics on a frame: one longer than
// the snap length is truncated, as tcpdump does.
package pcap

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
)

const (
	magicNanos   = 0xa1b23c4d // classic pcap, nanosecond timestamps
	linkEthernet = 1
	// SnapLen is the most bytes of a frame that are kept.
	SnapLen = 65535
)

// Writer appends frames to a pcap file.
type Writer struct {
	f       *os.File
	w       *bufio.Writer
	hdr     [16]byte
	packets uint64
}

// Create creates (or truncates) the file at path, mode 0640, and writes the
// pcap header.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("PCAP_LOG: %w", err)
	}
	w := &Writer{f: f, w: bufio.NewWriterSize(f, 256<<10)}
	var h [24]byte
	binary.LittleEndian.PutUint32(h[0:], magicNanos)
	binary.LittleEndian.PutUint16(h[4:], 2) // version 2.4
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], SnapLen)
	binary.LittleEndian.PutUint32(h[20:], linkEthernet)
	if _, err := w.w.Write(h[:]); err != nil {
		f.Close()
		return nil, fmt.Errorf("PCAP_LOG: %w", err)
	}
	return w, nil
}

// WritePacket appends one frame received at ts (Unix nanoseconds).
func (w *Writer) WritePacket(ts int64, frame []byte) error {
	orig := len(frame)
	if len(frame) > SnapLen {
		frame = frame[:SnapLen]
	}
	binary.LittleEndian.PutUint32(w.hdr[0:], uint32(ts/1e9))
	binary.LittleEndian.PutUint32(w.hdr[4:], uint32(ts%1e9))
	binary.LittleEndian.PutUint32(w.hdr[8:], uint32(len(frame)))
	binary.LittleEndian.PutUint32(w.hdr[12:], uint32(orig))
	if _, err := w.w.Write(w.hdr[:]); err != nil {
		return err
	}
	if _, err := w.w.Write(frame); err != nil {
		return err
	}
	w.packets++
	return nil
}

// Packets returns how many frames were written.
func (w *Writer) Packets() uint64 { return w.packets }

// Flush writes what is buffered to the file.
func (w *Writer) Flush() error { return w.w.Flush() }

// Close flushes and closes the file.
func (w *Writer) Close() error {
	ferr := w.w.Flush()
	cerr := w.f.Close()
	if ferr != nil {
		return ferr
	}
	return cerr
}
