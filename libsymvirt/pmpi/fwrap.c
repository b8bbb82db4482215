//go:build ignore

// (The line above keeps the go tool from treating this directory, which
// holds pmpi_test.go, as a cgo package: the Makefile builds the C.)

/*
 * symvirt-pmpi: the Fortran entry points. Open MPI's Fortran bindings call
 * the C profiling layer (PMPI_Allreduce), not MPI_Allreduce, so the C
 * wrappers never see a Fortran program's collectives: these do.
 *
 * - mpif.h and "use mpi" call mpi_allreduce_ (gfortran's name; the other
 *   manglings are covered too) in libmpi_mpifh;
 * - "use mpi_f08" calls mpi_allreduce_f08_ in libmpi_usempif08, which calls
 *   ompi_allreduce_f in libmpi_mpifh through the PLT: interposed here.
 * Each wrapper checks, then calls the definition it shadows (dlsym
 * RTLD_NEXT), so a C-only program that never loads libmpi_mpifh is fine.
 * Fortran passes every argument by reference and collectives take no
 * character argument, so every wrapper takes pointers only.
 */
#define _GNU_SOURCE /* RTLD_NEXT */
#include "safepoint.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void *next(const char *sym)
{
	void *f = dlsym(RTLD_NEXT, sym);
	if (f == NULL) {
		fprintf(stderr, "symvirt-pmpi: %s: no definition after this library\n", sym);
		abort();
	}
	return f;
}

static void fcheck(void *comm)
{
	symvirt_pmpi_safepoint(PMPI_Comm_f2c(*(MPI_Fint *)comm));
}

#define P2 void *a0, void *a1
#define P6 P2, void *a2, void *a3, void *a4, void *a5
#define P7 P6, void *a6
#define P8 P7, void *a7
#define P9 P8, void *a8
#define P10 P9, void *a9
#define A2 a0, a1
#define A6 A2, a2, a3, a4, a5
#define A7 A6, a6
#define A8 A7, a7
#define A9 A8, a8
#define A10 A9, a9

/* WRAP1(symbol, arity, index of the comm argument) */
#define WRAP1(sym, n, ci)                                   \
	void sym(P##n);                                     \
	void sym(P##n)                                      \
	{                                                   \
		static void (*f)(P##n);                     \
		if (f == NULL)                              \
			*(void **)&f = next(#sym);          \
		fcheck(a##ci);                              \
		f(A##n);                                    \
	}

#define WRAP(name, n, ci)                      \
	WRAP1(mpi_##name, n, ci)               \
	WRAP1(mpi_##name##_, n, ci)            \
	WRAP1(mpi_##name##__, n, ci)           \
	WRAP1(ompi_##name##_f, n, ci)

WRAP(barrier, 2, 0)
WRAP(bcast, 6, 4)
WRAP(reduce, 8, 6)
WRAP(allreduce, 7, 5)
WRAP(gather, 9, 7)
WRAP(gatherv, 10, 8)
WRAP(scatter, 9, 7)
WRAP(scatterv, 10, 8)
WRAP(allgather, 8, 6)
WRAP(allgatherv, 9, 7)
WRAP(alltoall, 8, 6)
WRAP(alltoallv, 10, 8)
WRAP(reduce_scatter_block, 7, 5)
WRAP(scan, 7, 5)

#define FINALIZE(sym)                               \
	void sym(void *ierr);                       \
	void sym(void *ierr)                        \
	{                                           \
		static void (*f)(void *);           \
		if (f == NULL)                      \
			*(void **)&f = next(#sym);  \
		symvirt_pmpi_finalize();            \
		f(ierr);                            \
	}

FINALIZE(mpi_finalize)
FINALIZE(mpi_finalize_)
FINALIZE(mpi_finalize__)
FINALIZE(ompi_finalize_f)
