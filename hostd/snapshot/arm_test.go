package snapshot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/symvirt/symvirt/internal/testqmp"
	"github.com/symvirt/symvirt/qmp"
)

// fakeQEMU is a monitor that answers every command, failing those named
// in fail, and records what it was asked.
func fakeQEMU(t *testing.T, fail ...string) (*qmp.Client, *testqmp.Monitor) {
	return testqmp.Start(t, 7, func(r testqmp.Request) testqmp.Reply {
		if slices.Contains(fail, r.Execute) {
			return testqmp.Reply{Error: "refused"}
		}
		return testqmp.Reply{}
	})
}

// An arm reserves the state file's room in its directory and hands QEMU the
// file; disarmed unused, the directory goes and QEMU lets the file go.
func TestArmReservesAndDisarmRemoves(t *testing.T) {
	mon, fq := fakeQEMU(t)
	dir := filepath.Join(t.TempDir(), "ck")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	const ram = 32 << 20
	a, err := Arm(context.Background(), mon, dir, ram, 0)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("no fallocate here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "state.bin"), &st); err != nil || st.Blocks*512 < bound(ram) {
		t.Fatalf("state file: %v, %d bytes allocated, want %d reserved", err, st.Blocks*512, bound(ram))
	}
	a.Disarm()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("disarmed, the directory is left: %v", err)
	}
	var asked []string
	for _, r := range fq.Asked() {
		asked = append(asked, r.String())
	}
	for _, want := range []string{`getfd {"fdname":"symvirt-live"}`, `closefd {"fdname":"symvirt-live"}`,
		`migrate-set-capabilities {"capabilities":[{"capability":"background-snapshot","state":false}]}`} {
		if !slices.Contains(asked, want) {
			t.Errorf("QEMU was not asked %s: %q", want, asked)
		}
	}
}

// An arm that fails leaves no directory behind.
func TestArmFailureRemovesDir(t *testing.T) {
	for _, refused := range []string{"migrate-set-capabilities", "getfd", "migrate-set-parameters"} {
		mon, _ := fakeQEMU(t, refused)
		dir := filepath.Join(t.TempDir(), "ck")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := Arm(context.Background(), mon, dir, 32<<20, 0); err == nil {
			t.Fatalf("%s refused: armed", refused)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s refused: the directory is left: %v", refused, err)
		}
	}
}
