package guestd

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A virtio-serial port with no host behind it reads as EOF at once, and
// poll(2) reports it readable (and hung up) all the while, so nothing
// blocks until a host connects. The driver does signal the change: with
// O_ASYNC set on the port, the guest kernel sends SIGIO when the host side
// opens (and when data arrives). guestd waits for that signal, so that a
// host's HELLO is read as soon as it comes, with the timed re-read
// (eofPoll) only as a fallback.

// portWait is how readFrames waits for a host on a port at EOF.
type portWait struct {
	wake <-chan os.Signal // SIGIO; nil: poll only
	poll time.Duration    // the fallback re-read interval
}

// wait returns after a wake-up or the fallback interval; false if stop
// came first.
func (p *portWait) wait(stop <-chan struct{}) bool {
	poll := eofPoll
	var wake <-chan os.Signal
	if p != nil {
		poll, wake = p.poll, p.wake
	}
	t := time.NewTimer(poll)
	defer t.Stop()
	select {
	case <-stop:
		return false
	case <-wake:
	case <-t.C:
	}
	return true
}

// watchHostConnect asks the kernel for SIGIO on port f's changes. Without
// it (an error: logged) the port is polled. stop undoes it.
func watchHostConnect(f *os.File, poll time.Duration, log *slog.Logger) (*portWait, func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGIO)
	if err := setAsync(f, true); err != nil {
		signal.Stop(ch)
		log.Warn("no SIGIO from the virtio-serial port: polling it for a host", "every", poll, "err", err)
		return &portWait{poll: poll}, func() {}
	}
	return &portWait{wake: ch, poll: poll}, func() {
		_ = setAsync(f, false)
		signal.Stop(ch)
	}
}

// setAsync sets or clears O_ASYNC on f, owned by this process, without
// touching its (non-blocking) mode.
func setAsync(f *os.File, on bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		if on {
			if _, ferr = unix.FcntlInt(fd, unix.F_SETOWN, os.Getpid()); ferr != nil {
				return
			}
		}
		fl, e := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if e != nil {
			ferr = e
			return
		}
		if on {
			fl |= unix.O_ASYNC
		} else {
			fl &^= unix.O_ASYNC
		}
		_, ferr = unix.FcntlInt(fd, unix.F_SETFL, fl)
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("O_ASYNC on %s: %w", f.Name(), err)
	}
	return nil
}
