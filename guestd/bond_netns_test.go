package guestd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/guestproto"
)

// These tests run the hand-off code against the real kernel: in a fresh
// network namespace whose sysfs is mounted (from a thread inside it) under a
// temporary SysRoot. The namespace's interfaces are made with netlink, so
// that neither side needs iproute2 (the test guest has only busybox).

// testNetns is a network namespace with its sysfs at root/sys, and a second
// one for the far ends of its veths, so that the first holds only the NICs a
// guest would see.
type testNetns struct {
	root   string
	nl     *netlink.Handle
	peers  netns.NsHandle
	peerNL *netlink.Handle
}

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and mounts sysfs")
	}
	root := t.TempDir()
	sys := filepath.Join(root, "sys")
	if err := os.Mkdir(sys, 0o755); err != nil {
		t.Fatal(err)
	}
	// A sysfs mount shows the network devices of the namespace of the
	// thread that mounts it: mount from a thread moved into the new one.
	var ns, peers netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		peers, err = netns.New()
		if err == nil {
			ns, err = netns.New() // also moves this thread into it
		}
		if err == nil {
			err = unix.Mount("sysfs", sys, "sysfs", 0, "")
		}
		if serr := netns.Set(orig); serr != nil {
			// The thread is in the wrong namespace: exiting the goroutine
			// locked makes the runtime discard the thread.
			errc <- serr
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		for _, h := range []netns.NsHandle{ns, peers} {
			if h.IsOpen() {
				h.Close()
			}
		}
		t.Skipf("cannot set up a network namespace with its sysfs here: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(sys, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", sys, err)
		}
		ns.Close() // the last references: the namespaces and their links go
		peers.Close()
	})
	// Route netlink only: a kernel without xfrm (the test guest's) refuses
	// the other families NewHandleAt opens by default.
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	peerNL, err := netlink.NewHandleAt(peers, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peerNL.Close)
	return &testNetns{root: root, nl: nl, peers: peers, peerNL: peerNL}
}

// veth adds an ethernet NIC: a veth with its far end (name+"p") in the
// peers namespace, both up so that the NIC has carrier.
func (tn *testNetns) veth(t *testing.T, name, mac string) netlink.Link {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	la := netlink.NewLinkAttrs()
	la.Name, la.HardwareAddr = name, hw
	v := &netlink.Veth{LinkAttrs: la, PeerName: name + "p", PeerNamespace: netlink.NsFd(tn.peers)}
	if err := tn.nl.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	for _, h := range []struct {
		nl   *netlink.Handle
		name string
	}{{tn.nl, name}, {tn.peerNL, name + "p"}} {
		l, err := h.nl.LinkByName(h.name)
		if err != nil {
			t.Fatalf("%s: %v", h.name, err)
		}
		if err := h.nl.LinkSetUp(l); err != nil {
			t.Fatalf("%s up: %v", h.name, err)
		}
	}
	return tn.link(t, name)
}

func (tn *testNetns) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := tn.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// Discovery, MAC lookup and flags writes on real sysfs: veths (ethernet
// NICs) and a bridge (a master that is not a bond). Runs on any kernel.
func TestNICDiscoveryInNetns(t *testing.T) {
	tn := newTestNetns(t)
	v0 := tn.veth(t, "v0", "02:00:00:00:00:10")
	v1 := tn.veth(t, "v1", "02:00:00:00:00:11")
	la := netlink.NewLinkAttrs()
	la.Name = "br0"
	bridge := true
	if err := tn.nl.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		t.Logf("no bridges in this kernel (%v): that part is skipped", err)
		bridge = false
	} else if err := tn.nl.LinkSetMaster(v1, tn.link(t, "br0")); err != nil {
		t.Fatal(err)
	}

	n := newNetSys(tn.root, testLogger(t))
	nics, err := n.nics()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]nic{}
	for _, c := range nics {
		got[c.name] = c
	}
	want := 3 // lo, v0, v1
	if bridge {
		want++
	}
	if _, ok := got[v0.Attrs().Name]; !ok || len(nics) != want {
		t.Fatalf("sysfs under %s shows %d NICs %v, want %d: not the namespace's", tn.root, len(nics), got, want)
	}
	c := got["v0"]
	if c.index != v0.Attrs().Index || c.typ != arphrdEther || c.mac.String() != "02:00:00:00:00:10" || c.master != "" || c.isBond {
		t.Errorf("v0 = %+v", c)
	}
	if bridge && (got["v1"].master != "br0" || !got["br0"].isBridge) {
		t.Errorf("v1 master %q, br0 bridge %v", got["v1"].master, got["br0"].isBridge)
	}
	// A device whose NIC is in a bridge (or in nothing): nothing to hand
	// off, no error.
	h, err := n.detach([]guestproto.Device{{ID: "pt", MAC: "02:00:00:00:00:11"}})
	if err != nil || len(h.bonds) != 0 || !h.known[v1.Attrs().Index] {
		t.Errorf("detach = %+v, %v", h, err)
	}
	// The flags write that precedes enslaving really takes the NIC down.
	if err := n.setDown("v0"); err != nil {
		t.Fatal(err)
	}
	if tn.link(t, "v0").Attrs().Flags&net.FlagUp != 0 {
		t.Error("v0 still up after setDown")
	}
}

