package guestd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// ErrHookFailed: a hook script exited non-zero, was killed, or overran the
// deadline (see HookError).
var ErrHookFailed = errors.New("guestd: hook script failed")

// HookError describes a failed hook script; its Error is the REFUSED reason.
type HookError struct {
	Name     string
	ExitCode int  // -1 if killed by a signal or not started
	TimedOut bool // the round's deadline ended it
	Err      error
}

func (e *HookError) Error() string {
	switch {
	case e.TimedOut:
		return fmt.Sprintf("hook %s did not finish before the deadline", e.Name)
	case e.ExitCode >= 0:
		return fmt.Sprintf("hook %s exited with status %d", e.Name, e.ExitCode)
	}
	return fmt.Sprintf("hook %s failed: %v", e.Name, e.Err)
}

func (e *HookError) Unwrap() error { return ErrHookFailed }

// ErrHookUnsafe: a hook script, or its directory, that someone other than
// root could have written; it is not run (scripts run as root).
var ErrHookUnsafe = errors.New("guestd: hook script not trusted")

// hookScripts lists the executables in dir, sorted by name, skipping hidden
// and backup files (run-parts style) so that an editor's leftovers do not
// run. A missing dir means no hooks. Scripts run as root, so a script (or
// the directory holding it) that another user could have written is
// skipped with a warning (see trustedHook), as is the whole dir if it is
// such a directory itself.
func hookScripts(dir string, log *slog.Logger) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("guestd: hook dir: %w", err)
	}
	if err := trustedPath(dir, true); err != nil {
		log.Warn("hook scripts skipped: their directory is not trusted", "dir", dir, "err", err)
		return nil, nil
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || strings.HasSuffix(n, "~") ||
			strings.Contains(n, ".dpkg-") || strings.HasSuffix(n, ".disabled") {
			continue
		}
		p := filepath.Join(dir, n)
		fi, err := os.Stat(p) // follows symlinks
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			continue
		}
		if err := trustedHook(p); err != nil {
			log.Warn("hook script skipped", "hook", n, "err", err)
			continue
		}
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// trustedHook checks the file a hook entry names (symlinks followed) and
// the directory that file is in.
func trustedHook(path string) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrHookUnsafe, err)
	}
	if err := trustedPath(real, false); err != nil {
		return err
	}
	return trustedPath(filepath.Dir(real), true)
}

// trustedPath: path (symlinks followed) is owned by root (or by guestd's
// own user, which runs the scripts anyway) and writable by its owner only.
func trustedPath(path string, dir bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrHookUnsafe, err)
	}
	what := "file"
	if dir {
		what = "directory"
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: %s: no owner information", ErrHookUnsafe, path)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s %s is owned by uid %d, not root", ErrHookUnsafe, what, path, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s %s is group- or world-writable (mode %04o)", ErrHookUnsafe, what, path, fi.Mode().Perm())
	}
	return nil
}

// hookRun is one invocation of the hook scripts.
type hookRun struct {
	dir   string
	args  []string // e.g. prepare OP, or resume OP OUTCOME
	env   []string // SYMVIRT_* additions
	log   *slog.Logger
	delay time.Duration // WaitDelay: how long a killed script's pipes may linger
}

// run runs one script, bounded by ctx. Its output goes to the log (the last
// 4 KiB of it), since hook scripts have no other place to report.
func (h hookRun) run(ctx context.Context, name string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(h.dir, name), h.args...)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), h.env...)
	out := &tailBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that on the deadline its children die with
	// it instead of holding the output pipe open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = h.delay
	start := time.Now()
	err := cmd.Run()
	log := h.log.With("hook", name, "args", strings.Join(h.args, " "), "took", time.Since(start).Round(time.Millisecond))
	if out.Len() > 0 {
		log = log.With("output", out.String())
	}
	if err == nil {
		log.Info("hook ran")
		return nil
	}
	he := &HookError{Name: name, ExitCode: -1, Err: err}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		he.TimedOut = true
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		he.ExitCode = ee.ExitCode()
	}
	log.Warn("hook failed", "err", he.Error())
	return he
}

// prepare runs every script in order and stops at the first failure. It
// returns the scripts that succeeded, which are the ones to tell if the round
// is then aborted.
func (h hookRun) prepare(ctx context.Context) ([]string, error) {
	names, err := hookScripts(h.dir, h.log)
	if err != nil {
		return nil, err
	}
	var ok []string
	for _, n := range names {
		if err := h.run(ctx, n); err != nil {
			return ok, err
		}
		ok = append(ok, n)
	}
	return ok, nil
}

// resume runs the given scripts (nil: all of them) and carries on past
// failures: each script must learn the outcome whatever the others do.
func (h hookRun) resume(ctx context.Context, names []string) {
	if names == nil {
		var err error
		if names, err = hookScripts(h.dir, h.log); err != nil {
			h.log.Warn("hook scripts", "err", err)
			return
		}
	}
	for _, n := range names {
		_ = h.run(ctx, n)
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Len() int       { return len(t.b) }
func (t *tailBuffer) String() string { return string(t.b) }
