package hostd

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testguest"
	"golang.org/x/sys/unix"
)

const poolTestSize = 64 << 20

var poolSecret = []byte("symvirt-pool-secret-")

// poolHost is a host whose VMs keep RAM on /dev/shm, with ram_pool pool
// (and ram_pool_reserve, if given).
func poolHost(t *testing.T, pool string, reserve ...string) (*Host, func(name string) *VM) {
	kernel, _ := testguest.Paths(t)
	dir := t.TempDir()
	h, err := New(Config{StateDir: dir, Policy: testPolicy(t), RAMPool: pool, RAMPoolReserve: strings.Join(reserve, "")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		for _, d := range h.layout().RAMDirs() {
			os.RemoveAll(d) // the VMs' files stay for a hostd's restart, not for the next test
		}
	})
	on := true
	return h, func(name string) *VM {
		vm, err := h.Create(Spec{Name: name, Memory: poolTestSize >> 20, Kernel: kernel, SharedMemory: &on})
		if err != nil {
			t.Fatal(err)
		}
		return vm
	}
}

// secretRAM opens a new RAM file for vm (from the pool if pooled), sized
// as QEMU would, and fills it with the secret; it returns the file's inode.
func secretRAM(t *testing.T, vm *VM, pooled bool) uint64 {
	f, created, err := vm.openRAM(vm.Spec(), pooled)
	if err != nil {
		t.Skipf("no shared RAM file here: %v", err)
	}
	defer f.Close()
	if !created {
		t.Fatal("openRAM found a file where it was to create one")
	}
	if err := f.Truncate(poolTestSize); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat(poolSecret, poolTestSize/len(poolSecret)), 0); err != nil {
		t.Fatal(err)
	}
	return fileInode(t, f.Name())
}

func fileInode(t *testing.T, path string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// waitPooled waits until the pool has n bytes ready (none being zeroed).
func waitPooled(t *testing.T, p *ramPool, n int64) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		ready, zeroing := p.readyBytes(), p.zeroing
		p.mu.Unlock()
		if ready == n && zeroing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool: %d bytes ready, %d being zeroed; want %d ready", ready, zeroing, n)
		}
	}
}

// TestRAMPoolZeroesWhatItHandsOut: the RAM file of a VM that goes, full
// of its guest's data, is the next VM's (the same inode, a new name) with
// every byte zero, and is the pool's again when that one goes; the pool
// never hands out a file to a VM whose RAM is not to come from it.
func TestRAMPoolZeroesWhatItHandsOut(t *testing.T) {
	h, mk := poolHost(t, "")
	vm := mk("p1")
	ino := secretRAM(t, vm, true)
	vm.removeRAM()
	if _, err := os.Stat(h.ramPath(vm.Spec())); !os.IsNotExist(err) {
		t.Fatalf("the departed VM's RAM file is still at its path: %v", err)
	}
	waitPooled(t, h.ramPool, poolTestSize)

	other := mk("p0")
	if got := secretRAM(t, other, false); got == ino {
		t.Fatal("a VM whose RAM is not to come from the pool got a pooled file")
	}
	elsewhere, err := qemu.OpenRAMDir(filepath.Join(t.TempDir(), "hugetlbfs"))
	if err != nil {
		t.Fatal(err)
	}
	defer elsewhere.Close()
	if _, _, ok := h.ramPool.Take(elsewhere, filepath.Join(elsewhere.Name(), "huge.ram"), poolTestSize); ok || h.ramPool.bytes() != poolTestSize {
		t.Fatalf("a RAM file outside the pool's directory (a hugetlbfs one) was handed a pooled file: ok %v, %d bytes left", ok, h.ramPool.bytes())
	}
	vm2 := mk("p2")
	f, created, err := vm2.openRAM(vm2.Spec(), true)
	if err != nil || !created {
		t.Fatalf("openRAM: created %v, %v", created, err)
	}
	defer f.Close()
	data, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if got := fileInode(t, f.Name()); got != ino || h.ramPool.takenCount() != 1 {
		t.Fatalf("new VM's RAM file: inode %d (the departed VM's was %d), %d taken from the pool", got, ino, h.ramPool.takenCount())
	}
	if len(data) != poolTestSize || bytes.Contains(data, poolSecret) || !bytes.Equal(data, make([]byte, poolTestSize)) {
		t.Fatalf("the pooled file is %d bytes, the secret in it %d times: not zeroed", len(data), bytes.Count(data, poolSecret))
	}
	vm2.removeRAM()
	waitPooled(t, h.ramPool, poolTestSize)
	h.ramPool.Reclaim()
	if n := h.ramPool.bytes(); n != 0 || pooledFiles(t, h) != 0 {
		t.Fatalf("after Reclaim the pool holds %d bytes, %d files", n, pooledFiles(t, h))
	}
}

