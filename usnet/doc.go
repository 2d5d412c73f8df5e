// Package usnet gives Go programs net.Listener, net.Conn and net.PacketConn
// on a gVisor userspace network stack attached through usnetd, sharing the
// NIC's IP with the kernel: what usnet_sockets is for Rust.
package usnet
