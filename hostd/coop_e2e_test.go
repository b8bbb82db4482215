package hostd_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// hookApp builds the C example (libsymvirt, statically linked) once.
func hookBinary(t *testing.T) string { return testenv.Make(t, "examples/hook") }

// hookRC starts the C hook program once guestd's socket is there.
const hookRC = `#!/bin/sh
( for i in $(seq 1 200); do [ -S /run/symvirt/hook.sock ] && break; sleep 0.1; done
  /bin/hook mpi-rank-0 0 ) >/dev/console 2>&1 &
`

// coopSpec is the test guest with guestd on a virtio-serial channel and
// the C hook program registered as an application.
func coopSpec(t *testing.T, name, pool string, extra map[string]testguest.File) hostd.Spec {
	s := guestSpec(t, name, pool)
	files := map[string]testguest.File{
		"/bin/hook":                 {Src: hookBinary(t), Mode: 0o755},
		"/etc/symvirt/rc.d/20-nics": {Mode: 0o755, Data: []byte(nicsScript)},
		"/etc/symvirt/rc.d/50-hook": {Mode: 0o755, Data: []byte(hookRC)},
	}
	for k, v := range extra {
		files[k] = v
	}
	s.Initrd = testguest.Initrd(t, files)
	s.Append += " symvirt.agent=1"
	s.Guest = hostd.Channel{Type: "virtio-serial"}
	return s
}

func TestCooperativeCheckpointRestoreMigrate(t *testing.T) {
	src, dst := twoHosts(t, "52:54:00:bb:00:01")
	ctx := ctxT(t, 5*time.Minute)
	c := src.Client()
	if _, err := c.Create(ctx, coopSpec(t, "co1", "nic", nil), true); err != nil {
		t.Fatal(err)
	}
	log := serialLog(src, "co1")
	waitLog(t, log, regexp.MustCompile(`hook: registered as mpi-rank-0`), 90*time.Second)

	// Checkpoint: the application sees the operation coming, reaches its
	// safe point, and learns the outcome.
	dir := filepath.Join(t.TempDir(), "ck")
	if _, err := c.Checkpoint(ctx, "co1", hostd.CheckpointOptions{Dir: dir}, nil); err != nil {
		t.Fatal(err)
	}
	waitLog(t, log, regexp.MustCompile(`hook: pending checkpoint\r?\n(?s:.*)hook: outcome checkpointed`), 10*time.Second)
	if _, err := c.Stop(ctx, "co1", time.Second); err != nil {
		t.Fatal(err)
	}

	// The checkpoint holds the application blocked in symvirt_sync; the
	// restored guest's same call returns "restored".
	if _, err := c.Restore(ctx, hostd.RestoreOptions{Dir: dir}, nil); err != nil {
		t.Fatal(err)
	}
	waitLog(t, log, regexp.MustCompile(`hook: outcome checkpointed\r?\n(?s:.*)hook: outcome restored`), 30*time.Second)

	// Migration: the destination tells the guest "migrated".
	if _, err := c.Migrate(ctx, "co1", hostd.MigrateOptions{To: dst.Addr()}, nil); err != nil {
		t.Fatal(err)
	}
	dlog := serialLog(dst, "co1")
	waitLog(t, dlog, regexp.MustCompile(`hook: outcome migrated`), 30*time.Second)
	waitLog(t, dlog, regexp.MustCompile(`symvirt-nics:.*52:54:00:bb:00:01`), 30*time.Second)
}

// frame is one guest->host protocol frame, for a guest that floods.
func frame(body string) []byte {
	b := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(b, uint32(len(body)))
	copy(b[4:], body)
	return b
}

func TestMisbehavingGuests(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "", "--guest-timeout", "5s")
	ctx := ctxT(t, 5*time.Minute)
	c := h.Client()
	port := "/dev/virtio-ports/org.symvirt.0"
	bad := map[string]string{
		// guestd never runs: nobody answers on the channel.
		"silent": "",
		// Random bytes on the channel.
		"garbage": `#!/bin/sh
( while [ ! -e ` + port + ` ]; do sleep 0.1; done
  while :; do head -c 65536 /dev/urandom; done > ` + port + ` ) &
`,
		// Valid frames, as fast as the guest can write them.
		"flood": `#!/bin/sh
( while [ ! -e ` + port + ` ]; do sleep 0.1; done
  while :; do cat /flood; done > ` + port + ` ) &
`,
	}
	flood := []byte{}
	for range 512 {
		flood = append(flood, frame(`{"v":1,"type":"PING","seq":1}`)...)
	}
	// A healthy VM on the same hostd must keep being served.
	good := coopSpec(t, "good", "", nil)
	if _, err := c.Create(ctx, good, true); err != nil {
		t.Fatal(err)
	}
	for name, script := range bad {
		s := guestSpec(t, name, "")
		files := map[string]testguest.File{"/flood": {Data: flood}}
		if script != "" {
			files["/etc/symvirt/rc.d/60-bad"] = testguest.File{Mode: 0o755, Data: []byte(script)}
		}
		s.Initrd = testguest.Initrd(t, files)
		s.Guest = hostd.Channel{Type: "virtio-serial"}
		if _, err := c.Create(ctx, s, true); err != nil {
			t.Fatal(err)
		}
	}
	waitLog(t, serialLog(h, "good"), regexp.MustCompile(`hook: registered`), 90*time.Second)
	for name := range bad {
		waitCounter(t, serialLog(h, name), 4, 90*time.Second)
	}
	var wg sync.WaitGroup
	for name := range bad {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, err := c.Checkpoint(ctx, name, hostd.CheckpointOptions{Dir: filepath.Join(t.TempDir(), name)}, nil)
			took := time.Since(start)
			t.Logf("%s guest: checkpoint refused after %s: %v", name, took.Round(time.Millisecond), err)
			if !errors.Is(err, hostd.ErrGuest) {
				t.Errorf("%s guest: checkpoint: %v, want ErrGuest", name, err)
			}
			if took > 15*time.Second {
				t.Errorf("%s guest: refused only after %s (guest timeout 5s)", name, took)
			}
		}()
	}
	// Meanwhile the healthy VM is checkpointed normally.
	if _, err := c.Checkpoint(ctx, "good", hostd.CheckpointOptions{Dir: filepath.Join(t.TempDir(), "good")}, nil); err != nil {
		t.Errorf("healthy vm next to misbehaving ones: %v", err)
	}
	wg.Wait()
	for name := range bad {
		st := mustStatus(t, c, name)
		if st.State != "running" || len(st.Detached) != 0 {
			t.Errorf("%s guest after the refused operation: %+v", name, st)
		}
		n := counters(serialLog(h, name))
		waitCounter(t, serialLog(h, name), n[len(n)-1]+2, 30*time.Second)
		if _, err := os.Stat(filepath.Join(t.TempDir(), name)); err == nil {
			t.Errorf("%s: a refused checkpoint left its directory", name)
		}
	}
	waitLog(t, serialLog(h, "good"), regexp.MustCompile(`hook: outcome checkpointed`), 10*time.Second)
}
