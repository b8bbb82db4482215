package coord_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testguest"
)

// tmplCloneHook prints, in each clone once guestd took its new identity,
// what must differ between clones.
const tmplCloneHook = `#!/bin/sh
[ "$1" = clone ] || exit 0
echo "symvirt-clone-state host=$(hostname) mid=$(cat /etc/machine-id) mac=$(cat /sys/class/net/eth0/address) boot=$(cat /proc/sys/kernel/random/boot_id) rnd=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')" >/dev/console
`

var tmplCloneStateRE = regexp.MustCompile(`symvirt-clone-state host=(\S+) mid=(\S+) mac=(\S+) boot=(\S+) rnd=([0-9a-f]+)`)

// TestTemplateFanoutBoot: a template made on host s only, through the
// coordinator (which records its id; a second one of the name is
// refused), while d's hostd makes its own template under the same name;
// then `symvirt boot --template --hosts a,b,c` (hosts that lack it): a,
// b, c fetch the recorded template through the fan-out tree (s → a, a →
// b and c; d, which the old scan put first, is no source) over mutual
// TLS, each checking every chunk against the recorded id, and each keeps
// its RAM once; every clone reaches guestd-ready with an identity of its
// own, and the seed sent about one copy of the template (it feeds one
// edge of the tree). A boot on d is refused naming both ids; once d's
// own template is removed, d fetches the recorded one with s killed
// mid-fetch.
func TestTemplateFanoutBoot(t *testing.T) {
	ic := newImageCluster(t)
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{"/etc/symvirt/hooks.d/50-clone-state": {Mode: 0o755, Data: []byte(tmplCloneHook)}})
	spec := filepath.Join(t.TempDir(), "tmpl.yaml")
	os.WriteFile(spec, []byte(fmt.Sprintf(`name: tf
memory: 256M
vcpus: 1
kernel: %s
initrd: %s
append: "console=ttyS0 quiet panic=-1 symvirt.agent=1"
nics: [{id: net0, model: virtio-net-pci}]
guest_channel: {type: virtio-serial}
`, kernel, initrd)), 0o600)
	t.Log(ic.cli("template", "create", "tf", "--from", spec, "--host", "s", "--coord", ic.coord.Socket()))
	recorded := ic.recordedTemplate("tf")
	if out, err := ic.coord.CLI(t, "template", "create", "tf", "--from", spec, "--host", "a", "--coord", ic.coord.Socket()); err == nil ||
		!strings.Contains(out, recorded) {
		t.Fatalf("a second template tf through the coordinator: %v\n%s", err, out)
	}
	foreign := ic.foreignTemplate(spec, "tf", "d")

	var res coord.BootResult
	out := ic.cli("boot", "--template", "tf", "--count", "6", "--hosts", "a,b,c", "--job", "tj", "-o", "json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Ready != 6 {
		t.Fatalf("boot: %v %+v", err, res)
	}
	t.Logf("6 clones of a template held by s alone ready on a, b, c in %s", res.Took.Round(time.Millisecond))
	ic.checkTemplateIdentities(res.VMs)
	ic.checkTemplateServedOnce("tf", recorded)
	ic.refusesForeign("tf", "d", recorded, foreign)
	ic.templateSeedKilled("tf")
}

// recordedTemplate is the id the coordinator recorded for the template.
func (ic *imageCluster) recordedTemplate(name string) string {
	var recs []coord.Template
	if err := json.Unmarshal([]byte(ic.cli("template", "list", "--coord", ic.coord.Socket(), "-o", "json")), &recs); err != nil ||
		len(recs) != 1 || recs[0].Name != name || recs[0].ID == "" {
		ic.t.Fatalf("recorded templates: %v %+v", err, recs)
	}
	return recs[0].ID
}

// foreignTemplate has host's hostd, on its own, make another template
// under the recorded one's name (128 MiB of RAM instead of 256): what a
// host holding a stale or planted template would claim at boot time.
func (ic *imageCluster) foreignTemplate(spec, name, host string) string {
	data, _ := os.ReadFile(spec)
	other := filepath.Join(ic.t.TempDir(), "foreign.yaml")
	os.WriteFile(other, bytes.Replace(data, []byte("memory: 256M"), []byte("memory: 128M"), 1), 0o600)
	var t hostd.Template
	out := ic.cli("template", "create", name, "--from", other, "--host", ic.hosts[host].Socket(), "-o", "json")
	if err := json.Unmarshal([]byte(out), &t); err != nil || t.ID == "" {
		ic.t.Fatalf("foreign template on %s: %v %s", host, err, out)
	}
	ic.t.Logf("host %s made its own template %q, id %s", host, name, t.ID)
	return t.ID
}

// refusesForeign: a boot that would start clones on the host holding the
// foreign template is refused, naming both ids; once that template is
// removed there, the host can fetch the recorded one.
func (ic *imageCluster) refusesForeign(name, host, recorded, foreign string) {
	out, err := ic.coord.CLI(ic.t, "boot", "--template", name, "--count", "1", "--hosts", host, "--job", "tforeign")
	if err == nil || !strings.Contains(out, recorded) || !strings.Contains(out, foreign) {
		ic.t.Fatalf("boot on %s, which holds another template %q: %v\n%s", host, name, err, out)
	}
	ic.t.Logf("boot on %s refused: %s", host, strings.TrimSpace(out))
	ic.cli("template", "rm", name, "--host", ic.hosts[host].Socket())
}

