package hostd_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// patternScript fills 128 MiB of guest RAM (a tmpfs) with random data once
// and prints its checksum every few seconds: if any page of guest memory
// were lost or stale across a VMM restart, the checksum would change.
const patternScript = `#!/bin/sh
( mkdir -p /run/pat && mount -t tmpfs -o size=140m tmpfs /run/pat
  dd if=/dev/urandom of=/run/pat/p bs=1M count=128 2>/dev/null
  while :; do echo "symvirt-pattern $(md5sum /run/pat/p | cut -c1-32)"; sleep 3; done ) &
`

var patternRE = regexp.MustCompile(`symvirt-pattern ([0-9a-f]{32})`)

func patterns(path string) []string {
	data, _ := os.ReadFile(path)
	var out []string
	for _, m := range patternRE.FindAllSubmatch(data, -1) {
		out = append(out, string(m[1]))
	}
	return out
}

func waitPatterns(t *testing.T, path string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if p := patterns(path); len(p) >= n {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d pattern checksums", path, n)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func rejuvenate(t *testing.T, h *testenv.Hostd, args ...string) []hostd.RejuvenateResult {
	t.Helper()
	out, err := exec.Command(testenv.Binary(t), append([]string{"rejuvenate", "--output", "json", h.Socket()}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("symvirt rejuvenate %v: %v\n%s", args, err, out)
	}
	var res []hostd.RejuvenateResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("rejuvenate output: %v\n%s", err, out)
	}
	return res
}

func TestRejuvenateKeepsGuestMemory(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 5*time.Minute)
	kernel, _ := testguest.Paths(t)
	on := true
	spec := hostd.Spec{Name: "rj1", Memory: 512, VCPUs: 1, Kernel: kernel, SharedMemory: &on,
		Initrd: testguest.Initrd(t, map[string]testguest.File{
			"/etc/symvirt/rc.d/30-pattern": {Mode: 0o755, Data: []byte(patternScript)}}),
		Append: "console=ttyS0 quiet panic=-1 symvirt.counter=1",
		NICs:   []hostd.NIC{{ID: "pt0", Model: "vmxnet3", Passthrough: true}}}
	info, err := c.Create(ctx, spec, true)
	if err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "rj1")
	shm := filepath.Join(h.Layout().RAMDirs()[0], "rj1.ram")
	if st, err := os.Stat(shm); err != nil || st.Size() != 512<<20 {
		t.Fatalf("shared memory file %s: %v", shm, err)
	}
	want := waitPatterns(t, log, 1)[0]
	waitCounter(t, log, 5, time.Minute)

	// Rejuvenate the whole host: same binary.
	res := rejuvenate(t, h, "--parallel", "2")
	if len(res) != 1 || res[0].Error != "" || res[0].OldPID != info.PID || res[0].NewPID == info.PID || res[0].NewPID == 0 {
		t.Fatalf("rejuvenate: %+v", res)
	}
	t.Logf("rejuvenate: vCPUs stopped %s, device state %d bytes", res[0].Downtime, res[0].StateBytes)
	if res[0].StateBytes > 16<<20 {
		t.Fatalf("device state is %d bytes: RAM was saved too", res[0].StateBytes)
	}
	checkWarm(t, log, want)
	waitPresent(t, c, "rj1", "pt0")

	// The upgrade case: another binary (a wrapper standing for a new QEMU).
	wrapper := filepath.Join(t.TempDir(), "qemu-new")
	os.WriteFile(wrapper, []byte("#!/bin/sh\nexec "+testguest.Qemu+" \"$@\"\n"), 0o755)
	res = rejuvenate(t, h, "--qemu-binary", wrapper)
	if res[0].Error != "" || res[0].QEMU != wrapper || res[0].Fallback {
		t.Fatalf("upgrade: %+v", res)
	}
	checkWarm(t, log, want)

	// A new QEMU that cannot start: the old binary takes the VM back.
	broken := filepath.Join(t.TempDir(), "qemu-broken")
	os.WriteFile(broken, []byte("#!/bin/sh\necho 'qemu-broken: refusing' >&2\nexit 1\n"), 0o755)
	res = rejuvenate(t, h, "--qemu-binary", broken)
	if res[0].Error != "" || !res[0].Fallback || res[0].QEMU != wrapper {
		t.Fatalf("broken binary: %+v", res)
	}
	checkWarm(t, log, want)

	// hostd itself restarts through the API; the VM is not touched.
	before := mustStatus(t, c, "rj1")
	out, err := exec.Command(testenv.Binary(t), "rejuvenate", h.Socket(), "--hostd").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1 VMs re-adopted") {
		t.Fatalf("rejuvenate --hostd: %v\n%s", err, out)
	}
	if after := mustStatus(t, c, "rj1"); after.PID != before.PID || after.State != "running" {
		t.Fatalf("after hostd restart: %+v (before pid %d)", after, before.PID)
	}

	// A stale file (a crash left it) is reported, not removed.
	ghost := filepath.Join(h.Layout().RAMDirs()[0], "ghost.ram")
	os.WriteFile(ghost, []byte("x"), 0o600)
	defer os.Remove(ghost)
	hi, err := c.Host(ctx)
	if err != nil || len(hi.StaleSharedMemory) != 1 || hi.StaleSharedMemory[0] != ghost {
		t.Fatalf("stale shared memory: %v %+v", err, hi.StaleSharedMemory)
	}
	// Stopping the VM removes its RAM file.
	if _, err := c.Stop(ctx, "rj1", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(shm); !os.IsNotExist(err) {
		t.Fatalf("shared memory file survives stop: %v", err)
	}
}

// checkWarm checks that the guest did not reboot, its counter went on and
// its memory pattern is intact after a VMM restart.
func checkWarm(t *testing.T, log, want string) {
	t.Helper()
	n := len(patterns(log))
	c := counters(log)
	waitCounter(t, log, c[len(c)-1]+2, time.Minute)
	got := waitPatterns(t, log, n+1)
	if got[len(got)-1] != want {
		t.Fatalf("memory pattern changed: %s, want %s", got[len(got)-1], want)
	}
	data, _ := os.ReadFile(log)
	if k := strings.Count(string(data), "symvirt-guest-ready"); k != 1 {
		t.Fatalf("guest booted %d times", k)
	}
	all := counters(log)
	for i := 1; i < len(all); i++ {
		if all[i] != all[i-1]+1 {
			t.Fatalf("counter jumped from %d to %d", all[i-1], all[i])
		}
	}
}
