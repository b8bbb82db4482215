/* symvirt-pmpi: safe points for an unmodified MPI program (see safepoint.c). */
#ifndef SYMVIRT_PMPI_SAFEPOINT_H
#define SYMVIRT_PMPI_SAFEPOINT_H

#include <mpi.h>

/* Called by every intercepted blocking collective before it runs. */
__attribute__((visibility("hidden"))) void symvirt_pmpi_safepoint(MPI_Comm comm);

/* Called before MPI_Finalize: unregisters from the guest agent. */
__attribute__((visibility("hidden"))) void symvirt_pmpi_finalize(void);

#endif
