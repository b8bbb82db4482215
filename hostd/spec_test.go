package hostd

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

func TestParseSpecNamesTheBadField(t *testing.T) {
	cases := []struct {
		yaml, field string
	}{
		{"memory: 1G\nkernel: /k\n", "field name"},
		{"name: a b\nmemory: 1G\nkernel: /k\n", "field name"},
		{"name: v\nkernel: /k\n", "field memory"},
		{"name: v\nmemory: lots\nkernel: /k\n", "memory"},
		{"name: v\nmemory: 1G\n", "field kernel"},
		{"name: v\nmemory: 1G\nkernel: /k\nvcpus: -2\n", "field vcpus"},
		{"name: v\nmemory: 1G\nkernel: /k\nnics: [{model: vmxnet3}]\n", "field nics[0].id"},
		{"name: v\nmemory: 1G\nkernel: /k\nnics: [{id: n0, mac: zz}]\n", "field nics[0].mac"},
		{"name: v\nmemory: 1G\nkernel: /k\nnics: [{id: n0, backend: vde}]\n", "field nics[0].backend"},
		{"name: v\nmemory: 1G\nkernel: /k\nnics: [{id: n0, backend: tap}]\n", "field nics[0].tap"},
		{"name: v\nmemory: 1G\nkernel: /k\nnics: [{id: n0, pool: p}]\n", "field nics[0].pool"},
		{"name: v\nmemory: 1G\nkernel: /k\nnics: [{id: n0}, {id: n0}]\n", "field nics[1].id"},
		{"name: v\nmemory: 1G\nkernel: /k\ndevices: [{id: d0}]\n", "field devices[0].driver"},
		{"name: v\nmemory: 1G\nkernel: /k\ndevices: [{id: d0, driver: x, props: {bus: y}}]\n", "field devices[0].props"},
		{"name: v\nmemory: 1G\nkernel: /k\nguest_channel: {type: carrier-pigeon}\n", "field guest_channel.type"},
		{"name: v\nmemory: 1G\nkernel: /k\nguest_channel: {type: vsock}\n", "field guest_channel.cid"},
		{"name: v\nmemory: 1G\nkernel: /k\ndisks: [{id: d0}]\n", "field disks[0].path"},
		{"name: v\nmemory: 1G\nkernel: /k\nmemroy: 2G\n", "memroy"}, // unknown field
	}
	for _, c := range cases {
		_, err := ParseSpec([]byte(c.yaml))
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%q: got %v, want ErrInvalidSpec naming %q", c.yaml, err, c.field)
		}
	}
}

func TestParseSpecDefaults(t *testing.T) {
	s, err := ParseSpec([]byte(`
name: vm-1
memory: 2G
kernel: /boot/vmlinuz
nics:
  - {id: pt0, model: vmxnet3, passthrough: true, pool: nic}
  - {id: net1}
devices:
  - {id: hca0, driver: vfio-pci, passthrough: true, props: {host: "0000:3b:00.1"}}
guest_channel: {type: virtio-serial}
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Memory != 2048 || s.VCPUs != 1 || s.NICs[1].Model != "virtio-net-pci" || s.NICs[1].Backend != "user" {
		t.Fatalf("defaults: %+v", s)
	}
	if got := s.passthrough(); !slices.Equal(got, []string{"pt0", "hca0"}) {
		t.Fatalf("passthrough: %v", got)
	}
}

func TestQEMUArgs(t *testing.T) {
	s := Spec{Name: "v", Memory: 256, VCPUs: 2, Kernel: "/k", Append: "console=ttyS0 a,b",
		NICs: []NIC{{ID: "pt0", Model: "vmxnet3", MAC: "52:54:00:00:00:01", Backend: "user", Passthrough: true},
			{ID: "n1", Model: "virtio-net-pci", Backend: "tap", Tap: "tap0"}},
		Devs:  []Dev{{ID: "hca0", Driver: "vfio-pci", Props: map[string]string{"host": "0000:3b:00.1"}, Passthrough: true}},
		Guest: Channel{Type: "virtio-serial"}}
	args, err := qemuArgs(launch{spec: s, dir: "/state/v", accel: "tcg",
		override: map[string]map[string]string{"pt0": {"mac": "52:54:00:bb:00:01"}}})
	if err != nil {
		t.Fatal(err)
	}
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
	args, _ = qemuArgs(launch{spec: s, dir: "/state/v", accel: "tcg", incoming: true,
		absent: map[string]bool{"pt0": true, "hca0": true}})
	joined = strings.Join(args, " ")
	if strings.Contains(joined, "vmxnet3,") || strings.Contains(joined, "vfio-pci,") {
		t.Errorf("absent devices on the command line: %s", joined)
	}
	if !strings.Contains(joined, "rp-pt0") || !strings.Contains(joined, "-incoming defer") {
		t.Errorf("incoming launch: %s", joined)
	}
	// Commas in values cannot inject options.
	s.NICs[1].Tap = "tap0,script=/evil"
	args, _ = qemuArgs(launch{spec: s, dir: "/d", accel: "tcg"})
	if !strings.Contains(strings.Join(args, " "), "ifname=tap0,,script=/evil") {
		t.Errorf("comma not escaped: %v", args)
	}
}

func TestErrorCodesRoundTrip(t *testing.T) {
	for _, c := range errorCodes {
		wrapped := fmt.Errorf("vm %q: %w", "x", c.Err)
		err := errorCodes.Decode(&jsonapi.Error{Code: codeOf(wrapped), Message: wrapped.Error()})
		if !errors.Is(err, c.Err) || err.Error() != wrapped.Error() {
			t.Errorf("%s does not round-trip: %v", c.Code, err)
		}
	}
}
