/*
 * libsymvirt: in-guest hook API of symvirt.
 *
 * symvirt checkpoints, restores, migrates and rejuvenates VMs with the
 * guest's cooperation. An application that registers with symvirt_open()
 * makes every such operation wait until it says, with symvirt_sync(), that
 * it is at a safe point (e.g. an MPI rank right after MPI_Barrier at an
 * iteration boundary). symvirt_sync() then blocks until the operation is
 * over and tells how it ended.
 *
 * The library speaks a line protocol over the guest agent's Unix socket,
 * /run/symvirt/hook.sock unless the environment variable SYMVIRT_HOOK_SOCKET
 * names another.
 *
 * Threads: a handle is not locked. Use one handle per thread, or serialise
 * the calls on a shared handle yourself. The library has no global state.
 * The socket is close-on-exec; after fork() only one of the processes may
 * use the handle.
 *
 * Errors: functions that fail return -1 (or NULL) and set errno. Once an I/O
 * or protocol error has happened, the connection is closed (the agent no
 * longer waits for this application) and every later call fails with
 * ENOTCONN; symvirt_close() the handle and symvirt_open() a new one to
 * register again.
 */
#ifndef SYMVIRT_H
#define SYMVIRT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Longest protocol line, not counting its terminating '\n' (as the agent
 * counts). A longer reply is a protocol error (EPROTO). */
#define SYMVIRT_LINE_MAX 4096

/* How an operation ended: the value symvirt_sync() returns. */
enum symvirt_outcome {
	SYMVIRT_CHECKPOINTED = 0, /* snapshot taken, the VM went on running */
	SYMVIRT_RESTORED,         /* the VM was restored from a snapshot */
	SYMVIRT_MIGRATED,         /* the VM now runs on another host */
	SYMVIRT_REJUVENATED,      /* the VM was moved to a fresh host/hypervisor */
	SYMVIRT_ABORTED,          /* the operation was called off */
	SYMVIRT_FAILED,           /* the operation was tried and failed */
	SYMVIRT_NONE              /* nothing was pending when sync was called */
};

typedef struct symvirt symvirt_t;

/*
 * Connect to the guest agent and register as application `name` (printable
 * ASCII without spaces, at most 64 bytes: the agent's limit) with this process's pid. From now
 * on operations wait for this handle to sync.
 * Returns NULL with errno set on failure: EINVAL (bad name), ENAMETOOLONG
 * (socket path), ENOENT/ECONNREFUSED (no agent), EPROTO (unexpected reply,
 * e.g. the agent's "ERR ..."),
 * ENOMEM, or another socket error.
 */
symvirt_t *symvirt_open(const char *name);

/*
 * Ask, without waiting for one, whether an operation is pending.
 * Returns 1 if one is (its name, e.g. "checkpoint", is copied into op),
 * or if the agent gave up on one while this application did not sync (e.g.
 * it was stopped): the next symvirt_sync() then returns SYMVIRT_ABORTED at
 * once.
 * 0 if none is, -1 with errno on error. op may be NULL when oplen is 0.
 * If op is too small, returns -1 with ERANGE; the connection stays usable
 * and the operation stays pending, so the call can be repeated.
 */
int symvirt_poll(symvirt_t *s, char *op, size_t oplen);

/*
 * Like symvirt_poll(), but blocks until an operation is pending; returns 1
 * or -1.
 */
int symvirt_wait(symvirt_t *s, char *op, size_t oplen);

/*
 * Declare that the application is at a safe point, and block until the
 * pending operation is over. Returns its outcome (an enum symvirt_outcome,
 * >= 0; SYMVIRT_NONE when nothing was pending) or -1 with errno on error.
 * If outcome is not NULL, the outcome's name as the agent sent it is copied
 * into it, truncated to outlen - 1 bytes (the return value is what counts).
 * Call it only at a point where the VM may be frozen and resumed later or
 * elsewhere: the call may return on another host, or, for SYMVIRT_RESTORED,
 * at a later time from a snapshot.
 */
int symvirt_sync(symvirt_t *s, char *outcome, size_t outlen);

/* Name of an outcome ("checkpointed", ..., "none"), or "unknown". */
const char *symvirt_outcome_name(int outcome);

/* Close the connection and free the handle; the agent stops waiting for
 * this application. NULL is allowed. */
void symvirt_close(symvirt_t *s);

#ifdef __cplusplus
}
#endif

#endif /* SYMVIRT_H */
