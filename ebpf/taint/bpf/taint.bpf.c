//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/*
 * symvirt taint tracker: marks the processes (thread groups) of this kernel
 * that exchange data with a peer outside the machine, directly or through
 * local IPC with a process that does. See ../doc.go for the model and its
 * limits.
 *
 * Only raw tracepoints are used (BPF_PROG_TYPE_RAW_TRACEPOINT, Linux 4.17+):
 * they need neither kprobes (CONFIG_KPROBES is off on some kernels we run
 * on), nor tracefs, nor BPF trampolines (fentry/fexit/LSM). Helpers: map
 * ops, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_comm,
 * bpf_probe_read_{kernel,user}[_str], bpf_ktime_get_boot_ns (5.8) and the
 * ring buffer (5.8). Struct fields are read with CO-RE against the kernel's
 * BTF.
 *
 * The syscall numbers are x86_64's.
 */

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10

#define SOCK_STREAM 1
#define SOCK_DGRAM 2

#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_UDPLITE 136

#define S_IFMT 0170000
#define S_IFSOCK 0140000
#define S_IFIFO 0010000

#define PF_KTHREAD 0x00200000

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

#define E2BIG 7

#define USER32_CS 0x23

/* x86_64 syscall numbers. */
#define NR_read 0
#define NR_write 1
#define NR_readv 19
#define NR_writev 20
#define NR_sendfile 40
#define NR_socket 41
#define NR_accept 43
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_socketpair 53
#define NR_splice 275
#define NR_tee 276
#define NR_vmsplice 278
#define NR_accept4 288
#define NR_recvmmsg 299
#define NR_sendmmsg 307
#define NR_preadv2 327
#define NR_pwritev2 328

/* Why a process is tainted (struct taint.kind); mirrored in kinds.go. */
enum taint_kind {
	KIND_CONNECT = 1, /* TCP connect to an outside peer */
	KIND_ACCEPT = 2,  /* TCP accept from an outside peer */
	KIND_UDP = 3,     /* UDP datagram to or from an outside peer */
	KIND_TCP = 4,     /* data on an outside TCP connection it did not open */
	KIND_INHERIT = 5, /* forked by a tainted process */
	KIND_IPC = 6,     /* read data a tainted process wrote (see channel) */
	KIND_EXISTING = 7, /* user space only: connection found when starting */
};

/* Which local channel carried an ipc taint (struct taint.channel). */
enum channel {
	CH_NONE = 0,
	CH_UNIX = 1,
	CH_PIPE = 2,
	CH_LOOPBACK = 3, /* TCP between two sockets of this machine */
};

enum event_type {
	EV_TAINT = 1,
	EV_EXIT = 2,
};

enum stat_index {
	STAT_LOST = 0, /* ring buffer full: an event was dropped */
	STAT_FULL = 1, /* taints map full: a taint was not recorded */
	STAT_MAX = 2,
};

/* An address: IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), network order. */
union addr {
	__u8 b[16];
	__u32 w[4];
	__u64 d[2];
};

/* Why one thread group is tainted. Value of the taints map. */
struct taint {
	__u64 since; /* CLOCK_BOOTTIME ns */
	__u32 via;   /* source tgid for inherit/ipc */
	__u8 kind;
	__u8 channel;
	__u16 port;     /* peer port, host order */
	__u8 addr[16];  /* peer address (network kinds) or the source's peer */
	char comm[16];
};

struct event {
	__u32 type;
	__u32 pid;
	struct taint t;
};

/*
 * A local channel that a tainted process wrote into.
 *  CH_PIPE:     a = inode pointer, b = inode number
 *  CH_UNIX:     a = the writer's struct sock pointer
 *  CH_LOOPBACK: the receiver's view of the connection: a/lport = its local
 *               address, b/rport = its peer, plus the network namespace
 */
struct mark_key {
	__u32 channel;
	__u32 netns;
	union addr a;
	union addr b;
	__u16 lport;
	__u16 rport;
	__u32 pad;
};

struct mark {
	__u64 time;
	__u32 src;  /* tgid of the tainted writer */
	__u16 port; /* the writer's taint peer, passed on to the reader */
	__u16 pad;
	__u8 addr[16];
};

struct lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct taint);
} taints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mark_key);
	__type(value, struct mark);
} marks SEC(".maps");

