package daemon

import (
	"strconv"

	"github.com/usnetd/usnetd/internal/pcap"
	l4 "github.com/usnetd/usnetd/switch"
)

// pcapWriter writes the tap's frames into PCAP_LOG's pcapng file: each
// port a frame came from (per interface of INTERFACES) is a pcapng
// interface, named "IF: PORT" (e.g. "eth0: eth0", "eth0: endpoint 3 (pid
// 4242)", "eth0: eth0usnh" for the kernel's host path), added when its
// first frame comes; the switch's verdict is the frame's comment:
// "forward to PORT", "flood", "uplink" (out of the NIC) or "drop: REASON"
// (the reasons of usnetd_drops_total). It runs on the writer goroutine
// only.
type pcapWriter struct {
	w       *pcap.NgWriter
	domains []*domain
	ifaces  map[pcapPort]uint32
	comment []byte
}

type pcapPort struct {
	dom  int
	port l4.PortID
}

func newPcapWriter(w *pcap.NgWriter, domains []*domain) *pcapWriter {
	return &pcapWriter{w: w, domains: domains, ifaces: map[pcapPort]uint32{}, comment: make([]byte, 0, 128)}
}

// domainOf finds the domain of b by its buffer pool.
func (pw *pcapWriter) domainOf(b *l4.Buf) int {
	pool := b.Pool()
	for i, dom := range pw.domains {
		if dom.p.Pool() == pool {
			return i
		}
	}
	return -1
}

func (pw *pcapWriter) portName(dom int, id l4.PortID) string {
	if dom >= 0 {
		if name, ok := pw.domains[dom].p.PortName(id); ok {
			return name
		}
	}
	return "port " + strconv.FormatUint(uint64(id), 10)
}

func (pw *pcapWriter) write(b *l4.Buf) error {
	rec := b.Tapped()
	dom := pw.domainOf(b)
	key := pcapPort{dom, rec.In.Port}
	id, ok := pw.ifaces[key]
	if !ok {
		ifname := "?"
		if dom >= 0 {
			ifname = pw.domains[dom].ifname
		}
		var err error
		if id, err = pw.w.AddInterface(ifname + ": " + pw.portName(dom, rec.In.Port)); err != nil {
			return err
		}
		pw.ifaces[key] = id
	}
	c := pw.comment[:0]
	switch v := rec.Verdict; v.Action {
	case l4.ActForward:
		c = append(append(c, "forward to "...), pw.portName(dom, v.To.Port)...)
	case l4.ActFlood:
		c = append(c, "flood"...)
	case l4.ActUplink:
		c = append(c, "uplink"...)
	default:
		c = append(append(c, "drop: "...), v.Reason.String()...)
	}
	pw.comment = c
	return pw.w.WritePacket(id, b.Time(), b.Bytes(), c)
}
