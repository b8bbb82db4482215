package hostd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/snapshot"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testguest"
)

// Someone who can write to the checkpoint store attacks a restore, on real
// QEMU: a changed manifest (a disk at ../../etc/shadow, another initrd and
// state with the digests recomputed), a manifest signed by another CA's
// hostd or not at all, state.bin overwritten while QEMU reads it (with
// another checkpoint of the same VM: the strongest attack) or truncated, a
// disk copy changed. Each restore is refused with a clear error, with no
// QEMU left and the checkpoint untouched; the checkpoint itself restores.
func TestRestoreRefusesTamperedCheckpoint(t *testing.T) {
	f := newTamperFixture(t, false)
	f.attack("disk path ../../etc/shadow", ErrUnauthorized, func(dir string) {
		f.editManifest(dir, func(m *Manifest) { m.Spec.Disks[0].Path = "../../etc/shadow" })
	})
	f.attack("other initrd and state.bin, digests recomputed", ErrUnauthorized, func(dir string) {
		evil := filepath.Join(t.TempDir(), "initrd")
		run(t, "cp", f.initrd, evil)
		os.WriteFile(filepath.Join(dir, stateName), f.otherState, 0o600)
		fd, err := manifest.HashFile(filepath.Join(dir, stateName))
		if err != nil {
			t.Fatal(err)
		}
		f.editManifest(dir, func(m *Manifest) {
			m.Spec.Initrd = evil
			fd.Role = "state"
			m.Files[0] = fd
		})
	})
	f.attack("signed by another CA's hostd", ErrUnauthorized, func(dir string) {
		other := t.TempDir()
		if err := pki.Init(other, pki.InitOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := pki.Issue(other, pki.RoleHostd, "local", nil, time.Hour); err != nil {
			t.Fatal(err)
		}
		resign(t, dir, other, pki.RoleHostd, "local")
	})
	f.attack("unsigned", ErrUnauthorized, func(dir string) { os.Remove(filepath.Join(dir, manifestSigName)) })
	// Were the signer's key stolen, the paths would still be confined.
	f.attack("disk path ../../etc/shadow, signed by this host", ErrChecksum, func(dir string) {
		m, err := ReadManifest(dir)
		if err != nil {
			t.Fatal(err)
		}
		m.Spec.Disks[0].Path = "../../etc/shadow"
		if err := f.h.writeManifest(dir, m); err != nil {
			t.Fatal(err)
		}
	})
	f.attack("disk copy changed", ErrChecksum, func(dir string) {
		os.WriteFile(filepath.Join(dir, "disk-d0.raw"), bytes.ToUpper(f.diskData), 0o600)
	})
	f.attack("state.bin truncated", ErrChecksum, func(dir string) {
		st, err := os.Stat(filepath.Join(dir, stateName))
		if err != nil {
			t.Fatal(err)
		}
		os.Truncate(filepath.Join(dir, stateName), st.Size()/2)
	})
	// Overwritten in place once QEMU has started reading it (a rename
	// would not reach the descriptor the restore reads through).
	f.attack("state.bin overwritten by another checkpoint's while QEMU reads it", ErrChecksum, func(dir string) {
		snapshot.TestHookStateSent = func() {
			snapshot.TestHookStateSent = nil
			if err := os.WriteFile(filepath.Join(dir, stateName), f.otherState, 0o600); err != nil {
				t.Error(err)
			}
		}
	})
	snapshot.TestHookStateSent = nil
	f.genuineRestores()
}

// The same attacks on a checkpoint's RAM file (a VM whose RAM is a shared
// file: hostd copies it itself, snapshot.SaveShared): changed, truncated,
// swapped for another checkpoint's (its digest recomputed: the signature
// fails; as is: the digest fails), overwritten while the restore copies
// it. Each is refused; the checkpoint itself restores and runs on.
func TestRestoreRefusesTamperedRAMFile(t *testing.T) {
	f := newTamperFixture(t, true)
	ram := func(dir string) string { return filepath.Join(dir, manifest.RAMName) }
	f.attack("ram.bin changed", ErrChecksum, func(dir string) {
		file, err := os.OpenFile(ram(dir), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		buf := make([]byte, 4096)
		for off := int64(0); ; off += 4096 { // the first page that is not zeros
			if _, err := file.ReadAt(buf, off); err != nil {
				t.Fatal("ram.bin is all zeros")
			}
			if !manifest.IsZero(buf) {
				file.WriteAt(bytes.Repeat([]byte{0xcc}, 64), off)
				return
			}
		}
	})
	f.attack("ram.bin truncated", ErrChecksum, func(dir string) {
		os.Truncate(ram(dir), manifest.Chunk*8)
	})
	f.attack("another checkpoint's ram.bin, digest recomputed", ErrUnauthorized, func(dir string) {
		os.WriteFile(ram(dir), f.otherRAM, 0o600)
		file, _ := os.Open(ram(dir))
		defer file.Close()
		f.editManifest(dir, func(m *Manifest) {
			sum, err := manifest.SparseDigest(file, int64(len(f.otherRAM)), m.Files[1].Chunks)
			if err != nil {
				t.Fatal(err)
			}
			m.Files[1].SHA256 = sum
		})
	})
	f.attack("ram.bin overwritten by another checkpoint's while it is copied", ErrChecksum, func(dir string) {
		snapshot.TestHookRAMChunk = func() {
			snapshot.TestHookRAMChunk = nil
			if err := os.WriteFile(ram(dir), f.otherRAM, 0o600); err != nil {
				t.Error(err)
			}
		}
	})
	snapshot.TestHookRAMChunk = nil
	f.genuineRestores()
}

// tamperFixture: a VM with a disk, its checkpoint ck1 (what the attacks
// tamper with) and the state (and RAM file) of a later checkpoint of it
// (otherState, otherRAM).
type tamperFixture struct {
	t                              *testing.T
	ctx                            context.Context
	h                              *Host
	ck1, initrd                    string
	diskData, otherState, otherRAM []byte
}

// newTamperFixture's VM has its RAM in a shared file or private
// (state.bin then holds it).
func newTamperFixture(t *testing.T, sharedRAM bool) *tamperFixture {
	kernel, _ := testguest.Paths(t)
	f := &tamperFixture{t: t, initrd: testguest.Initrd(t, nil)}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	t.Cleanup(cancel)
	f.ctx = ctx
	f.h, _ = benchHost(t, "7")
	disk := filepath.Join(t.TempDir(), "d0.raw")
	f.diskData = bytes.Repeat([]byte("symvirt-disk "), 80000) // ~1 MiB
	if err := os.WriteFile(disk, f.diskData, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: "ta1", Memory: 256, Kernel: kernel, Initrd: f.initrd,
		Append: "console=ttyS0 quiet panic=-1 symvirt.counter=1",
		Disks:  []Disk{{ID: "d0", Path: disk, Format: "raw"}}, SharedMemory: &sharedRAM}
	vm, err := f.h.Create(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitSerial(t, filepath.Join(vm.dir, fileSerial), regexp.MustCompile(`symvirt-counter 3`))
	f.ck1 = filepath.Join(t.TempDir(), "ck1")
	if _, err := vm.Checkpoint(ctx, CheckpointOptions{Dir: f.ck1, Stop: true, NoGuest: true}, nil); err != nil {
		t.Fatal(err)
	}
	// A second checkpoint of the same VM, later: its state.bin is a valid
	// stream for this spec, which an attacker would swap in.
	vm2, err := f.h.Restore(ctx, RestoreOptions{Dir: f.ck1, NoGuest: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitSerial(t, filepath.Join(vm2.dir, fileSerial), regexp.MustCompile(`symvirt-counter 8`))
	ck2 := filepath.Join(t.TempDir(), "ck2")
	if _, err := vm2.Checkpoint(ctx, CheckpointOptions{Dir: ck2, Stop: true, NoGuest: true}, nil); err != nil {
		t.Fatal(err)
	}
	if f.otherState, err = os.ReadFile(filepath.Join(ck2, stateName)); err != nil {
		t.Fatal(err)
	}
	if f.otherRAM, err = os.ReadFile(filepath.Join(ck2, manifest.RAMName)); sharedRAM && err != nil {
		t.Fatal(err)
	}
	return f
}

// attack restores a tampered copy of ck1 and wants it refused with want,
// no QEMU left and the copy untouched.
func (f *tamperFixture) attack(name string, want error, tamper func(dir string)) {
	t, h := f.t, f.h
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ck")
	run(t, "cp", "-a", f.ck1, dir)
	tamper(dir)
	_, err := h.Restore(f.ctx, RestoreOptions{Dir: dir, NoGuest: true}, nil)
	if !errors.Is(err, want) {
		t.Fatalf("%s: restore: %v, want %v", name, err, want)
	}
	t.Logf("%s: refused: %v", name, err)
	if pids := pidsUnder(h.cfg.StateDir); len(pids) != 0 {
		t.Fatalf("%s: QEMU left running: pids %v", name, pids)
	}
	if v, err := h.Get("ta1"); err == nil && v.alive() {
		t.Fatalf("%s: vm ta1 is alive", name)
	}
	if _, err := os.Stat(filepath.Join(dir, manifestName)); err != nil {
		t.Fatalf("%s: the checkpoint was touched: %v", name, err)
	}
}

func (f *tamperFixture) editManifest(dir string, edit func(m *Manifest)) {
	var m Manifest
	path := filepath.Join(dir, manifestName)
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &m); err != nil {
		f.t.Fatal(err)
	}
	edit(&m)
	data, _ = json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		f.t.Fatal(err)
	}
}

// genuineRestores: the untouched checkpoint restores, and the guest counts
// on from its cut, on the disk copy.
func (f *tamperFixture) genuineRestores() {
	t := f.t
	vm3, err := f.h.Restore(f.ctx, RestoreOptions{Dir: f.ck1, NoGuest: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	counter := regexp.MustCompile(`symvirt-counter (\d+)`)
	serial := filepath.Join(vm3.dir, fileSerial)
	before := len(counter.FindAllSubmatch(readOr(serial), -1))
	deadline := time.Now().Add(time.Minute)
	for len(counter.FindAllSubmatch(readOr(serial), -1)) <= before+1 {
		if time.Now().After(deadline) {
			t.Fatal("the restored guest does not count")
		}
		time.Sleep(200 * time.Millisecond)
	}
	first, _ := strconv.Atoi(string(counter.FindAllSubmatch(readOr(serial), -1)[before][1]))
	if first < 3 || first > 8 {
		t.Fatalf("restored guest counts from %d: not from the first checkpoint's cut", first)
	}
	if got, _ := os.ReadFile(vm3.Spec().Disks[0].Path); !bytes.Equal(got, f.diskData) {
		t.Fatalf("restored disk %s differs from the checkpoint's", vm3.Spec().Disks[0].Path)
	}
}

func readOr(path string) []byte {
	data, _ := os.ReadFile(path)
	return data
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// pidsUnder lists the processes whose command line mentions dir (the
// QEMUs of a state dir; testenv's, which this package cannot import).
func pidsUnder(dir string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && bytes.Contains(cmdline, []byte(dir)) {
			out = append(out, pid)
		}
	}
	return out
}
