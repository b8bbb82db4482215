package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/hostd/spec"
)

func TestQEMUArgs(t *testing.T) {
	s := spec.Spec{Name: "v", Memory: 256, VCPUs: 2, Kernel: "/k", Append: "console=ttyS0 a,b",
		NICs: []spec.NIC{{ID: "pt0", Model: "vmxnet3", MAC: "52:54:00:00:00:01", Backend: "user", Passthrough: true},
			{ID: "n1", Model: "virtio-net-pci", Backend: "tap", Tap: "tap0"}},
		Devs:  []spec.Dev{{ID: "hca0", Driver: "vfio-pci", Props: map[string]string{"host": "0000:3b:00.1"}, Passthrough: true}},
		Guest: spec.Channel{Type: "virtio-serial"}}
	args := (Args{Spec: s, Dir: "/state/v", Accel: "tcg",
		Override: map[string]map[string]string{"pt0": {"mac": "52:54:00:bb:00:01"}}}).argv()
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-accel tcg", "-m 256M", "-smp 2",
		"pcie-root-port,id=rp-pt0,chassis=1,slot=1,bus=pcie.0",
		"vmxnet3,id=pt0,bus=rp-pt0,mac=52:54:00:bb:00:01,netdev=nd-pt0", // pool MAC wins
		"tap,id=nd-n1,ifname=tap0,script=no,downscript=no",
		"pcie-root-port,id=rp-hca0,chassis=2,slot=2",
		"vfio-pci,id=hca0,bus=rp-hca0,host=0000:3b:00.1",
		"virtserialport,bus=vser0.0,chardev=guestch,name=org.symvirt.0",
		"-append console=ttyS0 a,b", // a separate argv element: no escaping needed
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	if slices.Contains(args, "-incoming") {
		t.Error("not an incoming launch")
	}
	// A migration destination starts without the detached devices but with
	// their root ports, so they can be plugged after the state is loaded.
	args = Args{Spec: s, Dir: "/state/v", Accel: "tcg", Incoming: true,
		Absent: map[string]bool{"pt0": true, "hca0": true}}.argv()
	joined = strings.Join(args, " ")
	if strings.Contains(joined, "vmxnet3,") || strings.Contains(joined, "vfio-pci,") {
		t.Errorf("absent devices on the command line: %s", joined)
	}
	if !strings.Contains(joined, "rp-pt0") || !strings.Contains(joined, "-incoming defer") {
		t.Errorf("incoming launch: %s", joined)
	}
	// Commas in values cannot inject options.
	s.NICs[1].Tap = "tap0,script=/evil"
	args = Args{Spec: s, Dir: "/d", Accel: "tcg"}.argv()
	if !strings.Contains(strings.Join(args, " "), "ifname=tap0,,script=/evil") {
		t.Errorf("comma not escaped: %v", args)
	}
}

func TestConfineArgs(t *testing.T) {
	for _, runWith := range []bool{false, true} {
		a := strings.Join(confineArgs("", runWith), " ")
		if a != "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" {
			t.Errorf("sandbox: %s", a)
		}
	}
	a := strings.Join(confineArgs("nobody", false), " ")
	if !strings.Contains(a, "spawn=deny") || strings.Contains(a, "elevateprivileges") || !strings.HasSuffix(a, "-runas nobody") {
		t.Errorf("sandbox with a user: %s", a)
	}
	// QEMU 10 has no -runas.
	if a = strings.Join(confineArgs("nobody", true), " "); !strings.HasSuffix(a, "-run-with user=nobody") || strings.Contains(a, "-runas") {
		t.Errorf("sandbox with a user, -run-with: %s", a)
	}
}

// TestNamedRAM: a clone's QEMU whose RAM is no file still names its RAM
// block ram0, the template's state's name for it; others keep QEMU's own.
func TestNamedRAM(t *testing.T) {
	s := spec.Spec{Name: "c", Memory: 256, VCPUs: 1}
	named := strings.Join(Args{Spec: s, Dir: "/state/c", Accel: "tcg", NamedRAM: true}.argv(), " ")
	if !strings.Contains(named, "-object memory-backend-ram,id=ram0,size=256M -machine memory-backend=ram0") {
		t.Errorf("NamedRAM: %s", named)
	}
	if plain := strings.Join(Args{Spec: s, Dir: "/state/c", Accel: "tcg"}.argv(), " "); strings.Contains(plain, "ram0") {
		t.Errorf("not NamedRAM: %s", plain)
	}
}
