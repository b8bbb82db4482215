//go:build ignore

// (The line above keeps the go tool from treating this directory, which
// holds Go tests, as a cgo package: jacobi.c is built by the Makefile.)

/* jacobi: a 1-D Jacobi stencil over MPI that lets symvirt checkpoint,
 * restore and migrate its VMs at iteration boundaries.
 *
 *   mpirun -np 4 jacobi [-n POINTS] [-i ITERATIONS] [-d DELAY_MS]
 *                       [-H HOLD_ITER -f HOLD_FILE] [-p PAUSE_S]
 *
 * The grid (POINTS interior points, u = 1 left of it, 0 right of it, 0
 * inside at the start) is split in blocks between the ranks; each iteration
 * exchanges one halo point with each neighbour, updates u[i] = (u[i-1] +
 * u[i+1]) / 2 and sums the squared change over every rank (MPI_Allreduce).
 * The update is purely local once the halos are in, so the final grid is
 * the same bit for bit whatever the number of VMs, pauses or restarts: the
 * checksum (FNV-1a 64 of the grid's bytes, gathered in rank order) is the
 * result to compare with an undisturbed run.
 *
 * symvirt: every rank registers with the guest agent (libsymvirt; without
 * an agent the hook is off and the program runs the same). At each
 * iteration boundary each rank polls; the ranks agree (MPI_Allreduce MAX)
 * whether any of them has an operation pending; if one has, they all
 * MPI_Barrier (no message of theirs is in flight any more) and each rank
 * with an operation calls symvirt_sync, where its VM may be stopped, saved,
 * moved or restored; then they meet in an MPI_Ibarrier, while a rank that
 * saw nothing keeps polling and syncs if its agent sees the operation after
 * all (the job's VMs are prepared together, but not at the same instant; a
 * one-VM operation never reaches the others, whose wait then ends with
 * it).
 *
 * Timestamps: every iteration boundary is timed (CLOCK_REALTIME, so that a
 * restored rank's gap covers the time its VM was away once the agent has
 * stepped the guest clock). At the end rank 0 prints, for every rank, one
 * line "jacobi-pauses {JSON}" with each gap above PAUSE_S seconds (the
 * iteration, when it began, how long, and the operation and outcome if the
 * rank synced there), then "jacobi-checksum HEX" and "jacobi-done".
 *
 * HOLD_ITER/HOLD_FILE: at iteration HOLD_ITER the ranks keep meeting at the
 * boundary (so operations still go ahead) without computing until rank 0
 * sees HOLD_FILE: a test lets the run finish only after its scenario.
 * Rank 0 prints "jacobi-iter N residual R" every 50 iterations and
 * "jacobi-hold N" every 2 s or so while it holds.
 */
#include "symvirt.h"

#include <errno.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAUSE_JSON_MAX 65536

struct pause {
	long iter;
	double at, seconds;
	char op[32], outcome[32];
};

struct opts {
	long n, iters, hold_iter;
	double delay_s, pause_s;
	const char *hold_file;
};

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
	struct timespec t = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

static void usage(void)
{
	fprintf(stderr, "usage: jacobi [-n POINTS] [-i ITERATIONS] [-d DELAY_MS] "
			"[-H HOLD_ITER -f HOLD_FILE] [-p PAUSE_S]\n");
	MPI_Abort(MPI_COMM_WORLD, 2);
}

static struct opts parse(int argc, char **argv)
{
	struct opts o = {.n = 4096, .iters = 1000, .hold_iter = -1, .pause_s = 0.5};
	int c;
	while ((c = getopt(argc, argv, "n:i:d:H:f:p:")) != -1) {
		switch (c) {
		case 'n': o.n = atol(optarg); break;
		case 'i': o.iters = atol(optarg); break;
		case 'd': o.delay_s = atof(optarg) / 1000; break;
		case 'H': o.hold_iter = atol(optarg); break;
		case 'f': o.hold_file = optarg; break;
		case 'p': o.pause_s = atof(optarg); break;
		default: usage();
		}
	}
	if (o.n < 1 || o.iters < 0 || (o.hold_iter >= 0 && !o.hold_file))
		usage();
	return o;
}

