package firewall

import (
	"os"
	"path/filepath"
	"testing"

	l4 "github.com/usnetd/usnetd/switch"
)

// TestRelease: a released firewall stays attached and pinned, and keeps
// filtering (the allowed port open, another closed) with no process
// holding it; the next Attach takes its links over (no second copy, no
// moment unfiltered), and that one's Close leaves nothing. On both hooks.
func TestRelease(t *testing.T) {
	for _, hook := range []Hook{HookXDP, HookTC} {
		t.Run(string(hook), func(t *testing.T) {
			l := newLab(t)
			open := listen(t, l.host)
			closed := listen(t, l.host)
			dir := filepath.Join(DefaultPinRoot, l.ifname)
			t.Cleanup(func() { _ = os.RemoveAll(dir) }) // if the test fails between Release and the next Attach
			allow := []Allowed{{Key: l4.ListenKey(la(l.h4), l4.ProtoTCP, open), Sticky: true}}
			fw, err := l.tryAttach(t, Options{Hook: hook, Allow: allow})
			if err != nil {
				t.Fatal(err)
			}
			if err := fw.Release(); err != nil {
				t.Fatal(err)
			}
			if err := fw.Close(); err != nil {
				t.Errorf("Close after Release: %v", err)
			}
			if err := fw.AllowKernel(allow[0].Key, true); err == nil {
				t.Error("AllowKernel after Release succeeded")
			}
			inPin := pinXDPLink
			if hook == HookTC {
				inPin = pinTCIngressLink
			}
			for _, f := range []string{inPin, pinTCXLink, "kernel_rules", "kernel_learned"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Errorf("after Release: %v", err)
				}
			}
			// Nobody holds it, and it still filters.
			reachable(t, l.peer, l.p4, l.h4, open)
			unreachable(t, l.peer, l.p4, l.h4, closed)

			fw2 := l.attach(t, Options{Hook: hook, Allow: allow})
			l.checkAttached(t, fw2)
			reachable(t, l.peer, l.p4, l.h4, open)
			unreachable(t, l.peer, l.p4, l.h4, closed)
			if err := fw2.Close(); err != nil {
				t.Fatal(err)
			}
			l.checkDetached(t, dir)
			reachable(t, l.peer, l.p4, l.h4, closed)
		})
	}
}