/* Peers that never taint (e.g. the management network). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, __u8);
} ignore SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Processes (by comm) that data read over local IPC never taints: hubs
 * such as PID 1 or a D-Bus daemon would otherwise spread one taint to all
 * their clients. Network exchanges still taint them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[16]);
	__type(value, __u8);
} ipc_exempt SEC(".maps");

/* The tracker's own process (guestd), which is never tainted. Set by the
 * loader. */
const volatile __u32 self_tgid = 0;

/* Puts struct event into BTF so bpf2go generates its Go type. */
const struct event *unused_event __attribute__((unused));

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* ---- addresses ---- */

static __always_inline void addr_v4(union addr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = v4;
}

static __always_inline bool addr_is_v4(const union addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

static __always_inline bool addr_is_zero(const union addr *a)
{
	return a->d[0] == 0 && a->d[1] == 0;
}

static __always_inline bool addr_eq(const union addr *a, const union addr *b)
{
	return a->d[0] == b->d[0] && a->d[1] == b->d[1];
}

static __always_inline bool addr_is_loopback(const union addr *a)
{
	if (addr_is_v4(a))
		return a->b[12] == 127;
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 && a->w[3] == bpf_htonl(1);
}

/* Loopback, unspecified (0.0.0.0 / ::, which reach this machine) or the
 * local address of the same socket: a peer on this machine. */
static __always_inline bool addr_is_local(const union addr *peer, const union addr *local)
{
	if (addr_is_zero(peer) || addr_is_loopback(peer))
		return true;
	if (addr_is_v4(peer) && peer->w[3] == 0)
		return true;
	if (local && !addr_is_zero(local) && addr_eq(peer, local))
		return true;
	return false;
}

static __always_inline bool addr_ignored(const union addr *peer)
{
	struct lpm_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, peer->b, 16);
	return bpf_map_lookup_elem(&ignore, &k) != NULL;
}

/* A peer whose traffic taints: not on this machine, not ignored. */
static __always_inline bool addr_is_outside(const union addr *peer, const union addr *local)
{
	return !addr_is_local(peer, local) && !addr_ignored(peer);
}

/* ---- tasks ---- */

static __always_inline bool is_kthread(struct task_struct *task)
{
	return BPF_CORE_READ(task, flags) & PF_KTHREAD;
}

static __always_inline struct taint *lookup_taint(__u32 tgid)
{
	return bpf_map_lookup_elem(&taints, &tgid);
}

/* Record t for tgid unless it is tainted already (the first reason wins). */
static __always_inline void add_taint(__u32 tgid, struct taint *t)
{
	if (tgid == self_tgid)
		return;
	long err = bpf_map_update_elem(&taints, &tgid, t, BPF_NOEXIST);
	if (err) {
		if (err == -E2BIG)
			stat_inc(STAT_FULL);
		return;
	}
	struct event ev = {.type = EV_TAINT, .pid = tgid};
	__builtin_memcpy(&ev.t, t, sizeof(*t));
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), 0))
		stat_inc(STAT_LOST);
}

/* Taint the current process. */
static __always_inline void taint_current(__u32 tgid, __u8 kind, __u8 channel, __u32 via,
					  const union addr *peer, __u16 port)
{
	struct taint t = {};
	bpf_get_current_comm(t.comm, sizeof(t.comm));
	if (kind == KIND_IPC && bpf_map_lookup_elem(&ipc_exempt, t.comm))
		return;
	t.since = bpf_ktime_get_boot_ns();
	t.via = via;
	t.kind = kind;
	t.channel = channel;
	t.port = port;
	if (peer)
		__builtin_memcpy(t.addr, peer->b, 16);
	add_taint(tgid, &t);
}

/* The current process's tgid, or 0 for a kernel thread (never tainted). */
static __always_inline __u32 current_tgid(struct task_struct *task)
{
	if (is_kthread(task))
		return 0;
	return bpf_get_current_pid_tgid() >> 32;
}

/* ---- file descriptors ---- */

enum fd_kind {
	FD_OTHER = 0,
	FD_PIPE = 1,
	FD_UNIX = 2,
	FD_INET = 3,
};

struct fdinfo {
	__u32 kind;
	__u16 type;  /* socket type */
	__u16 proto; /* socket protocol */
	struct sock *sk;
	struct inode *inode;
	__u64 ino;
};

