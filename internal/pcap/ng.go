package pcap

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
)

// pcapng (the IETF draft "PCAP Next Generation Dump File Format"): block
// types and option codes that NgWriter writes.
const (
	ngSectionHeader   = 0x0A0D0D0A
	ngInterfaceDesc   = 0x00000001
	ngEnhancedPacket  = 0x00000006
	ngByteOrderMagic  = 0x1A2B3C4D
	ngOptEnd          = 0
	ngOptComment      = 1
	ngOptShbUserAppl  = 4
	ngOptIfName       = 2
	ngOptIfTsresol    = 9
	ngOptEpbFlags     = 2
	ngEpbFlagsInbound = 1 // direction: inbound (bits 0-1)
	ngMaxComment      = 1024
)

// NgWriter appends frames to a pcapng file: one section, an interface per
// AddInterface (Ethernet, nanosecond timestamps), and per frame an
// enhanced packet block with its interface, the inbound direction
// (epb_flags) and a comment (opt_comment), which tshark shows as
// frame.comment and Wireshark as the packet comment. PCAP_LOG writes the
// port a frame came from as its interface and the switch's verdict as its
// comment.
//
// An NgWriter is for one goroutine. It never panics on a frame: one longer
// than SnapLen is truncated, a comment longer than 1,024 bytes too.
// Writing a frame allocates nothing.
type NgWriter struct {
	f       *os.File
	w       *bufio.Writer
	hdr     [28]byte
	opt     [4]byte
	ifaces  uint32
	packets uint64
}

// CreateNg creates (or truncates) the file at path, mode 0640, and writes
// the section header.
func CreateNg(path string) (*NgWriter, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("PCAP_LOG: %w", err)
	}
	w := &NgWriter{f: f, w: bufio.NewWriterSize(f, 256<<10)}
	const appl = "usnetd"
	body := make([]byte, 0, 64)
	body = binary.LittleEndian.AppendUint32(body, ngByteOrderMagic)
	body = binary.LittleEndian.AppendUint16(body, 1) // version 1.0
	body = binary.LittleEndian.AppendUint16(body, 0)
	body = binary.LittleEndian.AppendUint64(body, ^uint64(0)) // section length: not given
	body = appendOpt(body, ngOptShbUserAppl, []byte(appl))
	body = appendOpt(body, ngOptEnd, nil)
	if err := w.block(ngSectionHeader, body); err != nil {
		f.Close()
		return nil, fmt.Errorf("PCAP_LOG: %w", err)
	}
	return w, nil
}

// AddInterface writes an interface description block (Ethernet, snap
// length SnapLen, nanosecond timestamps, if_name name) and returns the
// interface's id for WritePacket. Interfaces are numbered from 0 in the
// order they are added.
func (w *NgWriter) AddInterface(name string) (uint32, error) {
	body := make([]byte, 0, 32+len(name))
	body = binary.LittleEndian.AppendUint16(body, linkEthernet)
	body = binary.LittleEndian.AppendUint16(body, 0)
	body = binary.LittleEndian.AppendUint32(body, SnapLen)
	body = appendOpt(body, ngOptIfName, []byte(name))
	body = appendOpt(body, ngOptIfTsresol, []byte{9}) // 10^-9 s
	body = appendOpt(body, ngOptEnd, nil)
	if err := w.block(ngInterfaceDesc, body); err != nil {
		return 0, err
	}
	id := w.ifaces
	w.ifaces++
	return id, nil
}

// Interfaces returns how many interfaces were added.
func (w *NgWriter) Interfaces() uint32 { return w.ifaces }

// WritePacket appends one frame received at ts (Unix nanoseconds) on
// interface iface, inbound, with comment (none if empty).
func (w *NgWriter) WritePacket(iface uint32, ts int64, frame, comment []byte) error {
	if iface >= w.ifaces {
		return fmt.Errorf("pcapng: interface %d of %d", iface, w.ifaces)
	}
	orig := len(frame)
	if len(frame) > SnapLen {
		frame = frame[:SnapLen]
	}
	if len(comment) > ngMaxComment {
		comment = comment[:ngMaxComment]
	}
	pad := pad4(len(frame))
	opts := 4 + 4 + 4 // epb_flags, opt_endofopt
	if len(comment) > 0 {
		opts += 4 + len(comment) + pad4(len(comment))
	}
	total := 28 + len(frame) + pad + opts + 4
	h := w.hdr[:]
	binary.LittleEndian.PutUint32(h[0:], ngEnhancedPacket)
	binary.LittleEndian.PutUint32(h[4:], uint32(total))
	binary.LittleEndian.PutUint32(h[8:], iface)
	binary.LittleEndian.PutUint32(h[12:], uint32(uint64(ts)>>32))
	binary.LittleEndian.PutUint32(h[16:], uint32(uint64(ts)))
	binary.LittleEndian.PutUint32(h[20:], uint32(len(frame)))
	binary.LittleEndian.PutUint32(h[24:], uint32(orig))
	w.w.Write(h)
	w.w.Write(frame)
	w.zeros(pad)
	if len(comment) > 0 {
		w.optHeader(ngOptComment, len(comment))
		w.w.Write(comment)
		w.zeros(pad4(len(comment)))
	}
	w.optHeader(ngOptEpbFlags, 4)
	binary.LittleEndian.PutUint32(w.opt[:], ngEpbFlagsInbound)
	w.w.Write(w.opt[:])
	w.optHeader(ngOptEnd, 0)
	binary.LittleEndian.PutUint32(w.opt[:], uint32(total))
	if _, err := w.w.Write(w.opt[:]); err != nil {
		return err // a bufio.Writer keeps its first error: the earlier writes' too
	}
	w.packets++
	return nil
}

// Packets returns how many frames were written.
func (w *NgWriter) Packets() uint64 { return w.packets }

// Flush writes what is buffered to the file.
func (w *NgWriter) Flush() error { return w.w.Flush() }

// Close flushes and closes the file.
func (w *NgWriter) Close() error {
	ferr := w.w.Flush()
	cerr := w.f.Close()
	if ferr != nil {
		return ferr
	}
	return cerr
}

func (w *NgWriter) optHeader(code uint16, n int) {
	binary.LittleEndian.PutUint16(w.opt[0:], code)
	binary.LittleEndian.PutUint16(w.opt[2:], uint16(n))
	w.w.Write(w.opt[:])
}

var zeros4 [4]byte

func (w *NgWriter) zeros(n int) { w.w.Write(zeros4[:n]) }

// block writes a block of type typ around body (a multiple of 4 bytes).
func (w *NgWriter) block(typ uint32, body []byte) error {
	n := uint32(12 + len(body))
	var b [8]byte
	binary.LittleEndian.PutUint32(b[0:], typ)
	binary.LittleEndian.PutUint32(b[4:], n)
	w.w.Write(b[:])
	w.w.Write(body)
	binary.LittleEndian.PutUint32(b[0:], n)
	_, err := w.w.Write(b[:4])
	return err
}

// appendOpt appends an option (code, length, value padded to 4 bytes).
func appendOpt(b []byte, code uint16, v []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, code)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
	b = append(b, v...)
	return append(b, zeros4[:pad4(len(v))]...)
}

func pad4(n int) int { return (4 - n%4) % 4 }
