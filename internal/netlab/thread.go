package netlab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces live, as with `ip netns add`:
// each one is an nsfs bind mount on an empty file of its name.
const NetnsDir = "/run/netns"

// inNetns runs fn on the calling goroutine with its OS thread switched into
// the network namespace target, then switches the thread back.
//
// Only the network namespace of this one thread changes. The goroutine stays
// locked to the thread for the duration of fn. If the thread cannot be put
// back into its original namespace, it stays locked: the goroutine keeps
// running in the wrong namespace until it exits, and then the runtime
// terminates the thread instead of reusing it (see runtime.LockOSThread).
// The returned error says so.
func inNetns(target netns.NsHandle, fn func() error) (err error) {
	runtime.LockOSThread()
	origin, err := netns.Get() // this thread's namespace: /proc/PID/task/TID/ns/net
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: open current network namespace: %w", err)
	}
	defer origin.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: enter network namespace: %w", err)
	}
	defer func() {
		if rerr := netns.Set(origin); rerr != nil {
			// Leave the thread locked: Go discards it when the goroutine exits.
			err = errors.Join(err, fmt.Errorf("netlab: restore network namespace of thread (thread left locked): %w", rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// createNamed creates a new network namespace bound at NetnsDir/name, as
// `ip netns add name` does, and returns an open handle to it. The calling
// goroutine's thread is not moved: the work happens on a thread of its own,
// which is restored afterwards (or discarded, if that fails).
func createNamed(name string) (netns.NsHandle, error) {
	if err := ensureNetnsDir(); err != nil {
		return netns.None(), err
	}
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{netns.None(), fmt.Errorf("netlab: open current network namespace: %w", err)}
			return
		}
		defer origin.Close()
		// netns.NewNamed unshares this thread into a new namespace and bind
		// mounts it; on failure after the unshare it leaves the thread there.
		h, err := netns.NewNamed(name)
		if rerr := netns.Set(origin); rerr != nil {
			// Stay locked: the thread ends with this goroutine.
			if h.IsOpen() {
				h.Close()
			}
			_ = deleteNamed(name)
			ch <- result{netns.None(), fmt.Errorf("netlab: restore network namespace of thread: %w", rerr)}
			return
		}
		runtime.UnlockOSThread()
		if err != nil {
			// NewNamed leaves the file behind when the mount fails.
			if !errors.Is(err, os.ErrExist) {
				_ = deleteNamed(name)
			}
			ch <- result{netns.None(), fmt.Errorf("netlab: create network namespace %s: %w", name, err)}
			return
		}
		ch <- result{h, nil}
	}()
	r := <-ch
	return r.h, r.err
}

// deleteNamed removes a named namespace: unmounts its bind mount and removes
// the file. A file that is not (or no longer) a mount point, as left after
// a reboot where /run is not a tmpfs, is removed as well. A missing file is
// not an error.
func deleteNamed(name string) error {
	p := filepath.Join(NetnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("netlab: unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netlab: %w", err)
	}
	return nil
}

// ensureNetnsDir creates NetnsDir and makes it a shared mount point (a bind
// mount onto itself), as `ip netns add` does.
//
// The kernel detaches a namespace's mounts in other mount namespaces when
// its file is unlinked (since Linux 3.18), so the self-bind is not needed
// for that. It is needed for peace with iproute2: the first `ip netns add`
// on a host whose NetnsDir is no mount point bind-mounts NetnsDir onto
// itself, which hides every namespace mounted under it before, so that they
// can no longer be unmounted by path, and their labs could not be removed.
// Doing the same first, under a host-wide lock, leaves iproute2 nothing to
// do.
func ensureNetnsDir() error {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(LockDir, ".netns-dir.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("netlab: lock: %w", err)
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	err = unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == unix.EINVAL { // not a mount point yet
		if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("netlab: bind %s: %w", NetnsDir, err)
		}
		err = unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("netlab: make %s shared: %w", NetnsDir, err)
	}
	return nil
}
