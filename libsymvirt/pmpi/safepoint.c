//go:build ignore

// (The line above keeps the go tool from treating this directory, which
// holds pmpi_test.go, as a cgo package: the Makefile builds the C.)

/*
 * symvirt-pmpi: gives an unmodified MPI program safe points at its blocking
 * collectives on MPI_COMM_WORLD (or a communicator congruent to it), so
 * that symvirt can checkpoint, restore or migrate its VMs with every rank
 * at a known, quiet place.
 *
 * Every rank calls the same collectives on such communicators in the same
 * order (MPI requires it, or the program could deadlock), so a decision
 * taken there is taken at the same point by all ranks. At a check:
 *   1. each rank asks its guest agent whether an operation is pending
 *      (symvirt_poll: a local socket round trip);
 *   2. the ranks agree with an MPI_Allreduce(MAX) of that flag (and rank
 *      0's proposal for the next check) on a private
 *      duplicate of MPI_COMM_WORLD (never mixing with the program's
 *      traffic);
 *   3. if any rank has one pending, a rank that does not yet waits a little
 *      (the operation reaches each VM's agent at a slightly different time)
 *      for it to show up, every rank meets at an MPI_Barrier on the private
 *      communicator (drain: all ranks stand at the same collective and the
 *      library's own messages are done), and each rank with an operation
 *      pending calls symvirt_sync once. It returns when the operation is
 *      over (maybe on another host, or restored from a snapshot) and the
 *      program's collective then runs as if nothing had happened.
 *
 * Without symvirt (no rank can reach a hook socket) the ranks learn so at
 * the first collective and every later one costs one branch.
 *
 * Environment:
 *   SYMVIRT_HOOK_SOCKET        the agent's socket (libsymvirt's default)
 *   SYMVIRT_PMPI_INTERVAL_MS=MS  aim for a check every MS of wall time
 *                              (default 100; 0: at every collective)
 *   SYMVIRT_PMPI_GRACE_MS=MS   how long a rank without a pending operation
 *                              waits for one when another rank has one
 *                              (default 5000)
 *   SYMVIRT_PMPI_LOG=1         one line on stderr per sync (and setup)
 *   SYMVIRT_PMPI_DISABLE=1     this rank does not register (set on every
 *                              rank: no checks at all)
 *
 * Threads: checks are made only if MPI runs below MPI_THREAD_MULTIPLE, where
 * one thread at a time makes MPI calls; with MPI_THREAD_MULTIPLE two threads'
 * collectives could interleave differently on different ranks, so the
 * library stays out of the way.
 */
#define _GNU_SOURCE /* program_invocation_short_name */
#include "safepoint.h"
#include "symvirt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum state { UNINIT, ON, OFF };

static enum state state = UNINIT;
static MPI_Comm priv = MPI_COMM_NULL; /* private duplicate of MPI_COMM_WORLD */
static symvirt_t *hook;               /* NULL: this rank has no agent */
static int rank;
static long interval_ms = 100, grace_ms = 5000;
static long gap = 1;             /* collectives between two checks */
static unsigned long next_check; /* index of the collective to check at */
static double last_check;        /* rank 0: MPI_Wtime of the last check */
static int logging;
static unsigned long ncoll;   /* intercepted collectives on world */
static unsigned long nsync;   /* syncs made */
static int congruent_key = MPI_KEYVAL_INVALID;
static int busy;              /* inside a check: our own calls are not checks */

static long env_long(const char *name, long def, long min)
{
	const char *s = getenv(name);
	char *end;
	long v;
	if (s == NULL || *s == '\0')
		return def;
	v = strtol(s, &end, 10);
	if (*end != '\0' || v < min) {
		fprintf(stderr, "symvirt-pmpi: ignoring %s=%s (want an integer >= %ld)\n", name, s, min);
		return def;
	}
	return v;
}

/* note: one line on stderr, with SYMVIRT_PMPI_LOG=1, naming the rank and
 * the collective (the same index on every rank); one write, so that the
 * ranks' lines (all on one stderr under mpirun) do not interleave. */
static void note(const char *fmt, const char *arg)
{
	char line[256], msg[128];
	int n;

	if (!logging)
		return;
	snprintf(msg, sizeof msg, fmt, arg);
	n = snprintf(line, sizeof line, "symvirt-pmpi: rank %d: collective %lu: %s\n", rank, ncoll, msg);
	if (n > 0 && write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1) < 0)
		logging = 0;
}

/* Drop the hook rather than the program: the computation matters more than
 * cooperating with symvirt, which then just does not wait for this rank. */
static void drop(const char *what)
{
	fprintf(stderr, "symvirt-pmpi: rank %d: %s: %s; going on without symvirt\n", rank, what, strerror(errno));
	symvirt_close(hook);
	hook = NULL;
}

static void open_hook(void)
{
	char name[65];
	snprintf(name, sizeof name, "%.40s.pmpi.r%d", program_invocation_short_name, rank);
	for (char *p = name; *p; p++)
		if (*p <= ' ' || *p > '~')
			*p = '_';
	hook = symvirt_open(name);
	if (hook == NULL && logging)
		fprintf(stderr, "symvirt-pmpi: rank %d: no guest agent (%s)\n", rank, strerror(errno));
}

