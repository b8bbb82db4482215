package hostd_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// `symvirt vm restore` of a checkpoint whose manifest was changed on the
// store (another initrd) is refused by the hostd, which starts nothing and
// keeps the stopped VM; a hostd with no TLS files signs with a CA of its
// own, so another such hostd refuses its checkpoints; the checkpoint as
// written restores.
func TestCLIRestoreRefusesChangedManifest(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	other := testenv.StartHostd(t, "b", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 3*time.Minute)
	spec := guestSpec(t, "cr1", "")
	if _, err := c.Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, serialLog(h, "cr1"), 2, 90*time.Second)
	dir := filepath.Join(t.TempDir(), "ck")
	if _, err := c.Checkpoint(ctx, "cr1", hostd.CheckpointOptions{Dir: dir, Stop: true, NoGuest: true}, nil); err != nil {
		t.Fatal(err)
	}
	restore := func(host *testenv.Hostd, dir string) (string, error) {
		out, err := exec.Command(testenv.Binary(t), "vm", "--host", host.Socket(), "restore", "--dir", dir, "--no-guest").CombinedOutput()
		return string(out), err
	}

	bad := filepath.Join(t.TempDir(), "bad")
	copyDir(t, dir, bad)
	var m map[string]any
	data, _ := os.ReadFile(filepath.Join(bad, "manifest.json"))
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m["spec"].(map[string]any)["initrd"] = "/etc/shadow"
	data, _ = json.MarshalIndent(m, "", "  ")
	os.WriteFile(filepath.Join(bad, "manifest.json"), data, 0o600)
	out, err := restore(h, bad)
	if err == nil || !strings.Contains(out, "manifest refused") || !strings.Contains(out, "does not match the data") {
		t.Fatalf("restore of a changed manifest: %v\n%s", err, out)
	}
	t.Logf("changed manifest: %s", strings.TrimSpace(out))
	if st := mustStatus(t, c, "cr1"); st.State != "stopped" || st.PID != 0 {
		t.Fatalf("after the refused restore: %+v", st)
	}
	if pids := qemusUnder(h.StateDir); len(pids) != 0 {
		t.Fatalf("QEMU left: %v", pids)
	}

	out, err = restore(other, dir)
	if err == nil || !strings.Contains(out, "not trusted") {
		t.Fatalf("restore on a hostd with another local CA: %v\n%s", err, out)
	}
	t.Logf("another host's local CA: %s", strings.TrimSpace(out))
	if pids := qemusUnder(other.StateDir); len(pids) != 0 {
		t.Fatalf("QEMU left on the other hostd: %v", pids)
	}

	if out, err := restore(h, dir); err != nil {
		t.Fatalf("restore of the checkpoint as written: %v\n%s", err, out)
	}
	if st := mustStatus(t, c, "cr1"); st.State != "running" {
		t.Fatalf("restored: %+v", st)
	}
}

// qemusUnder lists the QEMU processes of a state dir (not its hostd).
func qemusUnder(dir string) []int {
	var out []int
	for _, pid := range testenv.PIDsUnder(dir) {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if strings.HasPrefix(string(comm), "qemu") {
			out = append(out, pid)
		}
	}
	return out
}
