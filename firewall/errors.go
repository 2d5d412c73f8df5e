package firewall

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors returned by this package wrap one of these, or
// the kernel's errno (a unix.Errno such as unix.EBUSY or unix.EPERM) or a
// cilium/ebpf sentinel (ebpf.ErrKeyNotExist, ebpf.ErrMapIncompatible), with
// %w, so errors.Is works on all of them.
var (
	// ErrInterface: the interface does not exist in the caller's network
	// namespace, or it is not an Ethernet interface.
	ErrInterface = errors.New("firewall: unusable interface")
	// ErrNotBPFFS: the pin directory is not on a bpf filesystem and none
	// could be mounted at /sys/fs/bpf.
	ErrNotBPFFS = errors.New("firewall: not a bpf filesystem")
	// ErrInUse: another live Firewall, in this or another process, holds
	// the interface's pin directory.
	ErrInUse = errors.New("firewall: interface is in use by another firewall")
	// ErrLoad: the eBPF objects could not be loaded (the verifier's log is
	// in the wrapped error; print it with %+v).
	ErrLoad = errors.New("firewall: loading eBPF objects")
	// ErrAttach: a program could not be attached to the interface.
	ErrAttach = errors.New("firewall: attaching")
	// ErrAttachXDP: the XDP program could not be attached (the driver
	// refused native and generic mode, or another program holds the
	// interface's XDP hook). It wraps ErrAttach; a caller may fall back
	// to HookTC.
	ErrAttachXDP = fmt.Errorf("%w XDP", ErrAttach)
	// ErrInvalidKey: a key that the kernel-side lookup can never match
	// (see l4.Key.Validate).
	ErrInvalidKey = errors.New("firewall: invalid key")
	// ErrClosed: the Firewall was closed.
	ErrClosed = errors.New("firewall: closed")
)