/* First check: collective, so every rank takes the same decision. */
static void setup(void)
{
	int level = MPI_THREAD_SINGLE, have = 0, any = 0;

	state = OFF;
	interval_ms = env_long("SYMVIRT_PMPI_INTERVAL_MS", 100, 0);
	grace_ms = env_long("SYMVIRT_PMPI_GRACE_MS", 5000, 0);
	logging = env_long("SYMVIRT_PMPI_LOG", 0, 0) != 0;
	PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
	PMPI_Query_thread(&level);
	if (level == MPI_THREAD_MULTIPLE) {
		if (rank == 0)
			fprintf(stderr, "symvirt-pmpi: MPI_THREAD_MULTIPLE: no safe points\n");
		return; /* same decision on every rank: the level is global */
	}
	/* A disabled rank still takes part in the agreement below, which
	 * every rank must make. */
	if (env_long("SYMVIRT_PMPI_DISABLE", 0, 0) == 0)
		open_hook();
	have = hook != NULL;
	if (PMPI_Comm_dup(MPI_COMM_WORLD, &priv) != MPI_SUCCESS ||
	    PMPI_Allreduce(&have, &any, 1, MPI_INT, MPI_MAX, priv) != MPI_SUCCESS)
		return; /* errors abort by default; with a handler set, stay out */
	if (!any) {
		PMPI_Comm_free(&priv);
		return;
	}
	PMPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, MPI_COMM_NULL_DELETE_FN, &congruent_key, NULL);
	state = ON;
	if (logging)
		fprintf(stderr, "symvirt-pmpi: rank %d: safe points on (hook %s, every ~%ld ms)\n", rank,
			hook ? "registered" : "absent", interval_ms);
}

/* Whether comm holds every rank of MPI_COMM_WORLD in the same order; cached
 * on the communicator (freed with it). */
static int world_like(MPI_Comm comm)
{
	int flag = 0, inter = 0, result;
	void *val;

	if (comm == MPI_COMM_WORLD)
		return 1;
	if (comm == MPI_COMM_NULL || comm == MPI_COMM_SELF)
		return 0;
	if (congruent_key != MPI_KEYVAL_INVALID &&
	    PMPI_Comm_get_attr(comm, congruent_key, &val, &flag) == MPI_SUCCESS && flag)
		return (int)(long)val;
	if (PMPI_Comm_test_inter(comm, &inter) != MPI_SUCCESS || inter)
		result = 0;
	else if (PMPI_Comm_compare(comm, MPI_COMM_WORLD, &result) == MPI_SUCCESS)
		result = result == MPI_IDENT || result == MPI_CONGRUENT;
	else
		result = 0;
	if (congruent_key != MPI_KEYVAL_INVALID)
		PMPI_Comm_set_attr(comm, congruent_key, (void *)(long)result);
	return result;
}

static int local_pending(void)
{
	char op[64];
	int r;
	if (hook == NULL)
		return 0;
	if ((r = symvirt_poll(hook, op, sizeof op)) < 0) {
		drop("symvirt_poll");
		return 0;
	}
	if (r == 1)
		note("%s pending", op);
	return r;
}

static void sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

/* Another rank has an operation pending: give this rank's agent grace_ms to
 * show it too (a coordinated operation reaches each VM separately). An
 * operation that does not concern this VM (one VM migrating) costs the wait
 * once. */
static int await_pending(void)
{
	for (long waited = 0; hook != NULL && waited < grace_ms; waited += 5) {
		int r = local_pending();
		if (r != 0)
			return r;
		sleep_ms(5);
	}
	return 0;
}

/* Rank 0's proposal for the gap to the next check: doubled while checks
 * come faster than half the interval, halved when slower than twice it. */
static long propose_gap(void)
{
	double now = PMPI_Wtime(), ms = (now - last_check) * 1000;
	long g = gap;

	last_check = now;
	if (ms < interval_ms / 2.0 && g < (1L << 24))
		g *= 2;
	else if (ms > interval_ms * 2.0 && g > 1)
		g /= 2;
	return g;
}

static void check(void)
{
	long in[2], out[2] = {0, 1};
	int mine;
	char outcome[64];

	mine = local_pending();
	in[0] = mine;
	in[1] = rank == 0 ? propose_gap() : 0;
	if (PMPI_Allreduce(in, out, 2, MPI_LONG, MPI_MAX, priv) != MPI_SUCCESS)
		out[0] = 0, out[1] = 1;
	gap = out[1] > 0 ? out[1] : 1;
	next_check = ncoll + (unsigned long)gap - 1; /* ncoll already counts this one */
	if (out[0] == 0)
		return;
	if (!mine)
		mine = await_pending();
	PMPI_Barrier(priv);
	if (!mine)
		return;
	note("sync%s", "");
	if (symvirt_sync(hook, outcome, sizeof outcome) < 0) {
		drop("symvirt_sync");
		return;
	}
	nsync++;
	note("outcome %s", outcome);
}

void symvirt_pmpi_safepoint(MPI_Comm comm)
{
	if (state == OFF || busy)
		return;
	busy = 1;
	/* Set up at the first collective every rank makes: a world-like one
	 * (MPI_Comm_compare is local). */
	if (state == UNINIT && world_like(comm))
		setup();
	if (state == ON && world_like(comm) && ncoll++ == next_check)
		check();
	busy = 0;
}

void symvirt_pmpi_finalize(void)
{
	if (state == ON && logging)
		fprintf(stderr, "symvirt-pmpi: rank %d: finalize after %lu collectives, %lu sync(s)\n", rank, ncoll, nsync);
	symvirt_close(hook);
	hook = NULL;
	if (priv != MPI_COMM_NULL)
		PMPI_Comm_free(&priv);
	if (congruent_key != MPI_KEYVAL_INVALID)
		PMPI_Comm_free_keyval(&congruent_key);
	state = OFF;
}
