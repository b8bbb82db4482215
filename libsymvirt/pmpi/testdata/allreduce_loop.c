/* allreduce_loop: an MPI program that knows nothing of symvirt, for the
 * symvirt-pmpi tests: ITER iterations of a deterministic MPI_Allreduce,
 * sleeping SLEEP_MS per iteration; rank 0 prints a line every 10
 * iterations and the final value, and on stderr the loop's time (for the
 * overhead benchmark).
 *   allreduce_loop ITER [SLEEP_MS [dup]]
 * dup: the Allreduce runs on a duplicate of MPI_COMM_WORLD (congruent: a
 * safe point too), and each iteration also reduces over half of the ranks
 * (a communicator that is not: never a safe point).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
	long iters = argc > 1 ? atol(argv[1]) : 100;
	long sleep_ms = argc > 2 ? atol(argv[2]) : 0;
	int rank, dup = argc > 3 && strcmp(argv[3], "dup") == 0;
	unsigned long x, sum = 0, half_sum;
	MPI_Comm comm = MPI_COMM_WORLD, half = MPI_COMM_NULL;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	if (dup) {
		int size;
		MPI_Comm_size(MPI_COMM_WORLD, &size);
		MPI_Comm_dup(MPI_COMM_WORLD, &comm);
		MPI_Comm_split(MPI_COMM_WORLD, rank < size / 2, rank, &half);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	double t0 = MPI_Wtime();
	for (long i = 0; i < iters; i++) {
		x = (sum * 6364136223846793005UL + (unsigned long)rank * 1442695040888963407UL + (unsigned long)i) >> 7;
		MPI_Allreduce(&x, &sum, 1, MPI_UNSIGNED_LONG, MPI_BXOR, comm);
		if (half != MPI_COMM_NULL) {
			MPI_Allreduce(&sum, &half_sum, 1, MPI_UNSIGNED_LONG, MPI_MAX, half);
			sum ^= half_sum >> 3;
		}
		if (rank == 0 && i % 10 == 0)
			printf("iteration %ld value %lu\n", i, sum);
		if (sleep_ms > 0) {
			struct timespec t = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
			nanosleep(&t, NULL);
		}
	}
	if (rank == 0) {
		fprintf(stderr, "loop_seconds %.6f\n", MPI_Wtime() - t0);
		printf("final %lu\n", sum);
	}
	MPI_Finalize();
	return 0;
}
