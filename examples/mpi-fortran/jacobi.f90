! jacobi (Fortran): a 1-D Jacobi stencil over MPI that lets symvirt
! checkpoint, restore and migrate its VMs at iteration boundaries; the
! Fortran twin of examples/mpi/jacobi.c, with the same options, output and
! checksum (the same grid bit for bit, so the two checksums agree).
!
!   mpirun -np 4 jacobi-f [-n POINTS] [-i ITERATIONS] [-d DELAY_MS]
!                         [-H HOLD_ITER -f HOLD_FILE] [-p PAUSE_S] [-w WAIT_S]
!
! The grid (POINTS interior points, u = 1 left of it, 0 right of it, 0
! inside at the start) is split in blocks between the ranks; each iteration
! exchanges one halo point with each neighbour, updates
! u(i) = (u(i-1) + u(i+1)) / 2 and sums the squared change over every rank
! (MPI_Allreduce). The final grid does not depend on pauses or restarts:
! its checksum (FNV-1a 64 of the grid's bytes in rank order) is the result
! to compare with an undisturbed run.
!
! symvirt (module symvirt, libsymvirt/fortran): every rank registers with
! the guest agent (without one the hook is off and the run is the same). At
! each iteration boundary each rank polls; the ranks agree (MPI_Allreduce
! MAX) whether any has an operation pending; if one has, they MPI_Barrier, a
! rank that saw nothing yet waits up to WAIT_S seconds for its own agent to
! see it (a one-VM operation never reaches the others), and each rank with
! an operation calls symvirt_sync.
!
! Output (rank 0): "jacobi-iter N residual R" every 50 iterations, then one
! "jacobi-pauses {JSON}" line per rank (each gap between boundaries above
! PAUSE_S seconds, or where the rank synced: iteration, start, seconds,
! operation, outcome), "jacobi-checksum HEX" and "jacobi-done".
! HOLD_ITER/HOLD_FILE: from iteration HOLD_ITER the ranks keep meeting at
! the boundary without computing until rank 0 sees HOLD_FILE (a test ends
! the run only after its scenario).
program jacobi
  use mpi
  use symvirt
  use, intrinsic :: iso_fortran_env, only: int8, int64, real64, error_unit
  use, intrinsic :: iso_c_binding, only: c_int, c_long, c_null_ptr
  implicit none

  integer, parameter :: JSON_MAX = 8192, MAX_PAUSES = 64
  type :: pause_t
    integer(int64) :: iter
    real(real64) :: at, seconds
    character(len=32) :: op, outcome
  end type

  integer(int64) :: npts = 4096, iters = 1000, hold_iter = -1, n, it
  real(real64) :: delay_s = 0, pause_s = 0.5d0, wait_s = 5
  character(len=4096) :: hold_file = ''
  integer :: rank, nranks, ierr, npause, held
  real(real64), allocatable :: u(:), v(:), tmp(:)
  real(real64) :: prev, t, slept, res, local
  type(pause_t) :: pauses(MAX_PAUSES)
  type(c_ptr) :: h
  character(len=32) :: op, outcome, name
  character(len=64) :: host
  character(len=JSON_MAX) :: json
  logical :: synced, want_hold, exists

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks, ierr)
  call parse_args()
  if (mod(npts, int(nranks, int64)) /= 0) then
    if (rank == 0) write (error_unit, '(a,i0,a,i0,a)') 'jacobi-f: ', npts, &
         ' points do not split evenly between ', nranks, ' ranks'
    call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
  end if
  n = npts / nranks
  allocate(u(0:n + 1), v(0:n + 1))
  u = 0
  v = 0
  if (rank == 0) then
    u(0) = 1
    v(0) = 1
  end if

  host = ''
  call get_environment_variable('HOSTNAME', host)
  if (host == '') call hostname_from_file(host)
  write (name, '(a,i0)') 'jacobi-f-', rank
  h = symvirt_open(name)
  if (.not. c_associated(h)) write (error_unit, '(a,i0,a)') 'jacobi-f[', rank, &
       ']: no symvirt agent: running without the hook'

  npause = 0
  prev = now()
  slept = 0
  res = 0
  it = 0
  do while (it < iters)
    want_hold = .false.
    if (rank == 0 .and. hold_iter >= 0 .and. it >= hold_iter) then
      inquire (file=trim(hold_file), exist=exists)
      want_hold = .not. exists
    end if
    held = boundary(want_hold)
    t = now()
    if (t - prev - slept >= pause_s .or. synced) call record_pause()
    prev = t
    if (held /= 0) then
      slept = 0.05d0
      call sleep_s(slept)
      cycle
    end if
    slept = delay_s
    local = step()
    call MPI_Allreduce(local, res, 1, MPI_DOUBLE_PRECISION, MPI_SUM, MPI_COMM_WORLD, ierr)
    call move_alloc(u, tmp)
    call move_alloc(v, u)
    call move_alloc(tmp, v)
    it = it + 1
    if (rank == 0 .and. (mod(it, 50_int64) == 0 .or. it == iters)) &
         write (*, '(a,i0,a,es12.6e2)') 'jacobi-iter ', it, ' residual ', res
    if (slept > 0) call sleep_s(slept)
  end do

  call pauses_json()
  call report()
  call symvirt_close(h)
  call MPI_Finalize(ierr)