// The whole hand-off on a real active-backup bond: switch away at PREPARE,
// back on ABORT; after a "migration" (the passthrough NIC deleted, a new one
// added), the new NIC is enslaved and made primary and active. Checked via
// netlink, independently of the code's own sysfs reading. Needs a kernel
// with bonding (the test guest's has it; a sandbox's may not).
func TestBondHandoffInNetns(t *testing.T) {
	tn := newTestNetns(t)
	la := netlink.NewLinkAttrs()
	la.Name = "bond0"
	bond := netlink.NewLinkBond(la)
	bond.Mode = netlink.BOND_MODE_ACTIVE_BACKUP
	bond.Miimon = 100
	if err := tn.nl.LinkAdd(bond); err != nil {
		t.Skipf("no bonding in this kernel (%v): the bond hand-off is covered by the fake-sysfs tests only", err)
	}
	const macVirt, macPT, macPT2 = "02:00:00:00:01:01", "02:00:00:00:01:02", "02:00:00:00:01:03"
	for _, v := range []struct{ name, mac string }{{"virt0", macVirt}, {"pt0", macPT}} {
		l := tn.veth(t, v.name, v.mac)
		if err := tn.nl.LinkSetDown(l); err != nil {
			t.Fatal(err)
		}
		if err := tn.nl.LinkSetMaster(l, tn.link(t, "bond0")); err != nil {
			t.Fatalf("enslave %s: %v", v.name, err)
		}
	}
	if err := tn.nl.LinkSetUp(tn.link(t, "bond0")); err != nil {
		t.Fatal(err)
	}
	n := newNetSys(tn.root, testLogger(t))
	activeIs := func(name string) bool {
		b, ok := tn.link(t, "bond0").(*netlink.Bond)
		return ok && b.ActiveSlave == tn.link(t, name).Attrs().Index
	}
	if err := n.setActive("bond0", "pt0", 5*time.Second); err != nil {
		t.Fatalf("making pt0 active to start with: %v", err)
	}
	if err := n.setPrimary("bond0", "pt0"); err != nil {
		t.Fatal(err)
	}

	// PREPARE, then ABORT: away and back.
	h, err := n.detach([]guestproto.Device{{ID: "pt", MAC: macPT}})
	if err != nil {
		t.Fatalf("detach: %v", err)
	}
	if !activeIs("virt0") {
		t.Fatal("after detach the active slave is not virt0")
	}
	n.reattach(context.Background(), h)
	if !activeIs("pt0") {
		t.Fatal("after the abort the active slave is not pt0 again")
	}

	// PREPARE, then the device goes and a new one comes.
	h, err = n.detach([]guestproto.Device{{ID: "pt", MAC: macPT}})
	if err != nil || !activeIs("virt0") {
		t.Fatalf("second detach: %v", err)
	}
	if err := tn.nl.LinkDel(tn.link(t, "pt0")); err != nil {
		t.Fatal(err)
	}
	tn.veth(t, "pt1", macPT2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n.reattach(ctx, h)
	pt1 := tn.link(t, "pt1")
	if pt1.Attrs().MasterIndex != tn.link(t, "bond0").Attrs().Index {
		t.Fatal("pt1 not enslaved to bond0")
	}
	if !activeIs("pt1") {
		t.Error("pt1 not the active slave")
	}
	if p, _ := n.attr("bond0", "bonding", "primary"); p != "pt1" {
		t.Errorf("primary %q, want pt1", p)
	}
}
