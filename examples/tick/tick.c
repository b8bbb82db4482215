/*
 * tick: a guest-side timestamp loop. Every period it writes one newline
 * to stdout (the serial console in the tests). The host timestamps each
 * write as it arrives: a gap between two on the host's clock is a time
 * the guest could not run, whatever its own clock says (under TCG the
 * guest's clock stops with its vCPUs, so the guest alone cannot see a
 * pause of its vCPUs). One byte, because the emulated UART costs a write
 * on the host per byte: with a timestamp per line, four ticking TCG
 * guests kept two host cores busy.
 *
 * It runs at a real-time priority (SCHED_FIFO) when it may, so that the
 * guest's own work (its agent, hooks, interrupts of a hot-plugged NIC)
 * does not show as a gap: what is left is what the guest could not help,
 * the vCPUs standing still or stalled on the host.
 *
 * usage: tick [period_us]   (default 1000)
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long period = argc > 1 ? atol(argv[1]) : 1000;
	if (period <= 0 || period > 1000000) {
		fprintf(stderr, "tick: period %s: want 1..1000000 microseconds\n", argv[1]);
		return 2;
	}
	struct sched_param sp = {.sched_priority = 50};
	if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0)
		perror("tick: SCHED_FIFO (ticking at normal priority)");
	struct timespec next, now;
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (;;) {
		if (write(1, "\n", 1) != 1)
			return 1;
		next.tv_nsec += period * 1000;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		/* After a pause, do not burst to catch up: tick from now on. */
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec > next.tv_nsec))
			next = now;
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
	}
}
