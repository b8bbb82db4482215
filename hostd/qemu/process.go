package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/qmp"
)

// Process is one QEMU of a VM and its monitor.
type Process struct {
	PID int
	Gen int
	Bin string // "" when adopted
	Mon *qmp.Client

	exited chan struct{}
	err    error // how a started QEMU exited, once exited is closed
}

// Exited is closed once the process is gone.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// ExitErr waits for the process to go and says how a started one exited.
func (p *Process) ExitErr() error {
	<-p.exited
	return p.err
}

// Start runs bin paused (-S, so a failed start never runs the guest) and
// connects its monitor, within 30 s. ram is the guest RAM file when the
// spec asks for shared memory; the caller keeps it.
func Start(ctx context.Context, bin string, a Args, ram *os.File) (*Process, error) {
	a.runWith = a.RunAs != "" && hasRunWithUser(ctx, bin)
	cmd := exec.Command(bin, append(a.argv(), "-S")...)
	if a.ramFile() {
		if ram == nil {
			return nil, fmt.Errorf("%w: shared memory without a file", sentinel.ErrQEMUStart)
		}
		cmd.ExtraFiles = []*os.File{ram} // descriptor ramFD
	}
	os.Remove(QMPSocket(a.Dir, a.Gen))
	os.Remove(GuestSocket(a.Dir, a.Gen))
	logf, err := os.OpenFile(filepath.Join(a.Dir, Log), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A process group of its own: signals to hostd's (Ctrl-C, a service
	// manager stopping hostd) must not reach the VMs. Not a session: on a
	// host whose processes sit in the root cgroup, each session is a
	// scheduling group of its own (autogroup), which would make every VM
	// an equal share of the CPUs whatever the nice values hostd gives its
	// threads (a stream's nice 19 then yielded only to its own vCPUs, not
	// to the other VMs'; traced with four VMs on two cores).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: %v", sentinel.ErrQEMUStart, err)
	}
	p := &Process{PID: cmd.Process.Pid, Gen: a.Gen, Bin: bin, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	if p.Mon, err = p.dial(ctx, QMPSocket(a.Dir, a.Gen)); err != nil {
		cmd.Process.Kill() // unlike a signal to the PID, safe once reaped
		<-p.exited
		return nil, fmt.Errorf("%w: %v: %s", sentinel.ErrQEMUStart, err, tail(logf.Name(), logStart))
	}
	go func() { <-p.exited; p.Mon.Close() }()
	if err := CheckVersion(bin, p.Mon.Version()); err != nil {
		p.Kill()
		return nil, err
	}
	// Every wait for a migration (a save, a load, a move) then wakes at
	// its end on QEMU's MIGRATION event, not at its next poll.
	if err := p.Mon.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		p.Kill()
		return nil, fmt.Errorf("%w: migration events: %v", sentinel.ErrQEMUStart, err)
	}
	return p, nil
}

func (p *Process) dial(ctx context.Context, sock string) (*qmp.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		mon, err := qmp.Dial(dctx, "unix", sock)
		dcancel()
		if err == nil {
			return mon, nil
		}
		select {
		case <-p.exited:
			return nil, errors.New("qemu exited")
		case <-ctx.Done():
			return nil, fmt.Errorf("no QMP monitor: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Owns reports whether pid is alive and a QEMU of the VM in dir of
// generation gen (its monitor socket on its command line): a PID
// recorded before hostd restarted may have been reused since.
func Owns(dir string, pid, gen int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && Alive(pid) && strings.Contains(string(cmdline), QMPSocket(dir, gen))
}

// Adopt connects to a QEMU an earlier hostd started (see Owns) that maps
// ram, the RAM file recorded for it if any; it never restarts one. Not
// being its parent, it polls for its exit.
func Adopt(ctx context.Context, dir string, pid, gen int, ram *RAMFile) (*Process, error) {
	if ram != nil && !ram.MappedBy(pid) {
		return nil, fmt.Errorf("qemu pid %d does not map the guest RAM file hostd created (%s, inode %d): not adopted: %w", pid, ram.Path, ram.Ino, sentinel.ErrRAMFile)
	}
	mon, err := qmp.Dial(ctx, "unix", QMPSocket(dir, gen))
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	p := &Process{PID: pid, Gen: gen, Mon: mon, exited: make(chan struct{})}
	go func() {
		for <-mon.Done(); Alive(pid); {
			time.Sleep(100 * time.Millisecond)
		}
		close(p.exited)
	}()
	return p, nil
}

// Kill ends the process at once and waits (10 s at most) for it to go.
func (p *Process) Kill() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	syscall.Kill(p.PID, syscall.SIGKILL)
	select {
	case <-p.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("qemu pid %d did not exit after SIGKILL", p.PID)
	}
}

// Stop ends the process: an ACPI power-down the guest has timeout to
// follow, then Quit.
func (p *Process) Stop(ctx context.Context, timeout time.Duration) error {
	if err := p.Mon.SystemPowerdown(ctx); err == nil {
		select {
		case <-p.exited:
			return nil
		case <-time.After(timeout):
		case <-ctx.Done():
		}
	}
	return p.Quit()
}

// Quit has QEMU quit, or kills it after 5 s.
func (p *Process) Quit() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.Mon.Quit(ctx)
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
		return p.Kill()
	}
}

// Alive reports whether pid is a live process (not a zombie).
func Alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	i := bytes.LastIndexByte(stat, ')')
	return pid > 0 && err == nil && i > 0 && i+2 < len(stat) && stat[i+2] != 'Z' && stat[i+2] != 'X'
}

// tail is what QEMU wrote to its log since offset, at most 2 KiB of it.
func tail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	end, _ := f.Seek(0, io.SeekEnd)
	buf := make([]byte, max(0, end-max(offset, end-2048)))
	n, _ := f.ReadAt(buf, end-int64(len(buf)))
	return strings.TrimSpace(string(buf[:n]))
}
