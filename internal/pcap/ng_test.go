package pcap

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

func TestNgWriterReadsBackWithPcapgo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcapng")
	w, err := CreateNg(path)
	if err != nil {
		t.Fatal(err)
	}
	nic, err := w.AddInterface("eth0 eth0/q0")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := w.AddInterface("eth0 endpoint 3 (pid 42)")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WritePacket(7, 0, frame(60), nil); err == nil {
		t.Fatal("a packet on an interface that was never added was written")
	}
	ts := time.Date(2026, 12, 3, 12, 0, 0, 123456789, time.UTC)
	long := bytes.Repeat([]byte("x"), 2000)
	type pkt struct {
		iface   uint32
		frame   []byte
		comment []byte
	}
	pkts := []pkt{
		{nic, frame(60), []byte("drop: no_match")},
		{ep, frame(1514), []byte("forward to eth0/q0")},
		{nic, frame(SnapLen + 10), nil},
		{ep, frame(61), []byte("odd")},
		{nic, frame(62), long},
	}
	for i, p := range pkts {
		if err := w.WritePacket(p.iface, ts.Add(time.Duration(i)*time.Microsecond).UnixNano(), p.frame, p.comment); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v", r.LinkType())
	}
	for i, p := range pkts {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if !ci.Timestamp.Equal(ts.Add(time.Duration(i) * time.Microsecond)) {
			t.Errorf("packet %d at %v", i, ci.Timestamp)
		}
		if ci.InterfaceIndex != int(p.iface) {
			t.Errorf("packet %d on interface %d, want %d", i, ci.InterfaceIndex, p.iface)
		}
		if ci.Length != len(p.frame) || !bytes.Equal(data, p.frame[:min(len(p.frame), SnapLen)]) {
			t.Errorf("packet %d: %d bytes (orig %d), want %d", i, len(data), ci.Length, len(p.frame))
		}
		want := p.comment[:min(len(p.comment), ngMaxComment)]
		switch {
		case len(want) == 0 && len(opts.Comments) != 0:
			t.Errorf("packet %d: comments %q, want none", i, opts.Comments)
		case len(want) > 0 && (len(opts.Comments) != 1 || opts.Comments[0] != string(want)):
			t.Errorf("packet %d: comments %q, want %q", i, opts.Comments, want)
		}
		if opts.Flags == nil || opts.Flags.Direction != pcapgo.NgEpbFlagDirectionInbound {
			t.Errorf("packet %d: flags %+v, want inbound", i, opts.Flags)
		}
	}
	if _, _, err := r.ReadPacketData(); err != io.EOF {
		t.Fatalf("after the last packet: %v", err)
	}
	for i, name := range []string{"eth0 eth0/q0", "eth0 endpoint 3 (pid 42)"} {
		in, err := r.Interface(i)
		if err != nil || in.Name != name || in.Resolution().ToDuration() != time.Nanosecond {
			t.Errorf("interface %d: %+v, %v; want %q, ns", i, in, err, name)
		}
	}
}

func TestNgWritePacketAllocatesNothing(t *testing.T) {
	w, err := CreateNg(filepath.Join(t.TempDir(), "x.pcapng"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	id, err := w.AddInterface("x")
	if err != nil {
		t.Fatal(err)
	}
	f, c := frame(100), []byte("drop: spoof")
	if n := testing.AllocsPerRun(1000, func() { _ = w.WritePacket(id, 1, f, c) }); n != 0 {
		t.Fatalf("%v allocations per packet", n)
	}
}
