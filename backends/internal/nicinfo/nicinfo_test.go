package nicinfo

import (
	"net"
	"testing"
)

// lo has no ethtool channels; its one RX queue comes from netlink.
func TestQueueCountLoopback(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	n, from := QueueCount(lo)
	if n != 1 || from != "netlink" {
		t.Fatalf("QueueCount(lo) = %d from %s, want 1 from netlink", n, from)
	}
}
