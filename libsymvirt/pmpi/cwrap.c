//go:build ignore

// (The line above keeps the go tool from treating this directory, which
// holds pmpi_test.go, as a cgo package: the Makefile builds the C.)

/* symvirt-pmpi: the C entry points. Each blocking collective takes a safe
 * point check first, then runs through the profiling interface. */
#include "safepoint.h"

int MPI_Barrier(MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Barrier(comm);
}

int MPI_Bcast(void *buf, int count, MPI_Datatype dt, int root, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Bcast(buf, count, dt, root, comm);
}

int MPI_Reduce(const void *sb, void *rb, int count, MPI_Datatype dt, MPI_Op op, int root, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Reduce(sb, rb, count, dt, op, root, comm);
}

int MPI_Allreduce(const void *sb, void *rb, int count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Allreduce(sb, rb, count, dt, op, comm);
}

int MPI_Gather(const void *sb, int sc, MPI_Datatype st, void *rb, int rc, MPI_Datatype rt, int root, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Gather(sb, sc, st, rb, rc, rt, root, comm);
}

int MPI_Gatherv(const void *sb, int sc, MPI_Datatype st, void *rb, const int rcs[], const int displs[],
		MPI_Datatype rt, int root, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Gatherv(sb, sc, st, rb, rcs, displs, rt, root, comm);
}

int MPI_Scatter(const void *sb, int sc, MPI_Datatype st, void *rb, int rc, MPI_Datatype rt, int root, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Scatter(sb, sc, st, rb, rc, rt, root, comm);
}

int MPI_Scatterv(const void *sb, const int scs[], const int displs[], MPI_Datatype st, void *rb, int rc,
		 MPI_Datatype rt, int root, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Scatterv(sb, scs, displs, st, rb, rc, rt, root, comm);
}

int MPI_Allgather(const void *sb, int sc, MPI_Datatype st, void *rb, int rc, MPI_Datatype rt, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Allgather(sb, sc, st, rb, rc, rt, comm);
}

int MPI_Allgatherv(const void *sb, int sc, MPI_Datatype st, void *rb, const int rcs[], const int displs[],
		   MPI_Datatype rt, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Allgatherv(sb, sc, st, rb, rcs, displs, rt, comm);
}

int MPI_Alltoall(const void *sb, int sc, MPI_Datatype st, void *rb, int rc, MPI_Datatype rt, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Alltoall(sb, sc, st, rb, rc, rt, comm);
}

int MPI_Alltoallv(const void *sb, const int scs[], const int sdispls[], MPI_Datatype st, void *rb,
		  const int rcs[], const int rdispls[], MPI_Datatype rt, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Alltoallv(sb, scs, sdispls, st, rb, rcs, rdispls, rt, comm);
}

int MPI_Reduce_scatter_block(const void *sb, void *rb, int rc, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Reduce_scatter_block(sb, rb, rc, dt, op, comm);
}

int MPI_Scan(const void *sb, void *rb, int count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	symvirt_pmpi_safepoint(comm);
	return PMPI_Scan(sb, rb, count, dt, op, comm);
}

int MPI_Finalize(void)
{
	symvirt_pmpi_finalize();
	return PMPI_Finalize();
}