// templateSeedKilled: s, a, b and c now hold the template with its id,
// so d's tree has one of them as its root (its parent) and the others as
// replicas; the parent's hostd is killed -9 once it has served d a chunk:
// d re-parents to a replica and its clones start.
func (ic *imageCluster) templateSeedKilled(name string) {
	t := ic.t
	ramImg, _ := hostd.TemplateImages(name)
	holders := []string{"s", "a", "b", "c"}
	before := map[string]int64{}
	for _, h := range holders {
		before[h] = ic.imageInfo(h, ramImg).Served
	}
	killed := make(chan int64, 1)
	var parent string
	go func() {
		for deadline := time.Now().Add(4 * time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			for _, h := range holders {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				imgs, _ := ic.hosts[h].Client().Images(ctx)
				cancel()
				for _, i := range imgs {
					if i.Name == ramImg && i.Served > before[h] {
						ic.hosts[h].Kill()
						parent = h
						killed <- i.Served - before[h]
						return
					}
				}
			}
		}
		killed <- 0
	}()
	var res coord.BootResult
	out := ic.cli("boot", "--template", name, "--count", "2", "--hosts", "d", "--job", "tk", "-o", "json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Ready != 2 {
		t.Fatalf("boot on d: %v %+v", err, res)
	}
	served := <-killed
	d := ic.imageInfo("d", ramImg)
	t.Logf("d's parent %s killed after serving it %d bytes; d failed over %d times (sources %v), fetched %d bytes; 2 clones ready on d in %s",
		parent, served, d.Failovers, d.Sources, d.Fetched, res.Took.Round(time.Millisecond))
	if served <= 0 || d.Failovers == 0 || d.Fetched < d.Data {
		t.Fatalf("d did not re-parent mid-fetch: served %d before the kill; %+v", served, d)
	}
	ic.checkTemplateIdentities(res.VMs)
}

// checkTemplateIdentities: each clone printed its state, and no two share
// a hostname, machine-id, MAC, boot_id or the first bytes of urandom.
func (ic *imageCluster) checkTemplateIdentities(vms []coord.BootedVM) {
	t := ic.t
	seen := make([]map[string]string, 5)
	for i := range seen {
		seen[i] = map[string]string{}
	}
	for _, vm := range vms {
		log := ic.hosts[vm.Host].Layout().SerialLog(vm.Name)
		var m []string
		for deadline := time.Now().Add(time.Minute); m == nil; time.Sleep(100 * time.Millisecond) {
			data, _ := os.ReadFile(log)
			if m = tmplCloneStateRE.FindStringSubmatch(string(data)); m == nil && time.Now().After(deadline) {
				t.Fatalf("%s on %s: no clone state after 1m:\n%s", vm.Name, vm.Host, data)
			}
		}
		t.Logf("%s on %s: ready in %s; %v", vm.Name, vm.Host, vm.Ready.Round(time.Millisecond), m[1:4])
		for k, what := range []string{"hostname", "machine-id", "MAC", "boot_id", "/dev/urandom"} {
			if other, dup := seen[k][m[k+1]]; dup {
				t.Errorf("clones %s and %s have the same %s %s", other, vm.Name, what, m[k+1])
			}
			seen[k][m[k+1]] = vm.Name
		}
	}
}

// checkTemplateServedOnce: the seed s sent about one copy of the
// template's data (its RAM's and state's non-zero chunks) for its one
// child, and each host fetched each chunk once.
func (ic *imageCluster) checkTemplateServedOnce(name, recorded string) {
	t := ic.t
	ramImg, stateImg := hostd.TemplateImages(name)
	sum := func(host string) (data, served, fetched int64) {
		for _, img := range []string{ramImg, stateImg} {
			i := ic.imageInfo(host, img)
			data, served, fetched = data+i.Data, served+i.Served, fetched+i.Fetched
		}
		return
	}
	data, served, _ := sum("s")
	t.Logf("template %s: %d bytes of data (RAM and state, zero chunks left out); seed s served %d bytes to its 1 child: %.3fx one copy per edge",
		name, data, served, float64(served)/float64(data))
	if served < data || served > data*12/10 {
		t.Errorf("seed served %d bytes for one child, want %d..%d", served, data, data*12/10)
	}
	for _, h := range []string{"a", "b", "c"} {
		_, srv, got := sum(h)
		t.Logf("host %s: sources %v, fetched %d bytes, served %d", h, ic.imageInfo(h, ramImg).Sources, got, srv)
		if got < data || got > data*12/10 {
			t.Errorf("host %s fetched %d bytes, want %d..%d (each chunk once)", h, got, data, data*12/10)
		}
	}
	for _, h := range []string{"a", "b", "c"} {
		ts, err := ic.hosts[h].Client().Templates(context.Background())
		if err != nil || len(ts) != 1 || ts[0].ID != recorded {
			t.Fatalf("templates on %s: %v %+v, want the recorded id %s (made on s)", h, err, ts, recorded)
		}
		ram := ts[0].RAM.Path
		imgDir := filepath.Join(ic.hosts[h].StateDir, "images", ramImg)
		t.Logf("host %s keeps the template's RAM once: RAM file %d bytes allocated, its image's directory %d (no copy of the %d bytes of data)",
			h, allocated(ram), allocated(imgDir), ic.imageInfo(h, ramImg).Data)
		if allocated(imgDir) > ic.imageInfo(h, ramImg).Data/16 {
			t.Errorf("host %s keeps a second copy of the template's RAM under %s", h, imgDir)
		}
	}
}

// allocated is the bytes the file, or the files under the directory,
// take on their file system.
func allocated(path string) int64 {
	var n int64
	filepath.Walk(path, func(_ string, fi os.FileInfo, err error) error {
		if err == nil {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}
