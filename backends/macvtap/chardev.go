package macvtap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The character device of a macvtap (see doc.go, "The character device").
//
// Its device number is in sysfs, /sys/class/net/NAME/macvtap/tapIFINDEX/dev,
// but sysfs shows the links of the network namespace that mounted it, not
// of the reading thread, so a process whose threads live in another
// namespace than its mount's /sys (a daemon started with setns, as the
// end-to-end tests and netlab's Start do) reads the wrong links there or
// none. And /dev/tapIFINDEX, made by devtmpfs (or udev) for every macvtap of
// every namespace, is named by an ifindex that is only unique within a
// namespace: two macvtaps with the same ifindex in two namespaces share the
// name, and the node is the first one's.
//
// So the device number is read from a sysfs mounted for the purpose, on a
// thread in the NIC's network namespace and a private mount namespace of
// its own; /dev/tapIFINDEX is opened if its number is that one, and
// otherwise a node is made in a tmpfs that only that thread sees. The
// thread is thrown away afterwards, and its mounts with it: nothing is
// left on the host. Where the process may not mount, the process's own
// /sys and /dev are used if they show the NIC's namespace.

// openCharDev opens queues queues of the macvtap name (ifindex idx) and
// returns their fds and how the device was found.
func openCharDev(name string, idx, queues int) ([]int, string, error) {
	netns, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("%w: own network namespace: %w", ErrNoDevice, err)
	}
	defer unix.Close(netns)
	type result struct {
		fds []int
		how string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread, with its private mounts, ends with
		// this goroutine.
		runtime.LockOSThread()
		var r result
		dir, err := privateMounts(netns)
		if err == nil {
			r.fds, r.how, r.err = openIn(filepath.Join(dir, "sys"), dir, name, idx, queues)
		} else {
			r.err = err
		}
		ch <- r
	}()
	r := <-ch
	if r.err == nil {
		return r.fds, r.how, nil
	}
	// No private mounts (no CAP_SYS_ADMIN?): the process's /sys and /dev,
	// if they are the namespace's.
	fds, how, err := openIn("/sys", "", name, idx, queues)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s: %w (with a private sysfs: %w)", ErrNoDevice, name, err, r.err)
	}
	return fds, how, nil
}

// privateMounts moves the calling thread (locked, and never to be
// reused) into network namespace netns and a private mount namespace, and
// mounts there a tmpfs on the temporary directory and a sysfs for netns
// inside it. It returns the tmpfs's path.
func privateMounts(netns int) (string, error) {
	if err := unix.Setns(netns, unix.CLONE_NEWNET); err != nil {
		return "", fmt.Errorf("setns: %w", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return "", fmt.Errorf("unshare(CLONE_NEWNS): %w", err)
	}
	// Nothing mounted here may propagate to the host's mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return "", fmt.Errorf("make / a slave mount: %w", err)
	}
	dir := os.TempDir()
	if err := unix.Mount("usnetd-macvtap", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0700,size=64k"); err != nil {
		return "", fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	sys := filepath.Join(dir, "sys")
	if err := os.Mkdir(sys, 0o700); err != nil {
		return "", err
	}
	if err := unix.Mount("sysfs", sys, "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, ""); err != nil {
		return "", fmt.Errorf("mount sysfs: %w", err)
	}
	return dir, nil
}

// openIn finds the device number of macvtap name in the sysfs at sys
// (after checking that sys shows the link with ifindex idx), and opens
// /dev/tapIDX if it is that device, else a node made in nodeDir ("" for
// none). Each queue is checked to belong to the macvtap name.
func openIn(sys, nodeDir, name string, idx, queues int) (fds []int, how string, err error) {
	base := filepath.Join(sys, "class/net", name)
	if got, err := readInt(filepath.Join(base, "ifindex")); err != nil {
		return nil, "", err
	} else if got != idx {
		return nil, "", fmt.Errorf("%s shows ifindex %d, not %d: another namespace's sysfs", base, got, idx)
	}
	dev, err := os.ReadFile(filepath.Join(base, "macvtap", "tap"+strconv.Itoa(idx), "dev"))
	if err != nil {
		return nil, "", err
	}
	devt, err := parseDevNumber(string(dev))
	if err != nil {
		return nil, "", err
	}
	path := "/dev/tap" + strconv.Itoa(idx)
	how = path
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != devt {
		if nodeDir == "" {
			return nil, "", fmt.Errorf("%s is missing or another device (%v) than %s's %d:%d", path, err, name, unix.Major(devt), unix.Minor(devt))
		}
		path = filepath.Join(nodeDir, "tap"+strconv.Itoa(idx))
		if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(devt)); err != nil {
			return nil, "", fmt.Errorf("mknod %s: %w", path, err)
		}
		how = fmt.Sprintf("private node %d:%d", unix.Major(devt), unix.Minor(devt))
	}
	defer func() {
		if err != nil {
			closeAll(fds)
			fds = nil
		}
	}()
	for q := range queues {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fds, "", fmt.Errorf("open %s (queue %d): %w", path, q, err)
		}
		fds = append(fds, fd)
		got, err := setTapQueueFlags(fd)
		if err != nil {
			return fds, "", fmt.Errorf("%s: %w", path, err)
		}
		if got != name {
			return fds, "", fmt.Errorf("%s belongs to %q, not %q", path, got, name)
		}
	}
	return fds, how, nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// parseDevNumber parses sysfs's "MAJOR:MINOR\n".
func parseDevNumber(s string) (uint64, error) {
	maj, min, ok := strings.Cut(strings.TrimSpace(s), ":")
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || errors.Join(err1, err2) != nil {
		return 0, fmt.Errorf("device number %q: want MAJOR:MINOR", s)
	}
	return unix.Mkdev(uint32(a), uint32(b)), nil
}
