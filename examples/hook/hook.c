//go:build ignore

// (The line above keeps the go tool from treating this directory, which
// holds hook_test.go, as a cgo package: hook.c is built by the Makefile.)

/* hook: demo of libsymvirt. Does fake work in iterations of 100 ms and, at
 * each iteration boundary (the application's natural safe point), asks
 * whether symvirt has an operation pending; if so it syncs and reports the
 * outcome, then goes on working.
 *
 *   hook [name] [iterations]     (defaults: hook 50; 0 iterations = forever)
 */
#include "symvirt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void sleep_100ms(void)
{
	struct timespec t = {0, 100 * 1000 * 1000};
	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

/* Errors drop the hook rather than the application: the work matters more
 * than cooperating with symvirt (which then just won't wait for us). */
static symvirt_t *drop(symvirt_t *s, const char *what)
{
	fprintf(stderr, "hook: %s: %s; going on without symvirt\n", what, strerror(errno));
	symvirt_close(s);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : "hook";
	long iterations = argc > 2 ? strtol(argv[2], NULL, 10) : 50;
	unsigned long counter = 0;
	char op[64];
	symvirt_t *s;

	/* Line-buffered even into a pipe, so whoever watches sees each line
	 * as it happens. */
	setvbuf(stdout, NULL, _IOLBF, 0);

	if ((s = symvirt_open(name)) == NULL)
		drop(NULL, "symvirt_open");
	else
		printf("hook: registered as %s\n", name);

	for (long i = 0; iterations <= 0 || i < iterations; i++) {
		counter++; /* the "work" */
		sleep_100ms();

		if (s == NULL)
			continue;
		int r = symvirt_poll(s, op, sizeof op);
		if (r < 0) {
			s = drop(s, "symvirt_poll");
			continue;
		}
		if (r == 0)
			continue;
		printf("hook: pending %s\n", op);
		/* Safe point: in an MPI code, after MPI_Barrier. */
		r = symvirt_sync(s, NULL, 0);
		if (r < 0) {
			s = drop(s, "symvirt_sync");
			continue;
		}
		printf("hook: outcome %s\n", symvirt_outcome_name(r));
	}
	printf("hook: done after %lu iterations\n", counter);
	symvirt_close(s);
	return 0;
}
