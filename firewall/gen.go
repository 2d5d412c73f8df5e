package firewall

// The eBPF objects are compiled with Debian's clang 14 (apt-get install
// clang llvm libbpf-dev); the generated bpf_bpfel.go and bpf_bpfel.o are
// committed, and regenerating them gives the same bytes.
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type fw_key -type fw_value -type frag_key -type frag_verdict -type ep_port_key bpf bpf/firewall.c
