package control

import (
	"strings"
	"testing"

	"github.com/usnetd/usnetd/control/wire"
)

// TestStatusMTU: an interface's MTU goes out as "mtu" when known, comes
// back as written, and an answer without it (an older usnetd) reads as 0.
func TestStatusMTU(t *testing.T) {
	st := wire.Status{Version: "v", Interfaces: []wire.InterfaceStatus{{Name: "eth0", Backend: "afxdp", Queues: 1, MTU: 9000}, {Name: "eth1", Backend: "afpacket", Queues: 1}}}
	b, err := wire.EncodeStatus(st)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"xdp_mode":"","mtu":9000}`) || strings.Count(string(b), `"mtu"`) != 1 {
		t.Fatalf("EncodeStatus: %s", b)
	}
	a, err := wire.DecodeAnswer(b)
	if err != nil {
		t.Fatal(err)
	}
	got := a.(wire.Status).Interfaces
	if len(got) != 2 || got[0].MTU != 9000 || got[1].MTU != 0 {
		t.Fatalf("decoded %+v", got)
	}
	if _, err := wire.DecodeAnswer([]byte(`{"QueryStatusAnswer":{"version":"v","interfaces":[{"name":"eth0","mtu":-1}],"endpoints":[],"rules":[]}}`)); err == nil {
		t.Fatal("a negative MTU decoded")
	}
}
