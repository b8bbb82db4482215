! symvirt: Fortran binding of libsymvirt, the in-guest hook API (symvirt.h).
!
! An application registers with symvirt_open; from then on every checkpoint,
! restore or migration of its VM waits until it calls symvirt_sync at a safe
! point (e.g. an MPI rank after MPI_Barrier at an iteration boundary).
! symvirt_sync blocks until the operation is over and returns how it ended.
!
!   use symvirt
!   type(c_ptr) :: h
!   character(len=32) :: op
!   h = symvirt_open('myapp')                 ! c_associated(h): registered
!   if (symvirt_poll(h, op) == 1) then        ! op names the operation
!      r = symvirt_sync(h)                    ! r: SYMVIRT_CHECKPOINTED, ...
!   end if
!   call symvirt_close(h)
!
! Results are as in C: -1 is an error (the C errno is not visible here; the
! connection is then closed and every later call fails: close the handle
! and open a new one to register again). A handle of c_null_ptr (symvirt_open
! failed: no agent) is accepted by every procedure, which then returns -1
! (symvirt_poll, symvirt_sync, symvirt_wait) or does nothing (symvirt_close),
! so a program can keep one code path with or without symvirt.
! Build: compile this file with the program and link libsymvirt (-lsymvirt).
module symvirt
  use, intrinsic :: iso_c_binding, only: c_ptr, c_null_ptr, c_int, c_char, c_size_t, &
       c_null_char, c_associated, c_f_pointer
  implicit none
  private

  public :: c_ptr, c_associated
  public :: symvirt_open, symvirt_poll, symvirt_wait, symvirt_sync, symvirt_close
  public :: symvirt_outcome_name

  ! How an operation ended: the value symvirt_sync returns (enum symvirt_outcome).
  integer(c_int), parameter, public :: SYMVIRT_CHECKPOINTED = 0
  integer(c_int), parameter, public :: SYMVIRT_RESTORED = 1
  integer(c_int), parameter, public :: SYMVIRT_MIGRATED = 2
  integer(c_int), parameter, public :: SYMVIRT_REJUVENATED = 3
  integer(c_int), parameter, public :: SYMVIRT_ABORTED = 4
  integer(c_int), parameter, public :: SYMVIRT_FAILED = 5
  integer(c_int), parameter, public :: SYMVIRT_NONE = 6

  integer, parameter :: NAME_BUF = 128 ! operation and outcome names are short

  interface
    type(c_ptr) function c_open(name) bind(C, name='symvirt_open')
      import :: c_ptr, c_char
      character(kind=c_char), intent(in) :: name(*)
    end function
    integer(c_int) function c_poll(s, op, oplen) bind(C, name='symvirt_poll')
      import :: c_ptr, c_int, c_char, c_size_t
      type(c_ptr), value :: s
      character(kind=c_char), intent(out) :: op(*)
      integer(c_size_t), value :: oplen
    end function
    integer(c_int) function c_wait(s, op, oplen) bind(C, name='symvirt_wait')
      import :: c_ptr, c_int, c_char, c_size_t
      type(c_ptr), value :: s
      character(kind=c_char), intent(out) :: op(*)
      integer(c_size_t), value :: oplen
    end function
    integer(c_int) function c_sync(s, outcome, outlen) bind(C, name='symvirt_sync')
      import :: c_ptr, c_int, c_char, c_size_t
      type(c_ptr), value :: s
      character(kind=c_char), intent(out) :: outcome(*)
      integer(c_size_t), value :: outlen
    end function
    type(c_ptr) function c_outcome_name(outcome) bind(C, name='symvirt_outcome_name')
      import :: c_ptr, c_int
      integer(c_int), value :: outcome
    end function
    subroutine c_close(s) bind(C, name='symvirt_close')
      import :: c_ptr
      type(c_ptr), value :: s
    end subroutine
  end interface

contains

  ! Connect to the guest agent and register as name (printable ASCII, no
  ! spaces, at most 64 characters; trailing blanks are dropped). Returns
  ! c_null_ptr on failure (no agent, bad name).
  function symvirt_open(name) result(h)
    character(len=*), intent(in) :: name
    type(c_ptr) :: h
    h = c_open(trim(name) // c_null_char)
  end function

  ! 1 if an operation is pending (its name in op, if given, cut to len(op):
  ! unlike in C a short op is no error), 0 if none, -1 on error.
  integer function symvirt_poll(h, op) result(r)
    type(c_ptr), intent(in) :: h
    character(len=*), intent(out), optional :: op
    character(kind=c_char) :: buf(NAME_BUF)
    r = -1
    if (.not. c_associated(h)) return
    r = c_poll(h, buf, int(NAME_BUF, c_size_t))
    if (present(op)) call from_c(buf, op, r == 1)
  end function

  ! Like symvirt_poll, but blocks until an operation is pending: 1 or -1.
  integer function symvirt_wait(h, op) result(r)
    type(c_ptr), intent(in) :: h
    character(len=*), intent(out), optional :: op
    character(kind=c_char) :: buf(NAME_BUF)
    r = -1
    if (.not. c_associated(h)) return
    r = c_wait(h, buf, int(NAME_BUF, c_size_t))
    if (present(op)) call from_c(buf, op, r == 1)
  end function

  ! Declare a safe point and block until the pending operation is over.
  ! Returns its outcome (SYMVIRT_CHECKPOINTED ... SYMVIRT_NONE, the latter
  ! when nothing was pending) or -1 on error; outcome, if given, gets the
  ! outcome's name as the agent sent it.
  integer function symvirt_sync(h, outcome) result(r)
    type(c_ptr), intent(in) :: h
    character(len=*), intent(out), optional :: outcome
    character(kind=c_char) :: buf(NAME_BUF)
    r = -1
    if (.not. c_associated(h)) return
    buf(1) = c_null_char
    r = c_sync(h, buf, int(NAME_BUF, c_size_t))
    if (present(outcome)) call from_c(buf, outcome, r >= 0)
  end function

  ! Name of an outcome ("checkpointed", ..., "none"), or "unknown".
  function symvirt_outcome_name(outcome) result(name)
    integer, intent(in) :: outcome
    character(len=:), allocatable :: name
    character(kind=c_char), pointer :: p(:)
    integer :: n
    call c_f_pointer(c_outcome_name(int(outcome, c_int)), p, [NAME_BUF])
    n = 0
    do while (n < NAME_BUF)
      if (p(n + 1) == c_null_char) exit
      n = n + 1
    end do
    allocate(character(len=n) :: name)
    name = transfer(p(1:n), name)
  end function

  ! Unregister and free the handle; h becomes c_null_ptr.
  subroutine symvirt_close(h)
    type(c_ptr), intent(inout) :: h
    if (c_associated(h)) call c_close(h)
    h = c_null_ptr
  end subroutine

  ! Copy a C string into a blank-padded Fortran one (blank if not ok).
  subroutine from_c(buf, s, ok)
    character(kind=c_char), intent(in) :: buf(:)
    character(len=*), intent(out) :: s
    logical, intent(in) :: ok
    integer :: i
    s = ''
    if (.not. ok) return
    do i = 1, min(len(s), size(buf))
      if (buf(i) == c_null_char) exit
      s(i:i) = buf(i)
    end do
  end subroutine

end module symvirt
