// Package firewall holds usnetd's eBPF programs (C, compiled with bpf2go,
// generated files committed) and their loaders: the XDP classifier, the tc
// ingress and egress programs, the kernel-allow map, and the kernel's socket
// inventory. The rule table in Go is the one truth; the eBPF maps are its
// kernel-side copy for the kernel's rules.
//
// The socket inventory (sockinv.go) only reads /proc; it never touches a
// socket, and it never panics on what it reads.
package firewall