func pooledFiles(t *testing.T, h *Host) int {
	m, err := filepath.Glob(filepath.Join(h.layout().ramDir(qemu.DefaultShmDir), qemu.PoolPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// TestRAMPoolRefusesAMappedFile: a departed VM's file that another process
// still has open and mapped (a QEMU that did not exit) is removed, not pooled: zeroing it
// would change that process's memory, and handing it out would give a new
// guest pages the other can read. The process's pages are untouched.
func TestRAMPoolRefusesAMappedFile(t *testing.T) {
	h, mk := poolHost(t, "")
	vm := mk("m1")
	secretRAM(t, vm, false)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMapRAM$")
	cmd.Env = append(os.Environ(), "SYMVIRT_MAP_RAM="+h.ramPath(vm.Spec()))
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(out).ReadString('\n'); !strings.HasPrefix(line, "mapped") {
		t.Fatalf("helper: %q", line)
	}
	vm.removeRAM()
	for deadline := time.Now().Add(20 * time.Second); h.ramPool.bytes() != 0 || pooledFiles(t, h) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("a file another process maps is in the pool (%d bytes, %d files)", h.ramPool.bytes(), pooledFiles(t, h))
		}
	}
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the mapping process's memory changed: %v", err)
	}
}

// TestHelperMapRAM (a helper process) maps $SYMVIRT_MAP_RAM until its
// stdin closes, then fails unless the secret is still in every page.
func TestHelperMapRAM(t *testing.T) {
	path := os.Getenv("SYMVIRT_MAP_RAM")
	if path == "" {
		t.Skip("helper process")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, poolTestSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("mapped")
	bufio.NewReader(os.Stdin).ReadString('\n')
	if n := bytes.Count(m, poolSecret); n != poolTestSize/len(poolSecret) {
		t.Fatalf("the secret is in the mapping %d times, was %d", n, poolTestSize/len(poolSecret))
	}
	runtime.KeepAlive(f) // open as long as mapped, as QEMU keeps its RAM file
}

// TestRAMPoolBounds: the pool keeps at most ram_pool bytes (the oldest
// file goes first) and no file larger; "0" turns it off; a file an
// earlier hostd left in the pool is removed at start.
func TestRAMPoolBounds(t *testing.T) {
	h, mk := poolHost(t, "64M")
	for _, name := range []string{"b1", "b2"} {
		vm := mk(name)
		secretRAM(t, vm, false)
		vm.removeRAM()
		waitPooled(t, h.ramPool, poolTestSize)
	}
	if n := pooledFiles(t, h); n != 1 {
		t.Fatalf("pool of 64M holds %d files of 64M", n)
	}
	small, mkSmall := poolHost(t, "32M")
	vm := mkSmall("s1")
	secretRAM(t, vm, false)
	vm.removeRAM()
	if n := small.ramPool.bytes(); n != 0 {
		t.Fatalf("a pool of 32M took a 64M file (%d bytes)", n)
	}
	off, mkOff := poolHost(t, "0")
	if off.ramPool != nil {
		t.Fatal("ram_pool 0: the host has a pool")
	}
	vm = mkOff("o1")
	secretRAM(t, vm, true)
	vm.removeRAM()
	if _, err := os.Stat(off.ramPath(vm.Spec())); !os.IsNotExist(err) {
		t.Fatalf("ram_pool 0: the RAM file was not removed: %v", err)
	}

	dir := h.layout().ramDir(qemu.DefaultShmDir)
	if err := os.WriteFile(filepath.Join(dir, qemu.PoolPrefix+"99"), poolSecret, 0o600); err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := os.WriteFile(filepath.Join(dir, qemu.PoolPrefix+"98"), poolSecret, 0o600); err != nil {
		t.Fatal(err)
	}
	h2, err := New(Config{StateDir: h.cfg.StateDir, Policy: h.cfg.Policy})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if n := pooledFiles(t, h2); n != 0 {
		t.Fatalf("%d pooled files left by an earlier hostd are still there", n)
	}
}

// TestRAMPoolConfig: ram_pool's default, off and sizes; a bad size names
// the field.
func TestRAMPoolConfig(t *testing.T) {
	for v, want := range map[string]int64{"": ramPoolDefault, "0": 0, "off": 0, "2G": 2 << 30, "512M": 512 << 20} {
		c := Config{StateDir: t.TempDir(), RAMPool: v}
		if err := c.setDefaults(); err != nil || c.ramPoolBytes != want {
			t.Fatalf("ram_pool %q: %d bytes (%v), want %d", v, c.ramPoolBytes, err, want)
		}
	}
	c := Config{StateDir: t.TempDir(), RAMPool: "lots"}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), "ram_pool") {
		t.Fatalf("ram_pool lots: %v, want an error naming ram_pool", err)
	}
	for _, r := range []struct{ pool, reserve, err string }{
		{"", "", ""}, {"", "1G", ""}, {"4G", "4G", ""}, {"4G", "8G", "ram_pool_reserve"},
		{"off", "1G", "ram_pool_reserve"}, {"", "lots", "ram_pool_reserve"},
	} {
		c := Config{StateDir: t.TempDir(), RAMPool: r.pool, RAMPoolReserve: r.reserve}
		err := c.setDefaults()
		if r.err == "" && err != nil || r.err != "" && (err == nil || !strings.Contains(err.Error(), r.err)) {
			t.Fatalf("ram_pool %q, ram_pool_reserve %q: %v, want an error naming %q", r.pool, r.reserve, err, r.err)
		}
	}
}

