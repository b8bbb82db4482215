/* Unit test of libsymvirt against a forked fake agent: each case forks a
 * child that accepts one connection on a temporary socket and plays a
 * script (expect a request line, send a reply, maybe hang up). The library
 * under test is the real one, socket path lookup included. */
#define _GNU_SOURCE
#include "symvirt.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static char sockpath[256];
static int failures;

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: FAIL: %s (errno %d: %s)\n",    \
				__FILE__, __LINE__, #cond, errno,              \
				strerror(errno));                              \
			failures++;                                            \
		}                                                              \
	} while (0)

/* --- fake agent side (runs in the child; exits 3 on a script mismatch) -- */

static void say(int fd, const char *text)
{
	size_t n = strlen(text);
	if (write(fd, text, n) != (ssize_t)n)
		_exit(3);
}

/* Read one request line byte by byte (so nothing past it is consumed) and
 * require it to start with want. */
static void expect(int fd, const char *want)
{
	char line[512];
	size_t n = 0;
	while (n < sizeof line - 1 && read(fd, line + n, 1) == 1 && line[n] != '\n')
		n++;
	line[n] = '\0';
	if (strncmp(line, want, strlen(want)) != 0) {
		fprintf(stderr, "fake agent: got %s, want %s\n", line, want);
		_exit(3);
	}
}

static void hello(int fd)
{
	expect(fd, "HELLO test ");
	say(fd, "OK 1\n");
}

/* Start a fake agent running script; returns its pid. The socket listens
 * before fork, so the client cannot race the child. */
static pid_t serve(void (*script)(int fd))
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	pid_t pid;

	strcpy(sa.sun_path, sockpath);
	unlink(sockpath);
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 1) < 0) {
		perror("fake agent socket");
		exit(1);
	}
	if ((pid = fork()) == 0) {
		int fd = accept(l, NULL, NULL);
		if (fd < 0)
			_exit(4);
		script(fd);
		_exit(0);
	}
	close(l);
	return pid;
}

