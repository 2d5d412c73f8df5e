package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/usnetd/usnetd/internal/e2e"
	"github.com/usnetd/usnetd/internal/netlab"
)

// TestE2EPcapVerdicts: PCAP_LOG is a pcapng file with every frame usnetd
// received, the port it came from as its interface and the switch's
// verdict as its comment: a frame switched to an endpoint ("forward to
// endpoint ..."), one dropped ("drop: no_match"), and the kernel's ARP
// request as the kernel's port sent it ("flood"; with afxdp and afpacket
// through the host path), read back with gopacket's pcapgo.NgReader.
func TestE2EPcapVerdicts(t *testing.T) { e2e.ForEachBackend(t, testE2EPcapVerdicts) }

func testE2EPcapVerdicts(t *testing.T, backend string) {
	l := newIsoLab(t, backend)
	file := filepath.Join(t.TempDir(), "usnetd.pcapng")
	l.startIso(t, "PCAP_LOG="+file)
	ep := l.attach(t, "an endpoint", 7100)
	sendRaw(t, l.Peer, "eth0", udpFrame(l.hostMAC, l.peerMAC, l.PeerIP, 5000, l.HostIP, 7101, "pcap dropped"))
	sendRaw(t, l.Peer, "eth0", udpFrame(l.hostMAC, l.peerMAC, l.PeerIP, 5000, l.HostIP, 7100, "pcap switched"))
	ep.got.wait(t, "the switched frame at the endpoint", udpTo(l.PeerIP, 5000, l.HostIP, 7100, "pcap switched"))
	// The kernel asks for an address nobody has.
	nobody := netlab.Host(netip.PrefixFrom(l.HostIP, 24).Masked(), 20).Addr()
	err := l.Host.Do(func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(nobody, 9).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("who"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	kernelARP := func(f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 1 &&
			bytes.Equal(f[28:32], l.HostIP.AsSlice()) && bytes.Equal(f[38:42], nobody.AsSlice())
	}
	ep.got.wait(t, "the kernel's ARP request at the endpoint", kernelARP)
	l.finish(t) // the writer flushes at the stop

	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	type seen struct{ iface, comment string }
	var switched, dropped, arp []seen
	for {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		in, err := r.Interface(ci.InterfaceIndex)
		if err != nil {
			t.Fatal(err)
		}
		s := seen{iface: in.Name, comment: strings.Join(opts.Comments, "|")}
		switch {
		case udpTo(l.PeerIP, 5000, l.HostIP, 7100, "pcap switched")(data):
			switched = append(switched, s)
		case udpTo(l.PeerIP, 5000, l.HostIP, 7101, "pcap dropped")(data):
			dropped = append(dropped, s)
		case kernelARP(data):
			arp = append(arp, s)
		}
	}
	if len(switched) != 1 || !strings.HasPrefix(switched[0].comment, "forward to endpoint ") ||
		!strings.HasPrefix(switched[0].iface, l.Ifname+": ") {
		t.Errorf("the switched frame in PCAP_LOG: %+v; want once, from %s's port, \"forward to endpoint ...\"", switched, l.Ifname)
	}
	if len(dropped) != 1 || dropped[0].comment != "drop: no_match" || dropped[0].iface != switched[0].iface {
		t.Errorf("the dropped frame in PCAP_LOG: %+v; want once, from %s, \"drop: no_match\"", dropped, switched[0].iface)
	}
	// The kernel's ARP request, from the kernel's port (afxdp, afpacket:
	// the host path's TAP; macvtap: the kernel's TAP), flooded.
	var fromKernel bool
	for _, s := range arp {
		fromKernel = fromKernel || (s.comment == "flood" && s.iface != switched[0].iface)
	}
	if !fromKernel {
		t.Errorf("the kernel's ARP request in PCAP_LOG: %+v; want one from the kernel's port, \"flood\"", arp)
	}
}
