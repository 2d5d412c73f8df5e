package pcap

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/usnetd/usnetd/internal/netlab"
)

func frame(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	b[12], b[13] = 0x08, 0x00
	return b
}

func TestWriterReadsBackWithPcapgo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2026, 11, 26, 12, 0, 0, 123456789, time.UTC)
	frames := [][]byte{frame(60), frame(1514), frame(SnapLen + 10)}
	for i, f := range frames {
		if err := w.WritePacket(ts.Add(time.Duration(i)*time.Microsecond).UnixNano(), f); err != nil {
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
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet || r.Resolution().ToDuration() != time.Nanosecond {
		t.Fatalf("link type %v, resolution %v", r.LinkType(), r.Resolution())
	}
	for i, want := range frames {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if !ci.Timestamp.Equal(ts.Add(time.Duration(i) * time.Microsecond)) {
			t.Errorf("packet %d at %v", i, ci.Timestamp)
		}
		if ci.Length != len(want) || !bytes.Equal(data, want[:min(len(want), SnapLen)]) {
			t.Errorf("packet %d: %d bytes (orig %d), want %d", i, len(data), ci.Length, len(want))
		}
	}
	if _, _, err := r.ReadPacketData(); err != io.EOF {
		t.Fatalf("after the last packet: %v", err)
	}
}

// TestTcpdumpReadsIt runs the real tcpdump -r on a file, when CI installed it.
func TestTcpdumpReadsIt(t *testing.T) {
	bin := netlab.RequireTool(t, "tcpdump", "tcpdump")
	path := filepath.Join(t.TempDir(), "x.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := w.WritePacket(time.Now().UnixNano(), frame(60+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-n", "-r", path).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	if n := strings.Count(strings.TrimSpace(string(out)), "\n"); n < 2 || !strings.Contains(string(out), "reading from file") {
		t.Fatalf("tcpdump printed:\n%s", out)
	}
}

func TestCreateError(t *testing.T) {
	if _, err := Create(filepath.Join(t.TempDir(), "no", "such", "dir.pcap")); err == nil || !strings.Contains(err.Error(), "PCAP_LOG") {
		t.Fatalf("err = %v", err)
	}
}

// BenchmarkWriter compares this writer with gopacket's pcapgo writer on
// 64-byte frames, both to /dev/null so that the disk does not hide the
// CPU cost (on a real disk both are I/O-bound).
func BenchmarkWriter(b *testing.B) {
	f64 := frame(64)
	b.Run("own", func(b *testing.B) {
		w, err := Create(os.DevNull)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for i := range b.N {
			if err := w.WritePacket(int64(i), f64); err != nil {
				b.Fatal(err)
			}
		}
		w.Close()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
	})
	b.Run("pcapgo", func(b *testing.B) {
		f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		bw := bufioWriter(f)
		w := pcapgo.NewWriterNanos(bw)
		if err := w.WriteFileHeader(SnapLen, layers.LinkTypeEthernet); err != nil {
			b.Fatal(err)
		}
		ci := gopacketCI(64)
		b.ReportAllocs()
		for i := range b.N {
			ci.Timestamp = time.Unix(0, int64(i))
			if err := w.WritePacket(ci, f64); err != nil {
				b.Fatal(err)
			}
		}
		bw.Flush()
		f.Close()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
	})
	// pcapng with PCAP_LOG's interface and verdict comment per frame.
	comment := []byte("forward to endpoint 3 (pid 4242)")
	b.Run("ng", func(b *testing.B) {
		w, err := CreateNg(os.DevNull)
		if err != nil {
			b.Fatal(err)
		}
		id, err := w.AddInterface("eth0: eth0")
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for i := range b.N {
			if err := w.WritePacket(id, int64(i), f64, comment); err != nil {
				b.Fatal(err)
			}
		}
		w.Close()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
	})
}
