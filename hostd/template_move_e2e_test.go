package hostd_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestMigratedCloneRebootKeepsIdentity: a clone migrated to another
// hostd is the same clone there. Its kept identity went with it (0600, no
// seed); its guest rebooting at the destination (sysrq b) comes back with
// the clone's hostname, machine-id and MAC, and a new boot_id.
func TestMigratedCloneRebootKeepsIdentity(t *testing.T) {
	src, dst := twoHosts(t, "")
	c := src.Client()
	ctx := ctxT(t, 15*time.Minute)
	if _, err := c.CreateTemplate(ctx, "small", rebootingGuest(t)); err != nil {
		t.Fatal(err)
	}
	r1, err := c.Clone(ctx, hostd.CloneRequest{Template: "small", Name: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	first := cloneStates(t, src, "r1", 1, time.Minute)[0]
	if _, err := c.Migrate(ctx, "r1", hostd.MigrateOptions{To: dst.Addr()}, nil); err != nil {
		t.Fatal(err)
	}
	checkKeptIdentity(t, filepath.Join(filepath.Dir(serialLog(dst, "r1")), "clone-identity.json"), first[0])
	if _, err := dst.Client().Drill(ctx, "r1"); err != nil {
		t.Fatalf("drill at the destination (the reboot hook): %v", err)
	}
	// The destination's console starts at the migration: its first
	// clone-state line is the rebooted guest's.
	now := cloneStatesWhileUp(t, dst, "r1", 1)[0]
	if now[0] != first[0] || now[1] != first[1] || now[2] != first[2] || now[2] != r1.MACs["net0"] {
		t.Errorf("r1 rebooted at the destination: hostname, machine-id, MAC %v; before %v (MAC given %s)", now[:3], first[:3], r1.MACs["net0"])
	}
	if now[3] == first[3] {
		t.Errorf("r1 rebooted at the destination: boot_id %s, as before", now[3])
	}
	info, err := dst.Client().Status(ctx, "r1")
	if err != nil || info.State != "running" {
		t.Fatalf("r1 at the destination after its reboot: %+v %v", info, err)
	}
	t.Logf("r1 before: %v; rebooted at the destination: %v", first[:4], now[:4])
}

// checkKeptIdentity: the clone's identity file is there, 0600, of the
// clone named hostname, without a seed.
func checkKeptIdentity(t *testing.T, path, hostname string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("the destination kept no clone identity: %v", err)
		return
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
	}
	var c guestproto.Clone
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &c); err != nil || c.Hostname != hostname || c.Seed != "" {
		t.Errorf("%s: %s (%v); want hostname %s, no seed", path, data, err, hostname)
	}
}

// TestRestoredCloneRebootKeepsIdentity: a clone restored from its
// checkpoint is the same clone; its kept identity came back with it (from
// the signed manifest: the restore replaced the VM's directory), and its
// guest rebooting comes back with the clone's hostname, machine-id and
// MAC, and a new boot_id.
func TestRestoredCloneRebootKeepsIdentity(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 15*time.Minute)
	if _, err := c.CreateTemplate(ctx, "small", rebootingGuest(t)); err != nil {
		t.Fatal(err)
	}
	r2, err := c.Clone(ctx, hostd.CloneRequest{Template: "small", Name: "r2"})
	if err != nil {
		t.Fatal(err)
	}
	first := cloneStates(t, h, "r2", 1, time.Minute)[0]
	dir := filepath.Join(t.TempDir(), "ckpt")
	if _, err := c.Checkpoint(ctx, "r2", hostd.CheckpointOptions{Dir: dir, Stop: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Restore(ctx, hostd.RestoreOptions{Dir: dir}, nil); err != nil {
		t.Fatal(err)
	}
	checkKeptIdentity(t, filepath.Join(filepath.Dir(serialLog(h, "r2")), "clone-identity.json"), first[0])
	if _, err := c.Drill(ctx, "r2"); err != nil {
		t.Fatalf("drill of the restored clone (the reboot hook): %v", err)
	}
	// The console's history stays across the restore: the second line
	// is the rebooted guest's.
	now := cloneStatesWhileUp(t, h, "r2", 2)[1]
	if now[0] != first[0] || now[1] != first[1] || now[2] != first[2] || now[2] != r2.MACs["net0"] {
		t.Errorf("restored r2 rebooted: hostname, machine-id, MAC %v; before %v (MAC given %s)", now[:3], first[:3], r2.MACs["net0"])
	}
	if now[3] == first[3] {
		t.Errorf("restored r2 rebooted: boot_id %s, as before", now[3])
	}
}

// rebootingGuest is the template guest whose clones named r... reboot
// when a drill's PREPARE runs (powerHook).
func rebootingGuest(t *testing.T) hostd.Spec {
	spec := templateGuest(t, "small")
	spec.Initrd = testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/hooks.d/50-clone-state": {Mode: 0o755, Data: []byte(cloneHook)},
		"/etc/symvirt/hooks.d/60-power":       {Mode: 0o755, Data: []byte(powerHook)}})
	return spec
}
