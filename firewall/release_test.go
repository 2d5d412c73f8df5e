package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/internal/netlab"

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

// Where /sys/fs/bpf is no bpffs and the process may not mount one (no
// CAP_SYS_ADMIN, as under usnetd's systemd unit), Attach fails with an
// error that says what to do. The test runs on a thread of its own, in a
// private mount namespace with a tmpfs over /sys/fs/bpf, and takes
// CAP_SYS_ADMIN out of that thread's effective set.
func TestAttachBPFFSNotPermitted(t *testing.T) {
	l := newLab(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return err
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return err
			}
			if err := unix.Mount("tmpfs", bpffsMount, "tmpfs", 0, "size=1m"); err != nil {
				return err
			}
			f, err := os.Open(l.host.Path())
			if err != nil {
				return err
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				return err
			}
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			var data [2]unix.CapUserData
			if err := unix.Capget(&hdr, &data[0]); err != nil {
				return err
			}
			data[unix.CAP_SYS_ADMIN/32].Effective &^= 1 << (unix.CAP_SYS_ADMIN % 32)
			if err := unix.Capset(&hdr, &data[0]); err != nil {
				return err
			}
			fw, err := Attach(Options{Interface: l.ifname, Log: testLogger(t)})
			if err == nil {
				fw.Close()
				return errors.New("Attach succeeded without a bpffs and without CAP_SYS_ADMIN")
			}
			if !errors.Is(err, ErrNotBPFFS) || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "mount -t bpf bpf /sys/fs/bpf") {
				return fmt.Errorf("Attach: %v, want ErrNotBPFFS with EPERM and what to do", err)
			}
			t.Log(err)
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	l.checkDetached(t, filepath.Join(DefaultPinRoot, l.ifname))
}

// recreate deletes the host's veth end (and so the pair) and makes it
// again with the same names and IPv4 addresses, as a driver reload or a
// restarted container would.
func (l *fwLab) recreate(t *testing.T) {
	t.Helper()
	lk, err := l.host.Link(l.ifname)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.host.Do(func() error { return netlink.LinkDel(lk) }); err != nil {
		t.Fatal(err)
	}
	v, err := l.lab.Veth(l.host, l.ifname, l.peer, "eth0", netlab.VethOpts{Up: true})
	if err != nil {
		t.Fatal(err)
	}
	l.hostMAC, l.peerIndex = v.A.MAC, v.B.Index
	for _, a := range []struct {
		ns   *netlab.NS
		link string
		addr netip.Addr
	}{{l.host, l.ifname, l.h4}, {l.peer, "eth0", l.p4}, {l.peer, "eth0", l.o4}} {
		if err := a.ns.AddAddr(a.link, netip.PrefixFrom(a.addr, 24)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReattach: after the interface is deleted and made again under its
// name, Reattach puts the loaded programs on the new one (no new load),
// with the maps as they were: the allowed port is open, another closed;
// Close then leaves nothing. On both hooks.
func TestReattach(t *testing.T) {
	for _, hook := range []Hook{HookXDP, HookTC} {
		t.Run(string(hook), func(t *testing.T) {
			l := newLab(t)
			open := listen(t, l.host)
			closed := listen(t, l.host)
			fw := l.attach(t, Options{Hook: hook, Allow: []Allowed{{Key: l4.ListenKey(la(l.h4), l4.ProtoTCP, open), Sticky: true}}})
			old := fw.Ifindex()
			l.recreate(t)
			// Unfiltered until Reattach: the new interface has no program.
			reachable(t, l.peer, l.p4, l.h4, closed)
			if err := l.host.Do(fw.Reattach); err != nil {
				t.Fatal(err)
			}
			if fw.Ifindex() == old {
				t.Errorf("ifindex %d after Reattach, the old interface's", old)
			}
			l.checkAttached(t, fw)
			reachable(t, l.peer, l.p4, l.h4, open)
			unreachable(t, l.peer, l.p4, l.h4, closed)
			if err := l.host.Do(fw.Reattach); err != nil {
				t.Errorf("Reattach on the same interface: %v", err)
			}
			l.checkAttached(t, fw)
			if err := fw.Close(); err != nil {
				t.Fatal(err)
			}
			l.checkDetached(t, filepath.Join(DefaultPinRoot, l.ifname))
			reachable(t, l.peer, l.p4, l.h4, closed)
		})
	}
}
