package control

import (
	"strings"
	"testing"
)

// TestStatusMTU: an interface's MTU goes out as "mtu" when known, comes
// back as written, and an answer without it (an older usnetd) reads as 0.
func TestStatusMTU(t *testing.T) {
	st := Status{Version: "v", Interfaces: []InterfaceStatus{{Name: "eth0", Backend: "afxdp", Queues: 1, MTU: 9000}, {Name: "eth1", Backend: "afpacket", Queues: 1}}}
	b, err := EncodeStatus(st)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"xdp_mode":"","mtu":9000}`) || strings.Count(string(b), `"mtu"`) != 1 {
		t.Fatalf("EncodeStatus: %s", b)
	}
	a, err := DecodeAnswer(b)
	if err != nil {
		t.Fatal(err)
	}
	got := a.(Status).Interfaces
	if len(got) != 2 || got[0].MTU != 9000 || got[1].MTU != 0 {
		t.Fatalf("decoded %+v", got)
	}
	if _, err := DecodeAnswer([]byte(`{"QueryStatusAnswer":{"version":"v","interfaces":[{"name":"eth0","mtu":-1}],"endpoints":[],"rules":[]}}`)); err == nil {
		t.Fatal("a negative MTU decoded")
	}
}
