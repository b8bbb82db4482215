package guestd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestproto"
)

// fakeSys is a fake /sys/class/net tree plus the few kernel reactions the
// hand-off relies on, applied by its write function: active_slave only takes
// a slave, "+X" to slaves enslaves X (master link, perm_hwaddr), flags and
// primary are stored. Everything else the code reads is plain files.
type fakeSys struct {
	t    *testing.T
	root string
	mu   sync.Mutex
	log  []string // "path=value" of every write
}

func newFakeSys(t *testing.T) *fakeSys {
	f := &fakeSys{t: t, root: t.TempDir()}
	if err := os.MkdirAll(f.dir(), 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeSys) dir(p ...string) string {
	return filepath.Join(append([]string{f.root, "sys/class/net"}, p...)...)
}

func (f *fakeSys) put(iface, attr, value string) {
	f.t.Helper()
	p := f.dir(iface, attr)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(value+"\n"), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeSys) get(iface string, attr ...string) string {
	b, _ := os.ReadFile(f.dir(append([]string{iface}, attr...)...))
	return strings.TrimSpace(string(b))
}

// addNIC adds an up ethernet NIC, atomically (built aside, then renamed in)
// so that a concurrent reader never sees half of it.
func (f *fakeSys) addNIC(name string, index int, mac string) {
	f.t.Helper()
	stage := filepath.Join(f.root, "stage", name)
	for attr, v := range map[string]string{"ifindex": fmt.Sprint(index), "type": "1", "address": mac, "flags": "0x1003", "carrier": "1"} {
		if err := os.MkdirAll(stage, 0o755); err != nil {
			f.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stage, attr), []byte(v+"\n"), 0o644); err != nil {
			f.t.Fatal(err)
		}
	}
	if err := os.Rename(stage, f.dir(name)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeSys) addBond(name string, index int, slaves []string, active string) {
	f.addNIC(name, index, "52:54:00:aa:aa:aa")
	f.put(name, "bonding/mode", "active-backup 1")
	f.put(name, "bonding/slaves", "")
	f.put(name, "bonding/active_slave", "")
	f.put(name, "bonding/primary", "")
	for _, s := range slaves {
		f.enslave(name, s)
	}
	f.put(name, "bonding/active_slave", active)
}

func (f *fakeSys) enslave(bond, s string) {
	f.put(s, "bonding_slave/perm_hwaddr", f.get(s, "address"))
	if err := os.Symlink("../"+bond, f.dir(s, "master")); err != nil {
		f.t.Fatal(err)
	}
	f.put(bond, "bonding/slaves", strings.TrimSpace(f.get(bond, "bonding", "slaves")+" "+s))
}

// unplug removes a NIC as a hot-unplug would, bond membership included.
func (f *fakeSys) unplug(name string) {
	if m, err := os.Readlink(f.dir(name, "master")); err == nil {
		bond := filepath.Base(m)
		sl := slices.DeleteFunc(strings.Fields(f.get(bond, "bonding", "slaves")), func(s string) bool { return s == name })
		f.put(bond, "bonding/slaves", strings.Join(sl, " "))
		if f.get(bond, "bonding", "active_slave") == name {
			f.put(bond, "bonding/active_slave", "")
		}
	}
	os.RemoveAll(f.dir(name))
}

func (f *fakeSys) write(path string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, _ := filepath.Rel(f.dir(), path)
	v := strings.TrimSpace(string(data))
	f.log = append(f.log, rel+"="+v)
	parts := strings.Split(rel, "/")
	if _, err := os.Stat(path); err != nil {
		return err
	}
	switch {
	case len(parts) == 3 && parts[1] == "bonding" && parts[2] == "active_slave":
		if !slices.Contains(strings.Fields(f.get(parts[0], "bonding", "slaves")), v) {
			return syscall.EINVAL
		}
	case len(parts) == 3 && parts[1] == "bonding" && parts[2] == "slaves":
		if !strings.HasPrefix(v, "+") {
			return syscall.EINVAL
		}
		s := v[1:]
		if fl := f.get(s, "flags"); fl != "0x1002" {
			return fmt.Errorf("fake kernel: %s enslaved while up (flags %s): %w", s, fl, syscall.EPERM)
		}
		f.enslave(parts[0], s)
		return nil
	}
	return os.WriteFile(path, []byte(v+"\n"), 0o644)
}

func (f *fakeSys) netSys(t *testing.T) *netSys {
	n := newNetSys(f.root, testLogger(t))
	n.write = f.write
	n.verify = 200 * time.Millisecond
	return n
}

const (
	macVirtio = "52:54:00:00:00:01"
	macPT     = "52:54:00:00:00:02"
	macNewPT  = "52:54:00:00:00:03"
)

// guestLike is the test guest's network: bond0 over a virtio NIC (eth0) and
// a passthrough NIC (eth1), eth1 active and primary, plus a NIC of its own.
func guestLike(t *testing.T) *fakeSys {
	f := newFakeSys(t)
	f.addNIC("lo", 1, "00:00:00:00:00:00")
	f.put("lo", "type", "772")
	f.addNIC("eth0", 2, macVirtio)
	f.addNIC("eth1", 3, macPT)
	f.addNIC("mgmt0", 4, "52:54:00:00:00:09")
	f.addBond("bond0", 5, []string{"eth0", "eth1"}, "eth1")
	f.put("bond0", "bonding/primary", "eth1")
	os.WriteFile(filepath.Join(f.dir(), "bonding_masters"), []byte("bond0\n"), 0o644)
	return f
}

func TestDetachSwitchesAwayAndRestore(t *testing.T) {
	f := guestLike(t)
	n := f.netSys(t)
	h, err := n.detach([]guestproto.Device{{ID: "pt0", MAC: macPT}, {ID: "gpu0"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.get("bond0", "bonding", "active_slave"); got != "eth0" {
		t.Errorf("active slave %q, want eth0", got)
	}
	if got := f.get("bond0", "bonding", "primary"); got != "" {
		t.Errorf("primary %q, want cleared", got)
	}
	if len(h.bonds) != 1 || h.bonds[0].switchedTo != "eth0" || h.bonds[0].prevActive != "eth1" {
		t.Fatalf("handoff %+v", h.bonds)
	}
	// ABORT before anything was detached: all back as it was.
	n.reattach(context.Background(), h)
	if a, p := f.get("bond0", "bonding", "active_slave"), f.get("bond0", "bonding", "primary"); a != "eth1" || p != "eth1" {
		t.Errorf("after restore: active %q primary %q, want eth1 eth1", a, p)
	}
}

func TestReattachEnslavesReplacement(t *testing.T) {
	f := guestLike(t)
	n := f.netSys(t)
	h, err := n.detach([]guestproto.Device{{ID: "pt0", MAC: macPT}})
	if err != nil {
		t.Fatal(err)
	}
	// The host detaches eth1; after the restore a new passthrough NIC shows
	// up a little later, under the freed name, with another MAC. A NIC that
	// existed at PREPARE (mgmt0) must be left alone.
	f.unplug("eth1")
	go func() {
		time.Sleep(300 * time.Millisecond)
		f.addNIC("eth1", 7, macNewPT)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	n.reattach(ctx, h)
	if time.Since(start) > 2*time.Second {
		t.Errorf("reattach took %v", time.Since(start))
	}
	if got := f.get("bond0", "bonding", "slaves"); got != "eth0 eth1" {
		t.Errorf("slaves %q", got)
	}
	if a, p := f.get("bond0", "bonding", "active_slave"), f.get("bond0", "bonding", "primary"); a != "eth1" || p != "eth1" {
		t.Errorf("active %q primary %q, want the new eth1", a, p)
	}
	if _, err := os.Readlink(f.dir("mgmt0", "master")); err == nil {
		t.Error("mgmt0, present at PREPARE, was enslaved")
	}
	if !slices.Contains(f.log, "eth1/flags=0x1002") {
		t.Errorf("new NIC not brought down before enslaving; writes: %q", f.log)
	}
}

func TestReattachWithoutReplacementGivesUp(t *testing.T) {
	f := guestLike(t)
	n := f.netSys(t)
	h, _ := n.detach([]guestproto.Device{{ID: "pt0", MAC: macPT}})
	f.unplug("eth1")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	n.reattach(ctx, h)
	if el := time.Since(start); el < 250*time.Millisecond || el > 2*time.Second {
		t.Errorf("reattach gave up after %v, want the NIC wait (300ms)", el)
	}
	if got := f.get("bond0", "bonding", "active_slave"); got != "eth0" {
		t.Errorf("active %q, want eth0 to stay", got)
	}
}

func TestDetachNothingToDo(t *testing.T) {
	f := guestLike(t)
	n := f.netSys(t)
	// A NIC in no bond, a MAC nobody has, a device without MAC.
	h, err := n.detach([]guestproto.Device{{ID: "a", MAC: "52:54:00:00:00:09"}, {ID: "b", MAC: "52:54:00:ff:ff:ff"}, {ID: "c"}})
	if err != nil || len(h.bonds) != 0 {
		t.Fatalf("detach = %+v, %v", h, err)
	}
	if got := f.get("bond0", "bonding", "active_slave"); got != "eth1" {
		t.Errorf("active changed to %q", got)
	}
	if len(f.log) != 0 {
		t.Errorf("writes: %q", f.log)
	}
}

func TestDetachActiveStaysWhenBackupLeaves(t *testing.T) {
	f := guestLike(t)
	n := f.netSys(t)
	h, err := n.detach([]guestproto.Device{{ID: "v", MAC: macVirtio}})
	if err != nil || len(h.bonds) != 1 || h.bonds[0].switchedTo != "" {
		t.Fatalf("detach = %+v, %v", h, err)
	}
	if got := f.get("bond0", "bonding", "active_slave"); got != "eth1" {
		t.Errorf("active %q, want eth1", got)
	}
}

func TestDetachFailsWhenSwitchDoesNotTake(t *testing.T) {
	f := guestLike(t)
	n := f.netSys(t)
	n.write = func(path string, data []byte) error {
		if strings.HasSuffix(path, "active_slave") {
			return syscall.EINVAL // the kernel refuses (e.g. eth0's link is down)
		}
		return f.write(path, data)
	}
	_, err := n.detach([]guestproto.Device{{ID: "pt0", MAC: macPT}})
	if !errors.Is(err, ErrHandoff) {
		t.Fatalf("detach = %v, want ErrHandoff", err)
	}
	if got := f.get("bond0", "bonding", "primary"); got != "eth1" {
		t.Errorf("primary %q after a failed hand-off, want eth1 restored", got)
	}
}

func TestByMACPrefersPermanentAddress(t *testing.T) {
	f := guestLike(t)
	// fail_over_mac=none: the bond gave every slave its own address.
	f.put("eth0", "address", macPT)
	n := f.netSys(t)
	nics, err := n.nics()
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC(macPT)
	c, ok, err := byMAC(nics, mac)
	if err != nil || !ok || c.name != "eth1" {
		t.Errorf("byMAC = %s %v %v, want eth1", c.name, ok, err)
	}
	// Two NICs with the same address and no permanent one to tell: error.
	f.put("mgmt0", "address", macVirtio)
	f.put("eth0", "address", macVirtio)
	os.RemoveAll(f.dir("eth0", "bonding_slave"))
	nics, _ = n.nics()
	mac, _ = net.ParseMAC(macVirtio)
	if _, _, err := byMAC(nics, mac); !errors.Is(err, ErrHandoff) {
		t.Errorf("ambiguous MAC: %v", err)
	}
}
