# mk/guest-mpi.mk: the MPI guest and example (included by Makefile).
#
#   make examples/mpi/jacobi    the MPI example (mpicc, libopenmpi-dev)
#   make guest-mpi              build/guest-mpi/ (scripts/mkguest-mpi: Debian 12
#                               + Open MPI + guestd under systemd; a no-op
#                               when up to date; first build ~2 min); it
#                               holds the Fortran example, libsymvirt-pmpi.so
#                               (libsymvirt-mpi) and Debian's lammps too

.PHONY: guest-mpi examples/mpi/jacobi

examples/mpi/jacobi: deps
	@$(MAKE) -s -C examples/mpi

guest-mpi: guest build/symvirt-static examples/mpi/jacobi libsymvirt-mpi
	@scripts/mkguest-mpi
