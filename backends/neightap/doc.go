// Package neightap adds the neighbour tap to a NIC port: one more receive
// queue that carries copies of the ARP and IPv6 neighbour-discovery frames
// arriving on the NIC, read from an AF_PACKET socket with a classic BPF
// filter. The AF_XDP backend needs it because its XDP classifier passes
// those frames to the kernel (XDP cannot clone a frame), so the AF_XDP
// sockets never see them; the switch floods what the tap reads to the
// endpoints as frames from the NIC. The tap waits in Go's netpoller and
// never decides where a frame goes.
package neightap
