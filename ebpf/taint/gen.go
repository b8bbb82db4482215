package taint

// The BPF object (taint_x86_bpfel.o) and its Go bindings
// (taint_x86_bpfel.go) are generated and committed, so building needs no
// clang. To regenerate after changing bpf/taint.bpf.c or bpf/vmlinux.h
// (Debian: apt-get install clang llvm libbpf-dev):
//
//	go generate ./ebpf/taint
//
// bpf/vmlinux.h is a hand-trimmed header (CO-RE, preserve_access_index);
// `bpftool btf dump file /sys/kernel/btf/vmlinux format c` (apt-get install
// bpftool) shows the full kernel types when a new field is needed.

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target amd64 -type event -type taint -type mark_key -type lpm_key -type mark taint bpf/taint.bpf.c -- -I./bpf