static __always_inline struct file *fd_file(struct task_struct *task, long fd)
{
	if (fd < 0)
		return NULL;
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return NULL;
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned long)fd >= max)
		return NULL;
	struct file **arr = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), arr + fd);
	return f;
}

static __always_inline int classify(struct task_struct *task, long fd, struct fdinfo *fi)
{
	struct file *f = fd_file(task, fd);
	if (!f)
		return FD_OTHER;
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	if (!inode)
		return FD_OTHER;
	umode_t mode = BPF_CORE_READ(inode, i_mode);
	if ((mode & S_IFMT) == S_IFIFO) {
		fi->kind = FD_PIPE;
		fi->inode = inode;
		fi->ino = BPF_CORE_READ(inode, i_ino);
		return FD_PIPE;
	}
	if ((mode & S_IFMT) != S_IFSOCK)
		return FD_OTHER;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return FD_OTHER;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return FD_OTHER;
	fi->sk = sk;
	fi->type = BPF_CORE_READ(sock, type);
	fi->proto = BPF_CORE_READ(sk, sk_protocol);
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_UNIX)
		fi->kind = FD_UNIX;
	else if (family == AF_INET || family == AF_INET6)
		fi->kind = FD_INET;
	return fi->kind;
}

/* ---- sockets ---- */

struct endpoints {
	union addr local;
	union addr peer;
	__u16 lport;
	__u16 rport;
};

static __always_inline void sock_endpoints(struct sock *sk, struct endpoints *e)
{
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&e->peer, sk, __sk_common.skc_v6_daddr);
		BPF_CORE_READ_INTO(&e->local, sk, __sk_common.skc_v6_rcv_saddr);
	} else {
		addr_v4(&e->peer, BPF_CORE_READ(sk, __sk_common.skc_daddr));
		addr_v4(&e->local, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
	}
	e->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
}

static __always_inline __u32 sock_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline bool is_udp(struct fdinfo *fi)
{
	return fi->kind == FD_INET && fi->type == SOCK_DGRAM &&
	       (fi->proto == IPPROTO_UDP || fi->proto == IPPROTO_UDPLITE);
}

static __always_inline bool is_tcp(struct fdinfo *fi)
{
	return fi->kind == FD_INET && fi->type == SOCK_STREAM && fi->proto == IPPROTO_TCP;
}

/* Reads a struct sockaddr_in or sockaddr_in6 from user memory. Returns 0 if
 * it holds an internet address. */
static __always_inline int read_user_sockaddr(const void *uaddr, union addr *a, __u16 *port)
{
	struct {
		__u16 family;
		__be16 port;
		__be32 v4; /* sockaddr_in6: flowinfo */
	} head;
	if (!uaddr || bpf_probe_read_user(&head, sizeof(head), uaddr))
		return -1;
	*port = bpf_ntohs(head.port);
	if (head.family == AF_INET) {
		addr_v4(a, head.v4);
		return 0;
	}
	if (head.family == AF_INET6) {
		if (bpf_probe_read_user(a->b, 16, (const char *)uaddr + 8))
			return -1;
		return 0;
	}
	return -1;
}

/* The msg_name of a struct user_msghdr (also the start of a mmsghdr). */
static __always_inline const void *user_msg_name(const void *umsg)
{
	struct {
		void *name;
		int namelen;
	} h;
	if (!umsg || bpf_probe_read_user(&h, sizeof(h), umsg))
		return NULL;
	if (h.namelen <= 0)
		return NULL;
	return h.name;
}

/* ---- marks ---- */

static __always_inline void mark_set(struct mark_key *k, __u32 src, struct taint *t)
{
	struct mark *old = bpf_map_lookup_elem(&marks, k);
	if (old && old->src == src)
		return;
	struct mark m = {};
	m.time = bpf_ktime_get_boot_ns();
	m.src = src;
	m.port = t->port;
	__builtin_memcpy(m.addr, t->addr, 16);
	bpf_map_update_elem(&marks, k, &m, BPF_ANY);
}

static __always_inline void key_sock(struct mark_key *k, struct sock *sk)
{
	k->channel = CH_UNIX;
	k->a.d[0] = (__u64)sk;
}

