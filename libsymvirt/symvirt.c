/* libsymvirt: client side of the guest agent's hook line protocol. */
#define _GNU_SOURCE /* MSG_NOSIGNAL, SOCK_CLOEXEC */
#include "symvirt.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/symvirt/hook.sock"
#define NAME_MAX_LEN 64 /* the agent rejects longer names */
#define MAX_FIELDS 8

struct symvirt {
	int fd;     /* -1 once the connection has been dropped */
	size_t len; /* bytes of buf holding received, unconsumed data */
	/* Replies may arrive in pieces or (in theory) several at once, so
	 * reads go through this buffer; its size is the line bound. */
	char buf[SYMVIRT_LINE_MAX + 1];
};

static const char *const outcome_names[] = {
	[SYMVIRT_CHECKPOINTED] = "checkpointed",
	[SYMVIRT_RESTORED] = "restored",
	[SYMVIRT_MIGRATED] = "migrated",
	[SYMVIRT_REJUVENATED] = "rejuvenated",
	[SYMVIRT_ABORTED] = "aborted",
	[SYMVIRT_FAILED] = "failed",
	[SYMVIRT_NONE] = "none",
};
#define N_OUTCOMES ((int)(sizeof outcome_names / sizeof outcome_names[0]))

const char *symvirt_outcome_name(int outcome)
{
	if (outcome < 0 || outcome >= N_OUTCOMES)
		return "unknown";
	return outcome_names[outcome];
}

/* After an error the stream may be mid-line: nothing later could be trusted,
 * so the connection is closed, keeping errno for the caller. */
static int fail(symvirt_t *s)
{
	int err = errno;
	if (s->fd >= 0) {
		close(s->fd);
		s->fd = -1;
	}
	s->len = 0;
	errno = err;
	return -1;
}

static int send_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		/* MSG_NOSIGNAL: a vanished agent must give EPIPE, not kill the
		 * application with SIGPIPE. */
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Read one line into line (SYMVIRT_LINE_MAX + 1 bytes), without its '\n'.
 * A line that does not fit in the buffer is a protocol error: EPROTO. */
static int read_line(symvirt_t *s, char *line)
{
	for (;;) {
		char *nl = memchr(s->buf, '\n', s->len);
		if (nl != NULL) {
			size_t n = (size_t)(nl - s->buf);
			memcpy(line, s->buf, n);
			line[n] = '\0';
			s->len -= n + 1;
			memmove(s->buf, nl + 1, s->len);
			return 0;
		}
		if (s->len == sizeof s->buf) {
			errno = EPROTO;
			return -1;
		}
		ssize_t r = recv(s->fd, s->buf + s->len, sizeof s->buf - s->len, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0) { /* agent went away (maybe mid-line) */
			errno = ECONNRESET;
			return -1;
		}
		s->len += (size_t)r;
	}
}

/* Split line in place at single spaces. Fields past MAX_FIELDS stay in the
 * last one, so a server that appends fields does not break old clients.
 * Returns the number of fields, or -1 if one is empty. */
static int split(char *line, char **f)
{
	int n = 0;
	char *p = line;
	for (;;) {
		f[n++] = p;
		if (*p == '\0')
			return -1;
		if (n == MAX_FIELDS || (p = strchr(p, ' ')) == NULL)
			return n;
		*p++ = '\0';
	}
}

/* Send cmd, read the reply, split it. Drops the connection on failure. */
static int request(symvirt_t *s, const char *cmd, char *line, char **f)
{
	int n;
	if (s == NULL) {
		errno = EINVAL;
		return -1;
	}
	if (s->fd < 0) {
		errno = ENOTCONN;
		return -1;
	}
	if (send_all(s->fd, cmd, strlen(cmd)) < 0 || read_line(s, line) < 0)
		return fail(s);
	if ((n = split(line, f)) < 0) {
		errno = EPROTO;
		return fail(s);
	}
	return n;
}

static int copy_out(char *dst, size_t dstlen, const char *src)
{
	size_t n = strlen(src);
	if (dst == NULL && dstlen == 0)
		return 0;
	if (dst == NULL || n >= dstlen) {
		errno = ERANGE;
		return -1;
	}
	memcpy(dst, src, n + 1);
	return 0;
}