contains

  ! The safe point: returns whether rank 0 holds the run (1) or not (0).
  integer function boundary(hold) result(any_hold)
    logical, intent(in) :: hold
    integer :: mine(2), any(2), r
    real(real64) :: end
    synced = .false.
    mine = [0, merge(1, 0, hold)]
    if (c_associated(h)) then
      r = symvirt_poll(h, op)
      if (r < 0) call drop('symvirt_poll')
      if (r == 1) mine(1) = 1
    end if
    call MPI_Allreduce(mine, any, 2, MPI_INTEGER, MPI_MAX, MPI_COMM_WORLD, ierr)
    any_hold = any(2)
    if (any(1) == 0) return
    call MPI_Barrier(MPI_COMM_WORLD, ierr)
    end = now() + wait_s
    do while (c_associated(h) .and. mine(1) == 0 .and. now() < end)
      r = symvirt_poll(h, op)
      if (r < 0) call drop('symvirt_poll')
      if (r == 1) then
        mine(1) = 1
      else
        call sleep_s(0.01d0)
      end if
    end do
    if (mine(1) == 0 .or. .not. c_associated(h)) return
    r = symvirt_sync(h)
    if (r < 0) then
      call drop('symvirt_sync')
      return
    end if
    outcome = symvirt_outcome_name(r)
    synced = .true.
  end function

  ! The hook is best effort: an error drops it and the computation goes on.
  subroutine drop(what)
    character(len=*), intent(in) :: what
    write (error_unit, '(a,i0,3a)') 'jacobi-f[', rank, ']: ', what, &
         ' failed; going on without symvirt'
    call symvirt_close(h)
  end subroutine

  ! One Jacobi iteration on u(0:n+1) (halos at 0 and n+1) into v; returns
  ! the local sum of squared changes.
  real(real64) function step() result(r)
    integer :: left, right, st(MPI_STATUS_SIZE)
    integer(int64) :: i
    left = merge(rank - 1, MPI_PROC_NULL, rank > 0)
    right = merge(rank + 1, MPI_PROC_NULL, rank < nranks - 1)
    call MPI_Sendrecv(u(1), 1, MPI_DOUBLE_PRECISION, left, 0, u(n + 1), 1, &
         MPI_DOUBLE_PRECISION, right, 0, MPI_COMM_WORLD, st, ierr)
    call MPI_Sendrecv(u(n), 1, MPI_DOUBLE_PRECISION, right, 1, u(0), 1, &
         MPI_DOUBLE_PRECISION, left, 1, MPI_COMM_WORLD, st, ierr)
    r = 0
    do i = 1, n
      v(i) = 0.5d0 * (u(i - 1) + u(i + 1))
      r = r + (v(i) - u(i)) * (v(i) - u(i))
    end do
    v(0) = u(0)
    v(n + 1) = u(n + 1)
  end function

  subroutine record_pause()
    if (npause == MAX_PAUSES) return
    npause = npause + 1
    pauses(npause)%iter = it
    pauses(npause)%at = prev
    pauses(npause)%seconds = t - prev - slept
    pauses(npause)%op = ''
    pauses(npause)%outcome = ''
    if (synced) then
      pauses(npause)%op = op
      pauses(npause)%outcome = outcome
    end if
  end subroutine

  ! This rank's report, as the C example writes it.
  subroutine pauses_json()
    character(len=256) :: item
    integer :: i
    write (json, '(a,i0,3a,i0,a)') '{"rank":', rank, ',"host":"', trim(host), &
         '","iterations":', iters, ',"pauses":['
    do i = 1, npause
      write (item, '(a,a,i0,4a,5a)') merge(',', ' ', i > 1), '{"iter":', &
           pauses(i)%iter, ',"at":', fixed3(pauses(i)%at), ',"seconds":', fixed3(pauses(i)%seconds), &
           ',"op":"', trim(pauses(i)%op), '","outcome":"', trim(pauses(i)%outcome), '"}'
      json = trim(json) // trim(adjustl(item))
    end do
    json = trim(json) // ']}'
  end subroutine

  ! x with 3 decimals, as JSON wants it (f0.3 writes .5 for 0.5).
  function fixed3(x) result(str)
    real(real64), intent(in) :: x
    character(len=:), allocatable :: str
    character(len=32) :: buf
    write (buf, '(f0.3)') x
    str = trim(adjustl(buf))
    if (str(1:1) == '.') str = '0' // str
    if (str(1:2) == '-.') str = '-0' // str(2:)
  end function

  ! Rank 0 prints every rank's pauses and the grid's checksum.
  subroutine report()
    character(len=JSON_MAX), allocatable :: all(:)
    real(real64), allocatable :: grid(:)
    integer(int64) :: hi, lo
    integer :: r
    character(len=16) :: hex
    allocate(all(0:nranks - 1), grid(npts))
    call MPI_Gather(json, JSON_MAX, MPI_CHARACTER, all, JSON_MAX, MPI_CHARACTER, 0, &
         MPI_COMM_WORLD, ierr)
    call MPI_Gather(u(1:n), int(n), MPI_DOUBLE_PRECISION, grid, int(n), &
         MPI_DOUBLE_PRECISION, 0, MPI_COMM_WORLD, ierr)
    if (rank /= 0) return
    do r = 0, nranks - 1
      write (*, '(2a)') 'jacobi-pauses ', trim(all(r))
    end do
    call fnv1a(transfer(grid, [0_int8]), hi, lo)
    write (hex, '(z8.8,z8.8)') hi, lo
    do r = 1, len(hex) ! lower case, as C's %016llx
      if (hex(r:r) >= 'A' .and. hex(r:r) <= 'F') hex(r:r) = achar(iachar(hex(r:r)) + 32)
    end do
    write (*, '(2a)') 'jacobi-checksum ', hex
    write (*, '(a)') 'jacobi-done'
  end subroutine

  ! FNV-1a 64 of bytes, as two 32-bit halves (hi, lo): Fortran has no
  ! unsigned wrap-around, so the multiplication by the FNV prime 2**40 +
  ! 435 (mod 2**64) is done by halves, every product below 2**63.
  subroutine fnv1a(bytes, hi, lo)
    integer(int8), intent(in) :: bytes(:)
    integer(int64), intent(out) :: hi, lo
    integer(int64), parameter :: B32 = 2_int64**32, B24 = 2_int64**24, P = 435
    integer(int64) :: lo_p
    integer :: i
    hi = int(z'CBF29CE4', int64)
    lo = int(z'84222325', int64)
    do i = 1, size(bytes)
      lo = ieor(lo, iand(int(bytes(i), int64), 255_int64))
      lo_p = lo * P
      hi = mod(hi * P + lo_p / B32 + mod(lo, B24) * 256, B32)
      lo = mod(lo_p, B32)
    end do
  end subroutine

  ! The wall clock (as CLOCK_REALTIME in the C example), so that a restored
  ! rank's gap covers the time its VM was away once the agent has stepped
  ! the guest clock.
  real(real64) function now()
    type, bind(C) :: timeval
      integer(c_long) :: sec, usec
    end type
    interface
      integer(c_int) function gettimeofday(tv, tz) bind(C, name='gettimeofday')
        import :: timeval, c_int, c_ptr
        type(timeval), intent(out) :: tv
        type(c_ptr), value :: tz
      end function
    end interface
    type(timeval) :: tv
    if (gettimeofday(tv, c_null_ptr) /= 0) tv = timeval(0, 0)
    now = real(tv%sec, real64) + real(tv%usec, real64) / 1d6
  end function

  subroutine sleep_s(s)
    real(real64), intent(in) :: s
    interface
      integer(c_int) function usleep(us) bind(C, name='usleep')
        import :: c_int
        integer(c_int), value :: us
      end function
    end interface
    integer(c_int) :: rc
    rc = usleep(int(s * 1d6, c_int))
  end subroutine

  subroutine hostname_from_file(host)
    character(len=*), intent(inout) :: host
    integer :: u, ios
    open (newunit=u, file='/proc/sys/kernel/hostname', action='read', iostat=ios)
    if (ios /= 0) return
    read (u, '(a)', iostat=ios) host
    close (u)
  end subroutine

  subroutine parse_args()
    character(len=4096) :: flag, val
    integer :: i, ios
    i = 1
    do while (i <= command_argument_count())
      call get_command_argument(i, flag)
      call get_command_argument(i + 1, val)
      ios = 0
      select case (flag)
      case ('-n'); read (val, *, iostat=ios) npts
      case ('-i'); read (val, *, iostat=ios) iters
      case ('-d'); read (val, *, iostat=ios) delay_s; delay_s = delay_s / 1000
      case ('-H'); read (val, *, iostat=ios) hold_iter
      case ('-f'); hold_file = val
      case ('-p'); read (val, *, iostat=ios) pause_s
      case ('-w'); read (val, *, iostat=ios) wait_s
      case default; ios = 1
      end select
      if (ios /= 0 .or. i + 1 > command_argument_count()) call usage()
      i = i + 2
    end do
    if (npts < 1 .or. iters < 0 .or. (hold_iter >= 0 .and. hold_file == '')) call usage()
  end subroutine

  subroutine usage()
    if (rank == 0) write (error_unit, '(a)') 'usage: jacobi-f [-n POINTS] [-i ITERATIONS] ' // &
         '[-d DELAY_MS] [-H HOLD_ITER -f HOLD_FILE] [-p PAUSE_S] [-w WAIT_S]'
    call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
  end subroutine

end program jacobi