static __always_inline void key_pipe(struct mark_key *k, struct fdinfo *fi)
{
	k->channel = CH_PIPE;
	k->a.d[0] = (__u64)fi->inode;
	k->b.d[0] = fi->ino;
}

/* The key a loopback TCP receiver looks up: its own view of the connection. */
static __always_inline void key_loopback(struct mark_key *k, struct sock *sk, struct endpoints *e,
					 bool writer)
{
	k->channel = CH_LOOPBACK;
	k->netns = sock_netns(sk);
	if (writer) {
		k->a = e->peer;
		k->lport = e->rport;
		k->b = e->local;
		k->rport = e->lport;
	} else {
		k->a = e->local;
		k->lport = e->lport;
		k->b = e->peer;
		k->rport = e->rport;
	}
}

/* A tainted process writes into fd: mark the channel the data goes into. */
static __always_inline void mark_write(struct task_struct *task, long fd, __u32 tgid,
				       struct taint *t)
{
	struct fdinfo fi = {};
	struct mark_key k = {};
	switch (classify(task, fd, &fi)) {
	case FD_PIPE:
		key_pipe(&k, &fi);
		break;
	case FD_UNIX:
		/* The receiver finds the writer's sock in each skb it reads. */
		key_sock(&k, fi.sk);
		break;
	case FD_INET: {
		if (!is_tcp(&fi))
			return;
		struct endpoints e = {};
		sock_endpoints(fi.sk, &e);
		if (!addr_is_local(&e.peer, &e.local))
			return;
		key_loopback(&k, fi.sk, &e, true);
		break;
	}
	default:
		return;
	}
	mark_set(&k, tgid, t);
}

/* An untainted process sends on fd: taint it if the data leaves the machine. */
static __always_inline void check_send(struct task_struct *task, long nr, struct pt_regs *regs,
				       long fd, __u32 tgid)
{
	struct fdinfo fi = {};
	if (classify(task, fd, &fi) != FD_INET)
		return;
	struct endpoints e = {};
	sock_endpoints(fi.sk, &e);
	if (is_tcp(&fi)) {
		struct sock *sk = fi.sk;
		unsigned char state = BPF_CORE_READ(sk, __sk_common.skc_state);
		if (state == TCP_ESTABLISHED && addr_is_outside(&e.peer, &e.local))
			taint_current(tgid, KIND_TCP, CH_NONE, 0, &e.peer, e.rport);
		return;
	}
	if (!is_udp(&fi))
		return;
	const void *uaddr = NULL;
	if (nr == NR_sendto)
		uaddr = (const void *)BPF_CORE_READ(regs, r8);
	else if (nr == NR_sendmsg || nr == NR_sendmmsg)
		uaddr = user_msg_name((const void *)BPF_CORE_READ(regs, si));
	union addr peer = {};
	__u16 port = 0;
	if (uaddr && read_user_sockaddr(uaddr, &peer, &port) == 0) {
		if (addr_is_outside(&peer, &e.local))
			taint_current(tgid, KIND_UDP, CH_NONE, 0, &peer, port);
		return;
	}
	/* No destination given: the connected peer. */
	if (e.rport != 0 && addr_is_outside(&e.peer, &e.local))
		taint_current(tgid, KIND_UDP, CH_NONE, 0, &e.peer, e.rport);
}

/* An untainted process received data from fd (syscall exit). TCP and unix
 * sockets are handled per skb in skb_copy_datagram_iovec. */
