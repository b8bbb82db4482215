package hostd_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

const onePT = "pools:\n  nic:\n    - {mac: \"52:54:00:aa:00:01\"}\n"

// A hostd killed (SIGKILL) in the middle of a direct checkpoint leaves the
// VM paused and detached and a partial checkpoint behind; the next hostd
// finds the operation in its journal and rolls it back by itself.
func TestDirectCheckpointRecoveredAfterHostdKill(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", onePT)
	c := h.Client()
	ctx := ctxT(t, 4*time.Minute)
	spec := guestSpec(t, "kc1", "nic")
	// A big (sparse) disk: its copy, after the state's, keeps the save
	// busy long enough to kill hostd in the middle of it.
	disk := filepath.Join(t.TempDir(), "d0.raw")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 1<<30); err != nil {
		t.Fatal(err)
	}
	spec.Disks = []hostd.Disk{{ID: "d0", Path: disk, Format: "raw"}}
	if _, err := c.Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "kc1")
	waitPresent(t, c, "kc1", "pt0")
	waitCounter(t, log, 3, 90*time.Second)

	dir := filepath.Join(t.TempDir(), "ck")
	errc := make(chan error, 1)
	go func() {
		_, err := c.Checkpoint(ctx, "kc1", hostd.CheckpointOptions{Dir: dir}, nil)
		errc <- err
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(dir, "state.bin")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the checkpoint never started to save")
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.Kill()
	if err := <-errc; err == nil {
		t.Fatal("a checkpoint whose hostd was killed reported success")
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err == nil {
		t.Fatal("the checkpoint completed before hostd was killed: the test proves nothing")
	}

	h.Start()
	deadline = time.Now().Add(time.Minute)
	for {
		st := mustStatus(t, c, "kc1")
		_, dirErr := os.Stat(dir)
		if st.State == "running" && len(st.Detached) == 0 && errors.Is(dirErr, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after hostd restart: state %s detached %v, checkpoint dir: %v", st.State, st.Detached, dirErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	assertRunningWith(t, c, "kc1", "pt0", log)
	if ops, _ := filepath.Glob(filepath.Join(h.StateDir, "ops", "*")); len(ops) != 0 {
		t.Fatalf("operation journals left: %v", ops)
	}
}

// A destination hostd that dies right after it resumed the migrated VM
// cannot confirm it; the source must never run its copy again (two copies
// of one VM would run), whatever the error.
func TestDirectMigrateDestinationDiesAfterResume(t *testing.T) {
	src, dst := twoHosts(t, "52:54:00:bb:00:01")
	dst.Kill()
	dst.Env = []string{"SYMVIRT_HOSTD_CRASH_AT=finish-incoming"}
	dst.Start()
	ctx := ctxT(t, 4*time.Minute)
	c := src.Client()
	if _, err := c.Create(ctx, guestSpec(t, "dd1", "nic"), true); err != nil {
		t.Fatal(err)
	}
	slog := serialLog(src, "dd1")
	waitCounter(t, slog, 3, 90*time.Second)
	_, err := c.Migrate(ctx, "dd1", hostd.MigrateOptions{To: dst.Addr()}, nil)
	if err == nil {
		t.Fatal("migration to a destination that died reported success")
	}
	t.Logf("migrate: %v", err)
	if !dst.Exited() {
		t.Fatal("the destination hostd did not reach its crash point")
	}
	// The destination's QEMU runs on without its hostd.
	n := counters(slog)
	waitCounter(t, serialLog(dst, "dd1"), n[len(n)-1]+2, 30*time.Second)
	// The source's copy stays paused.
	if st := mustStatus(t, c, "dd1"); st.State == "running" {
		t.Fatalf("the source resumed its copy while the destination runs the vm: %+v", st)
	}
	before := counters(slog)
	time.Sleep(3 * time.Second)
	if after := counters(slog); len(after) != len(before) {
		t.Fatalf("the source's guest counted on (%v -> %v): two copies run", tail(before, 2), tail(after, 2))
	}
	dst.Env = nil
	dst.Start()
	if st := mustStatus(t, dst.Client(), "dd1"); st.State != "running" {
		t.Fatalf("destination after its restart: %+v", st)
	}
}

// A destination that accepts the connection and never answers must not
// hold the VM detached: the migration fails at its deadline and the VM
// runs on at the source with its devices.
func TestDirectMigrateSilentDestination(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() }) // held open, never answered
		}
	}()
	h := testenv.StartHostd(t, "a", nil, "", onePT+"op_step_timeout: 5s\nop_transfer_timeout: 15s\n")
	c := h.Client()
	ctx := ctxT(t, 4*time.Minute)
	if _, err := c.Create(ctx, guestSpec(t, "sd1", "nic"), true); err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "sd1")
	waitPresent(t, c, "sd1", "pt0")
	waitCounter(t, log, 3, 90*time.Second)
	// The caller waits far longer than the operation's deadlines.
	mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	_, err = c.Migrate(mctx, "sd1", hostd.MigrateOptions{To: ln.Addr().String()}, nil)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || mctx.Err() != nil {
		t.Fatalf("migrate to a silent destination: %v (caller's context: %v), want hostd's own failure", err, mctx.Err())
	}
	t.Logf("migrate: %v", err)
	assertRunningWith(t, c, "sd1", "pt0", log)
}
