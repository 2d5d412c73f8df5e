package firewall

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// bpffsMount is where bpffs is mounted on a standard Linux system.
const bpffsMount = "/sys/fs/bpf"

// isBPFFS reports whether path lies on a bpf filesystem.
func isBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

// ensureBPFFS makes sure root is (or will be, once created) on a bpf
// filesystem. Where root lies under /sys/fs/bpf and that is not a bpffs
// (inside `ip netns exec`, /sys is a fresh sysfs of a private mount
// namespace), it mounts one at /sys/fs/bpf, as the cilium agent does. The
// mount is visible in the caller's mount namespace only.
func ensureBPFFS(root string, log zerolog.Logger) error {
	p := root
	for {
		if _, err := os.Stat(p); err == nil {
			break
		}
		parent := filepath.Dir(p)
		if parent == p {
			break
		}
		p = parent
	}
	ok, err := isBPFFS(p)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotBPFFS, p, err)
	}
	if ok {
		return nil
	}
	if root != bpffsMount && !strings.HasPrefix(root, bpffsMount+"/") {
		return fmt.Errorf("%w: %s (pin root %s)", ErrNotBPFFS, p, root)
	}
	if err := os.MkdirAll(bpffsMount, 0o700); err != nil {
		return fmt.Errorf("%w: %w", ErrNotBPFFS, err)
	}
	if err := unix.Mount("bpf", bpffsMount, "bpf", 0, "mode=0700"); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w at %s, and this process may not mount one (no CAP_SYS_ADMIN, as under usnetd's systemd unit): "+
				"mount it before usnetd starts (`mount -t bpf bpf %s`; systemd does at boot), or run usnetd with CAP_SYS_ADMIN: %w",
				ErrNotBPFFS, bpffsMount, bpffsMount, err)
		}
		return fmt.Errorf("%w: mounting bpffs at %s: %w", ErrNotBPFFS, bpffsMount, err)
	}
	if ok, err := isBPFFS(bpffsMount); err != nil || !ok {
		return fmt.Errorf("%w: %s after mounting one there (%v)", ErrNotBPFFS, bpffsMount, err)
	}
	log.Info().Str("path", bpffsMount).Msg("firewall: mounted a bpf filesystem")
	return nil
}

// lockDir creates dir and takes an exclusive flock on it, held as long as
// the returned file is open (so also released when the process dies).
//
// A Close of another Firewall may remove dir (and an empty PinRoot) at any
// moment: mkdir then meets ENOENT, or the lock is won on a directory that
// is no longer at its path. Both are retried.
func lockDir(dir string) (*os.File, error) {
	var err error
	for range 8 {
		var f *os.File
		f, err = tryLockDir(dir)
		if f != nil || err != nil {
			return f, err
		}
	}
	return nil, fmt.Errorf("firewall: %s keeps disappearing under a concurrent Close", dir)
}

// tryLockDir returns nil, nil when dir was removed while it locked it.
func tryLockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("firewall: pin directory: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("firewall: pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked: %w", ErrInUse, dir, err)
		}
		return nil, fmt.Errorf("firewall: locking %s: %w", dir, err)
	}
	held, err1 := f.Stat()
	now, err2 := os.Stat(dir)
	if err1 != nil || err2 != nil || !os.SameFile(held, now) {
		f.Close()
		return nil, nil
	}
	return f, nil
}