// TestRAMPoolReserve: with ram_pool_reserve the pool makes a file of its
// own at hostd's start, every page allocated and zero; the first VM's
// QEMU runs on it, the pool makes another once the VM has had its start
// to itself, and the reserve outlives the pool's time limit.
func TestRAMPoolReserve(t *testing.T) {
	defer func(d time.Duration) { ramPoolRefillDelay = d }(ramPoolRefillDelay)
	ramPoolRefillDelay = time.Second
	h, mk := poolHost(t, "128M", "64M")
	waitPooled(t, h.ramPool, poolTestSize)
	reserved := h.ramPool.ready[0].id
	vm := mk("first")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := vm.launch(ctx, launch{pooledRAM: true}); err != nil {
		t.Fatal(err)
	}
	defer vm.kill()
	path := h.ramPath(vm.Spec())
	if got := fileInode(t, path); got != reserved.Ino || h.ramPool.takenCount() != 1 {
		t.Fatalf("the first VM's RAM file is inode %d, the reserve's %d (%d taken)", got, reserved.Ino, h.ramPool.takenCount())
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Blocks*512 < poolTestSize {
		t.Fatalf("the reserve's file has %d of %d bytes allocated (%v)", st.Blocks*512, poolTestSize, err)
	}
	if n := h.ramPool.bytes(); n != 0 || !h.ramPool.busy() {
		t.Fatalf("right after the hand-out the pool holds %d bytes (busy %v): refilled at once, beside the VM's start", n, h.ramPool.busy())
	}
	waitPooled(t, h.ramPool, poolTestSize)
	next := h.ramPool.ready[0]
	if next.id.Ino == reserved.Ino {
		t.Fatal("the pool refilled its reserve with the file it handed out")
	}
	data, err := os.ReadFile(next.id.Path)
	if err != nil || !bytes.Equal(data, make([]byte, poolTestSize)) {
		t.Fatalf("the refilled reserve is %d bytes, not all zeros (%v)", len(data), err)
	}
	h.ramPool.expire(next)
	if h.ramPool.bytes() != poolTestSize {
		t.Fatalf("the reserve's file expired: the pool holds %d bytes", h.ramPool.bytes())
	}
	// Freed for room, the reserve comes back after the next VM's start.
	h.ramPool.Reclaim()
	after := mk("after")
	f, created, err := after.openRAM(after.Spec(), true)
	if err != nil || !created || fileInode(t, f.Name()) == next.id.Ino {
		t.Fatalf("after Reclaim: created %v, %v", created, err)
	}
	f.Close()
	waitPooled(t, h.ramPool, poolTestSize)
}

// TestIncomingQEMUWritesNoGuestRAM: a QEMU waiting for its state
// (-incoming) on a RAM file from the pool writes nothing into it before
// the state arrives, which is what lets a restore skip clearing such a
// file (snapshot.LoadRAM's zero). The control: the same file under a QEMU
// that boots its guest is written as soon as the guest runs, so the scan
// sees what a QEMU writes.
func TestIncomingQEMUWritesNoGuestRAM(t *testing.T) {
	h, mk := poolHost(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm := mk("incoming")
	ino := secretRAM(t, vm, true)
	vm.removeRAM()
	waitPooled(t, h.ramPool, poolTestSize)
	for _, incoming := range []bool{true, false} {
		if err := vm.launch(ctx, launch{incoming: incoming, pooledRAM: true}); err != nil {
			t.Fatal(err)
		}
		path := h.ramPath(vm.Spec())
		if got := fileInode(t, path); got != ino || vm.zeroRAM != incoming {
			t.Fatalf("incoming %v: RAM file inode %d (the pool's %d), zeroRAM %v", incoming, got, ino, vm.zeroRAM)
		}
		mon, err := vm.monitor()
		if err != nil {
			t.Fatal(err)
		}
		want := "inmigrate"
		if !incoming {
			want = "running"
			if err := mon.Cont(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if st, err := mon.Status(ctx); err != nil || st.Status != want {
			t.Fatalf("incoming %v: qemu status %+v (%v), want %s", incoming, st, err, want)
		}
		time.Sleep(time.Second) // QEMU's start and reset are done; a guest has run a while
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		written := len(data) - bytes.Count(data, []byte{0})
		t.Logf("incoming %v: %d non-zero bytes in the guest's RAM file", incoming, written)
		if incoming && written != 0 {
			t.Fatalf("a QEMU waiting for its state wrote %d non-zero bytes into its guest RAM file", written)
		}
		if !incoming && written == 0 {
			t.Fatal("control: a QEMU that ran its guest for a second left its RAM file all zeros: the scan sees nothing")
		}
		vm.kill()
		vm.removeRAM()
		waitPooled(t, h.ramPool, poolTestSize)
	}
}
