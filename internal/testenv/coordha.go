package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// StartCoordReplica starts a coordinator replica on etcd (extra carries
// --etcd and its flags): it is ready when it answers "coord status",
// which every replica does, leader or not.
func StartCoordReplica(t testing.TB, ns *NetNS, name, checkpointDir string, env []string, extra ...string) *Coord {
	c := &Coord{StateDir: t.TempDir(), CheckpointDir: checkpointDir, Extra: extra}
	c.Daemon = Daemon{t: t, Name: name, NS: ns, Env: env}
	c.Daemon.Args = func() []string {
		return append([]string{"coord", "--state-dir", c.StateDir, "--checkpoint-dir", c.CheckpointDir,
			"--log-level", "debug"}, c.Extra...)
	}
	c.Ready = func() error {
		if _, err := os.Stat(c.Socket()); err != nil {
			return err
		}
		cmd := exec.Command(Binary(t), "coord", "status", "--coord", c.Socket())
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	t.Cleanup(func() {
		c.Signal(syscall.SIGCONT)
		c.Kill()
		if t.Failed() {
			t.Logf("---- %s logs ----\n%s", name, tail(c.Logs(), 20000))
		}
	})
	c.Start()
	return c
}

// Signal sends sig to the daemon process (SIGSTOP, SIGCONT: a paused
// daemon).
func (d *Daemon) Signal(sig syscall.Signal) error {
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return fmt.Errorf("%s: not started", d.Name)
	}
	return cmd.Process.Signal(sig)
}

// Stopped reports whether the daemon is stopped by a signal (state T).
func (d *Daemon) Stopped() bool {
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		return false
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 {
		return s[i+2] == 'T'
	}
	return false
}

func tail(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}
