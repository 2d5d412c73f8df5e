package daemon

import (
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	l4 "github.com/usnetd/usnetd/switch"
)

// fakeNIC is a nicBackend that only describes itself.
type fakeNIC struct{ nicBackend }

func (fakeNIC) Describe() string { return "fake (1 queue)" }

func TestBufSizeFor(t *testing.T) {
	for _, c := range []struct{ mtu, want int }{
		{1500, l4.DefaultBufSize}, // 1,518-byte frames: the 2 KiB that 1,500 always had
		{2030, l4.DefaultBufSize}, // 2,048 exactly
		{2031, 2048 + 64},
		{9000, 9024}, // 9,018 rounded up to a cache line
		{65535, 65600},
	} {
		if got := bufSizeFor(c.mtu); got != c.want || got < frameBytes(c.mtu) || got%64 != 0 {
			t.Errorf("bufSizeFor(%d) = %d, want %d", c.mtu, got, c.want)
		}
	}
}

// TestMTUChanged: an MTU whose frames fit what the claim set up is taken
// (QueryStatus reports it); a larger one is refused with an error naming
// the MTU and the limit, and the old MTU stays.
func TestMTUChanged(t *testing.T) {
	dom := &domain{ifname: "eth0", nic: fakeNIC{}, maxMTU: 9006}
	dom.mtu.Store(9000)
	d := &daemon{log: zerolog.Nop(), domains: []*domain{dom}}
	if err := d.MTUChanged("eth0", 1500); err != nil || dom.currentMTU() != 1500 {
		t.Fatalf("MTU 1500 after 9000: %v, now %d", err, dom.currentMTU())
	}
	err := d.MTUChanged("eth0", 9216)
	if !errors.Is(err, ErrMTU) || dom.currentMTU() != 1500 {
		t.Fatalf("MTU 9216: %v, now %d", err, dom.currentMTU())
	}
	for _, want := range []string{"MTU 9216", "9234 bytes", "9024-byte frames (MTU 9006)", "fake (1 queue)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := d.MTUChanged("eth0", 40); err == nil {
		t.Error("MTU 40 taken")
	}
	if err := d.MTUChanged("eth1", 1500); err == nil {
		t.Error("an interface that was never claimed took an MTU")
	}
}
