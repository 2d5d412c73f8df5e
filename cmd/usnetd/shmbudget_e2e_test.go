package main

import (
	"strings"
	"testing"

	"github.com/usnetd/usnetd/control/client"
)

// TestE2ESHMMemoryLimit: usnetd gives the shared-memory channels a quarter
// of MEMORY_LIMIT. At 32 MiB (8 MiB: three channels of about 2 MiB), the
// fourth client's RequestSHM is refused and counted, and RequestChannel
// falls back to a datagram channel beside the three on shared memory.
func TestE2ESHMMemoryLimit(t *testing.T) {
	l := newE2ELab(t, 1)
	u := l.Start("MEMORY_LIMIT=32MiB")
	defer u.Stop(t)
	var kinds []string
	for range 4 {
		c, err := client.Dial(client.Options{SocketPath: l.Sock, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ch, err := c.RequestChannel(l.Ifname)
		if err != nil {
			t.Fatalf("RequestChannel: %v\n%s", err, u.LogText())
		}
		defer ch.Close()
		kinds = append(kinds, ch.Kind())
	}
	if got := strings.Join(kinds, ","); got != "shm,shm,shm,uds" {
		t.Errorf("channels %s, want shm,shm,shm,uds", got)
	}
	l.waitMetric(t, `usnetd_control_refused_total{reason="shm_memory"}`, 1)
}