static __always_inline void check_recv(struct task_struct *task, long nr, struct pt_regs *regs,
				       long fd, __u32 tgid)
{
	struct fdinfo fi = {};
	struct mark_key k = {};
	switch (classify(task, fd, &fi)) {
	case FD_PIPE: {
		key_pipe(&k, &fi);
		struct mark *m = bpf_map_lookup_elem(&marks, &k);
		if (m) {
			union addr a;
			__builtin_memcpy(a.b, m->addr, 16);
			taint_current(tgid, KIND_IPC, CH_PIPE, m->src, &a, m->port);
		}
		return;
	}
	case FD_INET:
		break;
	default:
		return;
	}
	if (!is_udp(&fi))
		return;
	struct endpoints e = {};
	sock_endpoints(fi.sk, &e);
	const void *uaddr = NULL;
	if (nr == NR_recvfrom) {
		int len = 0;
		const void *ulen = (const void *)BPF_CORE_READ(regs, r9);
		if (ulen && bpf_probe_read_user(&len, sizeof(len), ulen) == 0 && len > 0)
			uaddr = (const void *)BPF_CORE_READ(regs, r8);
	} else if (nr == NR_recvmsg || nr == NR_recvmmsg) {
		uaddr = user_msg_name((const void *)BPF_CORE_READ(regs, si));
	}
	union addr peer = {};
	__u16 port = 0;
	if (uaddr && read_user_sockaddr(uaddr, &peer, &port) == 0) {
		if (addr_is_outside(&peer, &e.local))
			taint_current(tgid, KIND_UDP, CH_NONE, 0, &peer, port);
		return;
	}
	if (e.rport != 0) { /* connected: only its peer can send to it */
		if (addr_is_outside(&e.peer, &e.local))
			taint_current(tgid, KIND_UDP, CH_NONE, 0, &e.peer, e.rport);
		return;
	}
	/* Unconnected and the sender's address was not asked for. A socket
	 * bound to loopback only hears this machine; otherwise assume the
	 * worst and taint with an unknown peer. */
	if (addr_is_loopback(&e.local))
		return;
	taint_current(tgid, KIND_UDP, CH_NONE, 0, NULL, 0);
}

/* A socket that was just created: forget marks a freed socket at the same
 * address left behind. */
static __always_inline void fresh_socket(struct task_struct *task, long fd)
{
	struct fdinfo fi = {};
	if (classify(task, fd, &fi) != FD_UNIX)
		return;
	struct mark_key k = {};
	key_sock(&k, fi.sk);
	bpf_map_delete_elem(&marks, &k);
}

/* ---- programs ---- */

SEC("raw_tracepoint/sys_enter")
int sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	long nr = ctx->args[1];
	switch (nr) {
	case NR_write:
	case NR_writev:
	case NR_pwritev2:
	case NR_sendto:
	case NR_sendmsg:
	case NR_sendmmsg:
	case NR_sendfile:
	case NR_splice:
	case NR_tee:
	case NR_vmsplice:
		break;
	default:
		return 0;
	}
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	if (BPF_CORE_READ(regs, cs) == USER32_CS)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = current_tgid(task);
	if (!tgid)
		return 0;
	long fd;
	switch (nr) {
	case NR_splice: /* splice(fd_in, off_in, fd_out, ...) */
		fd = BPF_CORE_READ(regs, dx);
		break;
	case NR_tee: /* tee(fd_in, fd_out, ...) */
		fd = BPF_CORE_READ(regs, si);
		break;
	default: /* sendfile(out_fd, in_fd, ...) and the rest: fd first */
		fd = BPF_CORE_READ(regs, di);
	}
	fd = (int)fd;
	struct taint *t = lookup_taint(tgid);
	if (t) {
		mark_write(task, fd, tgid, t);
		return 0;
	}
	check_send(task, nr, regs, fd, tgid);
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	long ret = ctx->args[1];
	if (ret < 0)
		return 0;
	long nr = BPF_CORE_READ(regs, orig_ax);
	switch (nr) {
	case NR_read:
	case NR_readv:
	case NR_preadv2:
	case NR_recvfrom:
	case NR_recvmsg:
	case NR_recvmmsg:
	case NR_sendfile:
	case NR_splice:
	case NR_tee:
		if (ret == 0)
			return 0;
		break;
	case NR_accept:
	case NR_accept4:
	case NR_socket:
	case NR_socketpair:
		break;
	default:
		return 0;
	}
	if (BPF_CORE_READ(regs, cs) == USER32_CS)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = current_tgid(task);
	if (!tgid)
		return 0;

	switch (nr) {
	case NR_socket:
		fresh_socket(task, ret);
		return 0;
	case NR_socketpair: {
		int sv[2] = {-1, -1};
		bpf_probe_read_user(sv, sizeof(sv), (const void *)BPF_CORE_READ(regs, r10));
		fresh_socket(task, sv[0]);
		fresh_socket(task, sv[1]);
		return 0;
	}
	case NR_accept:
	case NR_accept4: {
		struct fdinfo fi = {};
		int kind = classify(task, ret, &fi);
		if (kind == FD_UNIX) {
			struct mark_key k = {};
			key_sock(&k, fi.sk);
			bpf_map_delete_elem(&marks, &k);
			return 0;
		}
		if (!is_tcp(&fi) || lookup_taint(tgid))
			return 0;
		struct endpoints e = {};
		sock_endpoints(fi.sk, &e);
		if (addr_is_outside(&e.peer, &e.local))
			taint_current(tgid, KIND_ACCEPT, CH_NONE, 0, &e.peer, e.rport);
		return 0;
	}
	}

	if (lookup_taint(tgid))
		return 0;
	long fd;
	switch (nr) {
	case NR_sendfile: /* sendfile(out_fd, in_fd, ...) */
		fd = BPF_CORE_READ(regs, si);
		break;
	default: /* splice(fd_in, ...), tee(fd_in, ...), reads: fd first */
		fd = BPF_CORE_READ(regs, di);
	}
	check_recv(task, nr, regs, (int)fd, tgid);
	return 0;
}

