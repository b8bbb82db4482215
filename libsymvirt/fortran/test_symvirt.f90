! test_symvirt: exercises every procedure of the symvirt Fortran module
! against a guest agent (the Go test examples/mpi-fortran/e2e drives the
! agent's side). Prints one line per step; the test checks them.
program test_symvirt
  use symvirt
  implicit none
  type(c_ptr) :: h, bad
  character(len=32) :: op, outcome
  character(len=2) :: tiny
  integer :: r

  bad = symvirt_open('has space')
  write (*, '(a,l1)') 'bad-name-open ', c_associated(bad)
  r = symvirt_poll(bad, op)
  write (*, '(a,i0)') 'null-poll ', r

  h = symvirt_open('ftest')
  write (*, '(a,l1)') 'open ', c_associated(h)
  r = symvirt_poll(h, op)
  write (*, '(a,i0)') 'idle-poll ', r
  r = symvirt_sync(h, outcome)
  write (*, '(a,i0,1x,a)') 'idle-sync ', r, trim(outcome)
  flush (6)

  ! The test now makes a checkpoint pending.
  r = symvirt_wait(h, op)
  write (*, '(a,i0,1x,a)') 'wait ', r, trim(op)
  r = symvirt_poll(h, tiny)
  write (*, '(a,i0,1x,a)') 'poll-short-buffer ', r, trim(tiny)
  r = symvirt_poll(h)
  write (*, '(a,i0)') 'poll-no-buffer ', r
  flush (6)
  r = symvirt_sync(h, outcome)
  write (*, '(a,i0,1x,a,1x,a)') 'sync ', r, trim(outcome), symvirt_outcome_name(r)
  write (*, '(a,l1)') 'is-checkpointed ', r == SYMVIRT_CHECKPOINTED
  write (*, '(2a)') 'name-99 ', symvirt_outcome_name(99)
  call symvirt_close(h)
  write (*, '(a,l1)') 'closed ', c_associated(h)
end program
