package netlab

import (
	"context"
	"errors"
	"net"
	"os/exec"
)

// Command returns a command that runs name with args inside the namespace,
// through `ip netns exec NS name args...` (iproute2). As with
// exec.CommandContext, the process is killed when ctx is done; it is also
// killed when the lab is closed.
//
// `ip netns exec` gives the program a mount namespace of its own with a
// fresh /sys, so that /sys/class/net shows the namespace's links; the price
// is that /sys/fs/bpf is an empty directory there, not a bpffs. Tools such
// as ping, curl, iperf3, tcpdump, ethtool or ip itself want exactly that. A
// program that pins BPF objects wants Start instead.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ns.lab.ctx, cancel)
	context.AfterFunc(ctx, func() { stop() }) // forget the lab once ctx is done
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.name, name}, args...)...)
}

// Start starts cmd (made by exec.Command or exec.CommandContext, not yet
// started) with its network namespace set to ns, and nothing else changed:
// it keeps the caller's mount namespace, so /sys/fs/bpf is the host's bpffs,
// and /sys/class/net shows the root namespace's links, not ns's. It does so
// by starting cmd from a thread inside ns (fork inherits the thread's
// namespace). The caller waits for cmd as usual; a process still running at
// Close keeps the namespace alive, unnamed, until it exits.
func (ns *NS) Start(cmd *exec.Cmd) error {
	if cmd.Process != nil {
		return errors.New("netlab: Start: command already started")
	}
	return ns.Do(cmd.Start)
}

// Listen opens a listener inside the namespace, as net.Listen; it stays in
// the namespace and may be used from anywhere.
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the namespace, as
// net.ListenPacket.
func (ns *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// Dial connects from inside the namespace, as net.Dialer.DialContext. Use
// literal addresses: name resolution may run on other threads, outside the
// namespace.
func (ns *NS) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