/* Called for every skb copied to user space by recvmsg of TCP, unix and
 * other sockets, in the reading task's context. */
SEC("raw_tracepoint/skb_copy_datagram_iovec")
int skb_copy(struct bpf_raw_tracepoint_args *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->args[0];
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = current_tgid(task);
	if (!tgid || lookup_taint(tgid))
		return 0;
	struct sock *sk = BPF_CORE_READ(skb, sk);
	if (!sk)
		return 0;
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	struct mark_key k = {};
	__u8 channel;
	if (family == AF_UNIX) {
		/* skb->sk is the sending socket. */
		key_sock(&k, sk);
		channel = CH_UNIX;
	} else if (family == AF_INET || family == AF_INET6) {
		/* skb->sk is the receiving socket. */
		if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP ||
		    BPF_CORE_READ(sk, sk_type) != SOCK_STREAM)
			return 0;
		struct endpoints e = {};
		sock_endpoints(sk, &e);
		if (!addr_is_local(&e.peer, &e.local)) {
			if (!addr_ignored(&e.peer))
				taint_current(tgid, KIND_TCP, CH_NONE, 0, &e.peer, e.rport);
			return 0;
		}
		key_loopback(&k, sk, &e, false);
		channel = CH_LOOPBACK;
	} else {
		return 0;
	}
	struct mark *m = bpf_map_lookup_elem(&marks, &k);
	if (!m)
		return 0;
	union addr a;
	__builtin_memcpy(a.b, m->addr, 16);
	taint_current(tgid, KIND_IPC, channel, m->src, &a, m->port);
	return 0;
}

/* TCP state changes: SYN_SENT happens inside connect(), in the connecting
 * task; CLOSE ends a connection, so its loopback marks go. */
SEC("raw_tracepoint/inet_sock_set_state")
int inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int newstate = (int)ctx->args[2];
	if (newstate != TCP_SYN_SENT && newstate != TCP_CLOSE)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	struct endpoints e = {};
	sock_endpoints(sk, &e);
	if (newstate == TCP_CLOSE) {
		if (addr_is_local(&e.peer, &e.local)) {
			struct mark_key k = {};
			key_loopback(&k, sk, &e, false);
			bpf_map_delete_elem(&marks, &k);
		}
		return 0;
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = current_tgid(task);
	if (!tgid || lookup_taint(tgid))
		return 0;
	if (addr_is_outside(&e.peer, &e.local))
		taint_current(tgid, KIND_CONNECT, CH_NONE, 0, &e.peer, e.rport);
	return 0;
}

SEC("raw_tracepoint/sched_process_fork")
int sched_process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (ptgid == ctgid) /* a new thread */
		return 0;
	struct taint *pt = lookup_taint(ptgid);
	if (!pt)
		return 0;
	struct taint t = {};
	t.since = bpf_ktime_get_boot_ns();
	t.via = ptgid;
	t.kind = KIND_INHERIT;
	t.port = pt->port;
	__builtin_memcpy(t.addr, pt->addr, 16);
	BPF_CORE_READ_STR_INTO(&t.comm, child, comm);
	add_taint(ctgid, &t);
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int sched_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	/* do_exit decrements signal->live before this tracepoint: 0 means the
	 * last thread of the group is leaving. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (bpf_map_delete_elem(&taints, &tgid))
		return 0;
	struct event ev = {.type = EV_EXIT, .pid = tgid};
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), 0))
		stat_inc(STAT_LOST);
	return 0;
}
