/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Trimmed vmlinux.h for the symvirt taint tracker.
 *
 * Only the kernel types and fields taint.bpf.c reads are declared. Every
 * struct carries preserve_access_index, so clang emits CO-RE relocations
 * and the loader (cilium/ebpf) fixes the offsets against the running
 * kernel's BTF (/sys/kernel/btf/vmlinux): field order and padding here do
 * not matter, only names and integer sizes do. Fields that live in
 * anonymous unions/structs in the real kernel (skc_daddr, pt_regs.cs, ...)
 * are declared directly; CO-RE matching looks through anonymous members.
 *
 * Checked against the BTF of Linux 6.1 (Debian cloud kernel) and 6.18.
 * Regenerate a full header with
 *   bpftool btf dump file /sys/kernel/btf/vmlinux format c
 * if you need more types.
 */
#ifndef __SYMVIRT_VMLINUX_H__
#define __SYMVIRT_VMLINUX_H__

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u8 u8;
typedef __s8 s8;
typedef __u16 u16;
typedef __s16 s16;
typedef __u32 u32;
typedef __s32 s32;
typedef __u64 u64;
typedef __s64 s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u32 __wsum;
typedef __u16 __sum16;
typedef _Bool bool;
enum { false = 0, true = 1 };
typedef unsigned short umode_t;
typedef int pid_t;

/* UAPI bits from linux/bpf.h that bpf_helpers.h and the maps use. */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_LPM_TRIE = 11,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
	BPF_F_LOCK = 4,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	int counter;
} atomic_t;

struct pt_regs {
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
	u16 cs; /* unsigned long in 6.1, union member in >= 6.9 */
};

struct signal_struct {
	atomic_t live;
};

struct file;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	unsigned int flags;
	pid_t pid;
	pid_t tgid;
	char comm[16];
	struct files_struct *files;
	struct signal_struct *signal;
};

struct inode {
	umode_t i_mode;
	unsigned long i_ino;
};

struct file {
	void *private_data;
	struct inode *f_inode;
};

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be16 u6_addr16[8];
		__be32 u6_addr32[4];
	} in6_u;
};

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	u16 sk_protocol;
	u16 sk_type;
};

struct socket {
	short type;
	struct sock *sk;
};

struct sk_buff {
	struct sock *sk;
};

#pragma clang attribute pop

#endif /* __SYMVIRT_VMLINUX_H__ */
