package daemon

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/afxdp"
	"github.com/usnetd/usnetd/firewall"
)

// BACKEND=auto falls back to afpacket on "no AF_XDP here", wrapped as
// openAFXDP wraps it, and on nothing else.
func TestAFXDPUnavailable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("AF_XDP: eth0: afxdp: socket(AF_XDP): %w: %w", afxdp.ErrNotSupported, unix.EAFNOSUPPORT), true},
		{fmt.Errorf("eBPF firewall: %w: to eth0: native mode: %w; generic mode: %w", firewall.ErrAttachXDP, unix.EBUSY, unix.EEXIST), true},
		{fmt.Errorf("AF_XDP: eth0: afxdp: bind queue 0 of ifindex 2: %w", unix.EOPNOTSUPP), true},
		{fmt.Errorf("eBPF firewall: %w: TCX ingress: %w", firewall.ErrAttach, unix.EINVAL), false},
		{fmt.Errorf("eBPF firewall: %w", firewall.ErrInUse), false},
		{fmt.Errorf("AF_XDP: %w: queue 0", afxdp.ErrQueueBusy), false},
		{errors.New("WORKERS=3, but eth0 has 1 queues"), false},
		{fmt.Errorf("eBPF firewall: %w: eth9", firewall.ErrInterface), false},
	} {
		if got := afxdpUnavailable(c.err); got != c.want {
			t.Errorf("afxdpUnavailable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
