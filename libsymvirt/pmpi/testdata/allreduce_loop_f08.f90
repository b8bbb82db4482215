! allreduce_loop (Fortran, "use mpi_f08"): the Fortran twin of allreduce_loop.c,
! knowing nothing of symvirt, for the symvirt-pmpi tests of the Fortran
! entry points.   allreduce_loop ITER SLEEP_MS
program allreduce_loop
  use mpi_f08
  implicit none
  integer :: rank, ierr, i, iters, sleep_ms
  integer :: x, total
  character(len=32) :: arg
  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call get_command_argument(1, arg)
  read (arg, *) iters
  call get_command_argument(2, arg)
  read (arg, *) sleep_ms
  total = 0
  do i = 0, iters - 1
    x = mod(total * 31 + rank * 17 + i, 1000003)
    call MPI_Allreduce(x, total, 1, MPI_INTEGER, MPI_SUM, MPI_COMM_WORLD, ierr)
    total = mod(total, 1000003)
    if (rank == 0 .and. mod(i, 10) == 0) then
      write (*, '(a,i0,a,i0)') 'iteration ', i, ' value ', total
      flush (6)
    end if
    if (sleep_ms > 0) call sleep_ms_(sleep_ms)
  end do
  if (rank == 0) write (*, '(a,i0)') 'final ', total
  call MPI_Finalize(ierr)
contains
  subroutine sleep_ms_(ms)
    use, intrinsic :: iso_c_binding, only: c_int
    integer, intent(in) :: ms
    interface
      integer(c_int) function usleep(us) bind(C, name='usleep')
        import :: c_int
        integer(c_int), value :: us
      end function
    end interface
    integer(c_int) :: rc
    rc = usleep(int(ms * 1000, c_int))
  end subroutine
end program