/* The hook is best effort: an error drops it and the computation goes on
 * (symvirt then just stops waiting for this rank). */
static symvirt_t *drop(symvirt_t *s, int rank, const char *what)
{
	fprintf(stderr, "jacobi[%d]: %s: %s; going on without symvirt\n", rank, what, strerror(errno));
	symvirt_close(s);
	return NULL;
}

struct hook {
	symvirt_t *s;
	int rank;
	char op[32], outcome[32];
	int synced;
};

static int poll_hook(struct hook *h)
{
	if (!h->s)
		return 0;
	int r = symvirt_poll(h->s, h->op, sizeof h->op);
	if (r < 0)
		h->s = drop(h->s, h->rank, "symvirt_poll");
	return r == 1;
}

static void sync_hook(struct hook *h)
{
	int r = symvirt_sync(h->s, NULL, 0);
	if (r < 0) {
		h->s = drop(h->s, h->rank, "symvirt_sync");
		return;
	}
	snprintf(h->outcome, sizeof h->outcome, "%s", symvirt_outcome_name(r));
	h->synced = 1;
}

/* boundary is the safe point: it returns whether rank 0 holds the run. */
static int boundary(struct hook *h, int hold)
{
	h->synced = 0;
	int mine[2] = {poll_hook(h), hold}, any[2];
	MPI_Allreduce(mine, any, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
	if (!any[0])
		return any[1];
	MPI_Barrier(MPI_COMM_WORLD);
	if (mine[0])
		sync_hook(h);
	/* All meet again once the ranks with an operation are back from it.
	 * Meanwhile a rank whose agent showed nothing keeps asking: the job's
	 * VMs are prepared together but not at the same instant (and the
	 * operation waits for every one of them), while a one-VM operation
	 * never reaches the others, whose barrier then ends with it. */
	MPI_Request back;
	int flag = 0;
	MPI_Ibarrier(MPI_COMM_WORLD, &back);
	while (!mine[0] && h->s) {
		MPI_Test(&back, &flag, MPI_STATUS_IGNORE);
		if (flag)
			break;
		if ((mine[0] = poll_hook(h)))
			sync_hook(h);
		else
			sleep_s(0.01);
	}
	if (!flag)
		MPI_Wait(&back, MPI_STATUS_IGNORE);
	return any[1];
}

/* step does one Jacobi iteration on u[0..n+1] (halos at 0 and n+1) into v
 * and returns the local sum of squared changes. */
static double step(double *u, double *v, long n, int rank, int size)
{
	int left = rank > 0 ? rank - 1 : MPI_PROC_NULL;
	int right = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;
	MPI_Sendrecv(&u[1], 1, MPI_DOUBLE, left, 0, &u[n + 1], 1, MPI_DOUBLE, right, 0,
		     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
	MPI_Sendrecv(&u[n], 1, MPI_DOUBLE, right, 1, &u[0], 1, MPI_DOUBLE, left, 1,
		     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
	double res = 0;
	for (long i = 1; i <= n; i++) {
		v[i] = 0.5 * (u[i - 1] + u[i + 1]);
		res += (v[i] - u[i]) * (v[i] - u[i]);
	}
	v[0] = u[0];
	v[n + 1] = u[n + 1];
	return res;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t len)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < len; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* pauses_json writes this rank's report into buf. */
static void pauses_json(char *buf, size_t len, int rank, const char *host, long iters,
			const struct pause *p, int np)
{
	size_t off = snprintf(buf, len, "{\"rank\":%d,\"host\":\"%s\",\"iterations\":%ld,\"pauses\":[",
			      rank, host, iters);
	for (int i = 0; i < np && off < len; i++)
		off += snprintf(buf + off, len - off,
				"%s{\"iter\":%ld,\"at\":%.3f,\"seconds\":%.3f,\"op\":\"%s\",\"outcome\":\"%s\"}",
				i ? "," : "", p[i].iter, p[i].at, p[i].seconds, p[i].op, p[i].outcome);
	if (off < len)
		snprintf(buf + off, len - off, "]}");
}

/* report: rank 0 prints every rank's pauses and the grid's checksum. */
static void report(double *u, long n, int rank, int size, const char *json)
{
	char *all = rank == 0 ? malloc((size_t)size * PAUSE_JSON_MAX) : NULL;
	MPI_Gather(json, PAUSE_JSON_MAX, MPI_CHAR, all, PAUSE_JSON_MAX, MPI_CHAR, 0, MPI_COMM_WORLD);
	double *grid = rank == 0 ? malloc((size_t)size * n * sizeof *grid) : NULL;
	MPI_Gather(&u[1], n, MPI_DOUBLE, grid, n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
	if (rank != 0)
		return;
	for (int r = 0; r < size; r++)
		printf("jacobi-pauses %s\n", all + (size_t)r * PAUSE_JSON_MAX);
	uint64_t h = fnv1a(0xcbf29ce484222325ULL, grid, (size_t)size * n * sizeof *grid);
	printf("jacobi-checksum %016llx\n", (unsigned long long)h);
	printf("jacobi-done\n");
	free(all);
	free(grid);
}

int main(int argc, char **argv)
{
	int rank, size;
	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct opts o = parse(argc, argv);
	if (o.n % size) {
		if (rank == 0)
			fprintf(stderr, "jacobi: %ld points do not split evenly between %d ranks\n", o.n, size);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	long n = o.n / size;
	double *u = calloc(n + 2, sizeof *u), *v = calloc(n + 2, sizeof *v);
	if (rank == 0)
		u[0] = v[0] = 1;

	char host[64] = "", name[32];
	gethostname(host, sizeof host - 1);
	snprintf(name, sizeof name, "jacobi-%d", rank);
	struct hook h = {.rank = rank};
	if ((h.s = symvirt_open(name)) == NULL)
		fprintf(stderr, "jacobi[%d]: no symvirt agent (%s): running without the hook\n", rank,
			strerror(errno));

	int cap = 64, np = 0;
	struct pause *pauses = malloc(cap * sizeof *pauses);
	/* A gap is the time from one boundary to the next, less the sleeps the
	 * program chose (DELAY_MS, holding). */
	double prev = now(), slept = 0, res = 0;
	long held_rounds = 0;
	for (long it = 0; it < o.iters;) {
		int want_hold = rank == 0 && o.hold_iter >= 0 && it >= o.hold_iter && access(o.hold_file, F_OK) != 0;
		int held = boundary(&h, want_hold);
		double t = now();
		if (t - prev - slept >= o.pause_s || h.synced) {
			if (np == cap)
				pauses = realloc(pauses, (cap *= 2) * sizeof *pauses);
			struct pause *p = &pauses[np++];
			*p = (struct pause){.iter = it, .at = prev, .seconds = t - prev - slept};
			if (h.synced) {
				snprintf(p->op, sizeof p->op, "%s", h.op);
				snprintf(p->outcome, sizeof p->outcome, "%s", h.outcome);
			}
		}
		prev = t;
		slept = held ? 0.05 : o.delay_s;
		if (held) {
			/* A sign of life while holding (every rank takes part in
			 * each round): a watcher tells a held run from a stuck one. */
			if (rank == 0 && held_rounds++ % 40 == 0)
				printf("jacobi-hold %ld\n", it);
			sleep_s(slept);
			continue;
		}
		double local = step(u, v, n, rank, size);
		MPI_Allreduce(&local, &res, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
		double *tmp = u;
		u = v;
		v = tmp;
		it++;
		if (rank == 0 && (it % 50 == 0 || it == o.iters))
			printf("jacobi-iter %ld residual %.6e\n", it, res);
		if (slept > 0)
			sleep_s(slept);
	}

	char *json = calloc(1, PAUSE_JSON_MAX);
	pauses_json(json, PAUSE_JSON_MAX, rank, host, o.iters, pauses, np);
	report(u, n, rank, size, json);
	symvirt_close(h.s);
	MPI_Finalize();
	return 0;
}
