package firewall

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// Bad input is an error that says what is wrong, never a crash, and the
// errors wrap sentinels and errnos.
func TestAttachErrors(t *testing.T) {
	l := newLab(t)
	lo := l4.ListenKey(la(l.h4), l4.ProtoTCP, 22)
	bad := l4.Key{Local: la(l.h4), Proto: l4.ProtoTCP} // no port
	cases := []struct {
		name string
		opts Options
		want error
	}{
		{"no interface", Options{Interface: "", Ifindex: -1}, ErrInterface},
		{"unknown interface", Options{Interface: "nosuch0"}, ErrInterface},
		{"unknown ifindex", Options{Ifindex: 9999}, ErrInterface},
		{"name and index disagree", Options{Interface: l.ifname, Ifindex: 1}, ErrInterface},
		{"loopback", Options{Interface: "lo"}, ErrInterface},
		{"invalid key", Options{Allow: []Allowed{{Key: lo}, {Key: bad}}}, ErrInvalidKey},
		{"pin root not on bpffs", Options{PinRoot: t.TempDir()}, ErrNotBPFFS},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.opts.Interface == "" && c.opts.Ifindex == 0 {
				c.opts.Interface = l.ifname
			}
			if c.opts.Ifindex < 0 {
				c.opts.Ifindex = 0
			}
			var err error
			_ = l.host.Do(func() error {
				_, err = Attach(c.opts)
				return nil
			})
			if !errors.Is(err, c.want) {
				t.Fatalf("Attach: %v, want %v", err, c.want)
			}
			t.Log(err)
		})
	}
	if _, err := l.tryAttach(t, Options{XDPMode: "turbo"}); err == nil {
		t.Error("XDP mode turbo accepted")
	}
	if _, err := l.tryAttach(t, Options{Hook: "nf"}); err == nil {
		t.Error("hook nf accepted")
	}
	if _, err := l.tryAttach(t, Options{Hook: HookTC, XDPMode: ModeNative}); err == nil {
		t.Error("an XDP mode with the TC hook accepted")
	}
	if _, err := os.Stat(filepath.Join(DefaultPinRoot, l.ifname)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Attach left its directory: %v", err)
	}

	// A program attached by other means (here: netlink, no bpf_link) is
	// not replaced: EBUSY, through the wrapping.
	objs := loadObjects(t, false)
	lk, err := l.host.Link(l.ifname)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.host.Do(func() error {
		return netlink.LinkSetXdpFdWithFlags(lk, objs.UsnetdXdp.FD(), 1<<2 /* XDP_FLAGS_DRV_MODE */)
	}); err != nil {
		t.Fatal(err)
	}
	_, err = l.tryAttach(t, Options{XDPMode: ModeNative})
	if !errors.Is(err, ErrAttach) || !errors.Is(err, ErrAttachXDP) || !errors.Is(err, unix.EBUSY) {
		t.Errorf("Attach over a netlink XDP program: %v, want ErrAttachXDP, ErrAttach and EBUSY", err)
	}
	// Nor in the default mode, which tries generic after native (the
	// kernel refuses a generic program next to a native one).
	if _, err = l.tryAttach(t, Options{}); !errors.Is(err, ErrAttachXDP) {
		t.Errorf("Attach over a netlink XDP program: %v, want ErrAttachXDP", err)
	}
	// The TC hook does not mind it.
	if fw, err := l.tryAttach(t, Options{Hook: HookTC}); err != nil {
		t.Errorf("Attach with the TC hook over a netlink XDP program: %v", err)
	} else if err := fw.Close(); err != nil {
		t.Error(err)
	}
	if err := l.host.Do(func() error { return netlink.LinkSetXdpFdWithFlags(lk, -1, 1<<2) }); err != nil {
		t.Fatal(err)
	}

	// Methods of a live and of a closed Firewall.
	fw := l.attach(t, Options{})
	if err := fw.AllowKernel(bad, false); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("AllowKernel(%v): %v, want ErrInvalidKey", bad, err)
	}
	if err := fw.RevokeKernel(lo); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("RevokeKernel of an absent key: %v", err)
	}
	if fw.XSKMap().Type() != ebpf.XSKMap {
		t.Errorf("XSKMap is a %v", fw.XSKMap().Type())
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := fw.AllowKernel(lo, true); !errors.Is(err, ErrClosed) {
		t.Errorf("AllowKernel after Close: %v", err)
	}
	if _, err := fw.KernelEntries(); !errors.Is(err, ErrClosed) {
		t.Errorf("KernelEntries after Close: %v", err)
	}
	if _, err := fw.Counters(); !errors.Is(err, ErrClosed) {
		t.Errorf("Counters after Close: %v", err)
	}
	if _, err := fw.ExpireLearned(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("ExpireLearned after Close: %v", err)
	}
	l.checkDetached(t, filepath.Join(DefaultPinRoot, l.ifname))
}

// NO_HOST_RINGS: the kernel gets nothing, not even ARP or an allowed port,
// and no learner is attached; on both hooks.
func TestNoHostRings(t *testing.T) {
	for _, hook := range []Hook{HookXDP, HookTC} {
		t.Run(string(hook), func(t *testing.T) {
			l := newLab(t)
			port := listen(t, l.host)
			fw := l.attach(t, Options{Hook: hook, NoHostRings: true, Allow: []Allowed{{Key: l4.ListenKey(la(l.h4), l4.ProtoTCP, port), Sticky: true}}})
			unreachable(t, l.peer, l.p4, l.h4, port)
			dropped := "dropped_no_xsk"
			if hook == HookTC {
				dropped = "tc_dropped"
			}
			c := counters(t, fw)
			if c["pass_kernel"] != 0 || c["no_host_rings"] == 0 || c["no_host_rings"] != c[dropped] {
				t.Errorf("counters %v", c)
			}
			// The egress program stays: the kernel may still not send
			// from an endpoint's flow.
			if p := l.tcxEgress(t); len(p) != 1 {
				t.Errorf("TCX egress programs %v with NoHostRings, want the egress program", p)
			}
		})
	}
}

// Inside `ip netns exec`, /sys/fs/bpf is no bpffs; Attach mounts one. The
// test makes such a mount namespace on a thread of its own, which it never
// gives back to the Go runtime.
func TestAttachMountsBPFFS(t *testing.T) {
	l := newLab(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return err
			}
			// Nothing done here may reach the host's mounts.
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return err
			}
			if err := unix.Mount("tmpfs", bpffsMount, "tmpfs", 0, "size=1m"); err != nil {
				return err
			}
			if ok, err := isBPFFS(bpffsMount); err != nil || ok {
				t.Errorf("the tmpfs over %s is a bpffs? %v %v", bpffsMount, ok, err)
			}
			f, err := os.Open(l.host.Path())
			if err != nil {
				return err
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				return err
			}
			fw, err := Attach(Options{Interface: l.ifname, Log: testLogger(t)})
			if err != nil {
				return err
			}
			if ok, err := isBPFFS(bpffsMount); err != nil || !ok {
				t.Errorf("after Attach, %s is no bpffs: %v %v", bpffsMount, ok, err)
			}
			if _, err := os.Stat(filepath.Join(fw.PinDir(), pinXDPLink)); err != nil {
				t.Errorf("pins: %v", err)
			}
			return fw.Close()
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if ok, err := isBPFFS(bpffsMount); err != nil || !ok {
		t.Errorf("the host's %s changed: %v %v", bpffsMount, ok, err)
	}
	l.checkDetached(t, filepath.Join(DefaultPinRoot, l.ifname))
}
