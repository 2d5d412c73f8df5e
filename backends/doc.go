// Package backends holds one subpackage per way to move frames in and out of
// usnetd: afxdp, afpacket, macvtap (with its tap for the kernel, and
// OpenHostTAP, the kernel's TAP of afxdp's and afpacket's host path), uds and
// shm (the endpoint channels: Unix datagram sockets, shared-memory rings),
// memory (an in-process port for tests and benchmarks) and neightap (the
// neighbour tap the afxdp NIC port gets as its last queue). Each is a
// switch port.
//
// A backend moves frames and owns its device; it never decides where a frame
// goes. That is the l4 package's job.
package backends
