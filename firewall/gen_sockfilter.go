package firewall

// The AF_PACKET backend's socket filter (bpf/sockfilter.c), compiled as
// the classifier is (see gen.go).
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" sockfilter bpf/sockfilter.c