/* A blocking connect() interrupted by a signal goes on in the background;
 * calling it again would give EALREADY, so wait for it to finish instead. */
static int connect_retry(int fd, const struct sockaddr_un *sa)
{
	int err;
	socklen_t len = sizeof err;
	struct pollfd p = {.fd = fd, .events = POLLOUT};

	if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0)
		return 0;
	if (errno != EINTR)
		return -1;
	while (poll(&p, 1, -1) < 0)
		if (errno != EINTR)
			return -1;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -1;
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

static int valid_name(const char *name)
{
	size_t n = 0;
	if (name == NULL)
		return 0;
	for (; name[n] != '\0'; n++)
		if (name[n] <= ' ' || name[n] > '~') /* spaces split fields */
			return 0;
	return n > 0 && n <= NAME_MAX_LEN;
}

symvirt_t *symvirt_open(const char *name)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char cmd[NAME_MAX_LEN + 32], line[SYMVIRT_LINE_MAX + 1], *f[MAX_FIELDS];
	const char *path = getenv("SYMVIRT_HOOK_SOCKET");
	symvirt_t *s;

	if (!valid_name(name)) {
		errno = EINVAL;
		return NULL;
	}
	if (path == NULL || *path == '\0')
		path = DEFAULT_SOCKET;
	if (strlen(path) >= sizeof sa.sun_path) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	strcpy(sa.sun_path, path);

	if ((s = calloc(1, sizeof *s)) == NULL)
		return NULL;
	/* Close-on-exec: a child exec'd by the application must not keep the
	 * registration alive after the application itself has gone. */
	s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->fd < 0 || connect_retry(s->fd, &sa) < 0)
		goto err;
	snprintf(cmd, sizeof cmd, "HELLO %s %ld\n", name, (long)getpid());
	if (request(s, cmd, line, f) < 0)
		goto err;
	if (strcmp(f[0], "OK") != 0) {
		errno = EPROTO;
		goto err;
	}
	return s;
err:
	fail(s);
	{
		int err = errno;
		free(s);
		errno = err;
	}
	return NULL;
}

/* Shared by POLL and WAIT: IDLE -> 0, PENDING <op> <id> -> 1. */
static int pending(symvirt_t *s, const char *cmd, int idle_ok, char *op, size_t oplen)
{
	char line[SYMVIRT_LINE_MAX + 1], *f[MAX_FIELDS];
	int n = request(s, cmd, line, f);

	if (n < 0)
		return -1;
	if (idle_ok && n == 1 && strcmp(f[0], "IDLE") == 0)
		return 0;
	if (n < 3 || strcmp(f[0], "PENDING") != 0) {
		errno = EPROTO;
		return fail(s);
	}
	/* Not dropping the connection here: the operation is still pending,
	 * so the caller can ask again with a larger buffer. */
	return copy_out(op, oplen, f[1]) < 0 ? -1 : 1;
}

int symvirt_poll(symvirt_t *s, char *op, size_t oplen)
{
	return pending(s, "POLL\n", 1, op, oplen);
}

int symvirt_wait(symvirt_t *s, char *op, size_t oplen)
{
	return pending(s, "WAIT\n", 0, op, oplen);
}

int symvirt_sync(symvirt_t *s, char *outcome, size_t outlen)
{
	char line[SYMVIRT_LINE_MAX + 1], *f[MAX_FIELDS];
	int n = request(s, "SYNC\n", line, f);

	if (n < 0)
		return -1;
	if (n < 4 || strcmp(f[0], "OUTCOME") != 0) {
		errno = EPROTO;
		return fail(s);
	}
	/* Truncate rather than fail: the outcome has been consumed and could
	 * not be asked for again. */
	if (outcome != NULL && outlen > 0)
		snprintf(outcome, outlen, "%s", f[1]);
	for (int i = 0; i < N_OUTCOMES; i++)
		if (strcmp(f[1], outcome_names[i]) == 0)
			return i;
	/* An outcome this library does not know: the operation is over but
	 * the caller cannot tell how it ended. */
	errno = EPROTO;
	return -1;
}

void symvirt_close(symvirt_t *s)
{
	if (s == NULL)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}