static void reap(pid_t pid)
{
	int st;
	pid_t r;
	while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
		;
	CHECK(r == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* --- scripts ------------------------------------------------------------ */

static void s_round(int fd)
{
	hello(fd);
	expect(fd, "POLL");
	say(fd, "IDLE\n");
	expect(fd, "POLL");
	/* in pieces, to exercise reassembly */
	say(fd, "PEND");
	usleep(20000);
	say(fd, "ING checkpoint r1\n");
	expect(fd, "POLL"); /* the client's buffer is too small this time */
	say(fd, "PENDING checkpoint r1\n");
	expect(fd, "SYNC");
	say(fd, "OUTCOME checkpointed checkpoint r1\n");
	expect(fd, "SYNC");
	say(fd, "OUTCOME none - -\n");
	expect(fd, "WAIT");
	say(fd, "PENDING migrate r2\n");
	expect(fd, "SYNC");
	say(fd, "OUTCOME aborted migrate r2\n");
	/* hang up once the client has closed, so the parent's reap works */
	char c;
	while (read(fd, &c, 1) > 0)
		;
}

static void s_long_line(int fd)
{
	static char big[5001];
	hello(fd);
	expect(fd, "POLL");
	memset(big, 'x', 4999);
	big[4999] = '\n';
	say(fd, big);
}

/* Longest allowed line: 4096 bytes before the '\n'. Then one byte more. */
static void s_boundary(int fd)
{
	static char line[SYMVIRT_LINE_MAX + 3];
	hello(fd);
	expect(fd, "POLL");
	memset(line, 'o', sizeof line);
	memcpy(line, "PENDING ", 8);
	memcpy(line + SYMVIRT_LINE_MAX - 3, " r1\n", 5);
	say(fd, line);
	expect(fd, "POLL");
	memset(line, 'o', sizeof line);
	memcpy(line, "PENDING ", 8);
	memcpy(line + SYMVIRT_LINE_MAX - 2, " r1\n", 5);
	say(fd, line);
}

static void s_hangup_after_hello(int fd)
{
	hello(fd);
	/* the client's next request hits a closed peer: must not SIGPIPE */
}

static void s_hangup_mid_line(int fd)
{
	hello(fd);
	expect(fd, "SYNC");
	say(fd, "OUTCOME check");
}

static void s_bad_hello(int fd)
{
	expect(fd, "HELLO test ");
	say(fd, "ERR invalid name\n"); /* what the agent says before hanging up */
}

static void s_garbage(int fd)
{
	hello(fd);
	expect(fd, "POLL");
	say(fd, "OUTCOME none - -\n"); /* not a POLL reply */
}

static void s_unknown_outcome(int fd)
{
	hello(fd);
	expect(fd, "SYNC");
	say(fd, "OUTCOME teleported checkpoint r1\n");
}

static void s_slow_wait(int fd)
{
	hello(fd);
	expect(fd, "WAIT");
	usleep(300000); /* meanwhile the client is hit by signals */
	say(fd, "PENDING checkpoint r9\n");
}

/* --- cases ---------------------------------------------------------------- */

static void on_alarm(int sig)
{
	(void)sig;
}

static void test_round(void)
{
	char op[32], small[4], out[32];
	char before[64] = {0};
	pid_t pid = serve(s_round);
	symvirt_t *s;

	for (int fd = 0; fd < 64; fd++)
		before[fd] = fcntl(fd, F_GETFD) >= 0;
	s = symvirt_open("test");
	CHECK(s != NULL);
	if (s == NULL)
		return;
	/* the new socket is close-on-exec, so that exec'd children do not keep
	 * the registration alive */
	for (int fd = 0; fd < 64; fd++)
		if (!before[fd] && fcntl(fd, F_GETFD) >= 0)
			CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	CHECK(symvirt_poll(s, op, sizeof op) == 0);
	CHECK(symvirt_poll(s, op, sizeof op) == 1 && strcmp(op, "checkpoint") == 0);
	errno = 0;
	CHECK(symvirt_poll(s, small, sizeof small) == -1 && errno == ERANGE);
	CHECK(symvirt_sync(s, out, sizeof out) == SYMVIRT_CHECKPOINTED);
	CHECK(strcmp(out, "checkpointed") == 0);
	CHECK(symvirt_sync(s, small, sizeof small) == SYMVIRT_NONE);
	CHECK(strcmp(small, "non") == 0); /* truncated */
	CHECK(symvirt_wait(s, NULL, 0) == 1);
	CHECK(symvirt_sync(s, NULL, 0) == SYMVIRT_ABORTED);
	symvirt_close(s);
	reap(pid);
}

static void test_long_line(void)
{
	char op[32];
	pid_t pid = serve(s_long_line);
	symvirt_t *s = symvirt_open("test");

	CHECK(s != NULL);
	errno = 0;
	CHECK(symvirt_poll(s, op, sizeof op) == -1 && errno == EPROTO);
	/* the stream is out of step now: the handle stays unusable */
	errno = 0;
	CHECK(symvirt_poll(s, op, sizeof op) == -1 && errno == ENOTCONN);
	symvirt_close(s);
	reap(pid);
}

static void test_boundary(void)
{
	static char op[SYMVIRT_LINE_MAX + 1];
	pid_t pid = serve(s_boundary);
	symvirt_t *s = symvirt_open("test");

	CHECK(s != NULL);
	CHECK(symvirt_poll(s, op, sizeof op) == 1);
	CHECK(strlen(op) == SYMVIRT_LINE_MAX - 11); /* minus "PENDING ", " r1" */
	errno = 0;
	CHECK(symvirt_poll(s, op, sizeof op) == -1 && errno == EPROTO);
	symvirt_close(s);
	reap(pid);
}

static void test_hangup(void)
{
	char out[32];
	pid_t pid = serve(s_hangup_after_hello);
	symvirt_t *s = symvirt_open("test");

	CHECK(s != NULL);
	reap(pid); /* the agent is gone before the request */
	errno = 0;
	CHECK(symvirt_poll(s, NULL, 0) == -1 && (errno == EPIPE || errno == ECONNRESET));
	symvirt_close(s);

	pid = serve(s_hangup_mid_line);
	s = symvirt_open("test");
	CHECK(s != NULL);
	errno = 0;
	CHECK(symvirt_sync(s, out, sizeof out) == -1 && errno == ECONNRESET);
	symvirt_close(s);
	reap(pid);
}

static void test_protocol_errors(void)
{
	char op[32];
	pid_t pid = serve(s_bad_hello);
	symvirt_t *s;

	errno = 0;
	CHECK(symvirt_open("test") == NULL && errno == EPROTO);
	reap(pid);

	pid = serve(s_garbage);
	s = symvirt_open("test");
	errno = 0;
	CHECK(symvirt_poll(s, op, sizeof op) == -1 && errno == EPROTO);
	symvirt_close(s);
	reap(pid);

	pid = serve(s_unknown_outcome);
	s = symvirt_open("test");
	errno = 0;
	CHECK(symvirt_sync(s, op, sizeof op) == -1 && errno == EPROTO);
	CHECK(strcmp(op, "teleported") == 0);
	symvirt_close(s);
	reap(pid);
}

static void test_open_errors(void)
{
	errno = 0;
	CHECK(symvirt_open(NULL) == NULL && errno == EINVAL);
	CHECK(symvirt_open("") == NULL && errno == EINVAL);
	CHECK(symvirt_open("two words") == NULL && errno == EINVAL);
	char longname[66];
	memset(longname, 'n', 65);
	longname[65] = '\0';
	CHECK(symvirt_open(longname) == NULL && errno == EINVAL); /* > 64 */
	unlink(sockpath);
	errno = 0;
	CHECK(symvirt_open("test") == NULL && errno == ENOENT);
	CHECK(symvirt_poll(NULL, NULL, 0) == -1 && errno == EINVAL);
	CHECK(strcmp(symvirt_outcome_name(SYMVIRT_REJUVENATED), "rejuvenated") == 0);
	CHECK(strcmp(symvirt_outcome_name(-1), "unknown") == 0);
	CHECK(strcmp(symvirt_outcome_name(SYMVIRT_NONE + 1), "unknown") == 0);
	symvirt_close(NULL);
}

/* A blocking WAIT keeps going through signals whose handler does not ask
 * for restarts (no SA_RESTART), as happens with MPI runtimes' timers. */
static void test_eintr(void)
{
	char op[32];
	struct sigaction sa = {.sa_handler = on_alarm};
	struct itimerval it = {{0, 20000}, {0, 20000}}, off = {{0, 0}, {0, 0}};
	pid_t pid = serve(s_slow_wait);
	symvirt_t *s = symvirt_open("test");

	CHECK(s != NULL);
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	CHECK(symvirt_wait(s, op, sizeof op) == 1 && strcmp(op, "checkpoint") == 0);
	setitimer(ITIMER_REAL, &off, NULL);
	symvirt_close(s);
	reap(pid);
}

int main(void)
{
	char dir[] = "/tmp/symvirt-test.XXXXXX";
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(sockpath, sizeof sockpath, "%s/hook.sock", dir);
	setenv("SYMVIRT_HOOK_SOCKET", sockpath, 1);

	test_round();
	test_long_line();
	test_boundary();
	test_hangup();
	test_protocol_errors();
	test_open_errors();
	test_eintr();

	unlink(sockpath);
	rmdir(dir);
	if (failures) {
		fprintf(stderr, "test_symvirt: %d failure(s)\n", failures);
		return 1;
	}
	printf("test_symvirt: all tests passed\n");
	return 0;
}
