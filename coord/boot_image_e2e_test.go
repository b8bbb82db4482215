package coord_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// The fan-out test image: 1 GiB raw, of which the first imgData bytes
// hold data (every 64 KiB block starts "symvirt-image-block N"), the
// rest a hole. The guests read imgReads chunks, each at the start of
// chunk k*16 (spread over the data), then report.
const (
	imgSize  = 1 << 30
	imgData  = 256 << 20
	imgChunk = 256 << 10
	imgReads = 64
)

var imgHostIP = map[string]string{"s": "10.77.20.10", "a": "10.77.20.11", "b": "10.77.20.12", "c": "10.77.20.13", "d": "10.77.20.14"}

// imageReadRC reads the known chunks (read-ahead off, so each read stays
// in its chunk) and checks each block's header.
var imageReadRC = fmt.Sprintf(`#!/bin/sh
echo 0 > /sys/block/vda/queue/read_ahead_kb
bad=0; k=0
while [ $k -lt %d ]; do
  b=$((k * 16 * 4))
  got=$(dd if=/dev/vda bs=512 skip=$((b * 128)) count=1 2>/dev/null | head -n1 | tr -d '\0')
  [ "$got" = "$(printf 'symvirt-image-block %%08d' $b)" ] || { bad=$((bad + 1)); echo "image block $b: got '$got'"; }
  k=$((k + 1))
done
echo "symvirt-image-read bad=$bad"
`, imgReads)

var imageReadDone = regexp.MustCompile(`symvirt-image-read bad=(\d+)`)

func writeTestImage(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 64<<10)
	for i := range block {
		block[i] = byte(i*7 + 1)
	}
	for b := 0; b < imgData/len(block); b++ {
		copy(block, fmt.Sprintf("symvirt-image-block %08d\n", b))
		if _, err := f.Write(block); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(imgSize); err != nil {
		t.Fatal(err)
	}
}

// imageCluster is a seed host s and four VM hosts a..d, each a network
// namespace with a TLS hostd, and a coordinator in a management one.
type imageCluster struct {
	t     *testing.T
	coord *testenv.Coord
	hosts map[string]*testenv.Hostd
	spec  string
	image string
}

func newImageCluster(t *testing.T) *imageCluster {
	testenv.RequireRoot(t)
	kernel, _ := testguest.Paths(t)
	ic := &imageCluster{t: t, hosts: map[string]*testenv.Hostd{}}
	certs := t.TempDir()
	bin := testenv.Binary(t)
	run := func(args ...string) {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("symvirt %v: %v\n%s", args, err, out)
		}
	}
	run("certs", "init", "--dir", certs)
	run("certs", "issue", "--dir", certs, "--role", "coord", "--name", "coord", "--host", "10.77.20.1")
	run("certs", "issue", "--dir", certs, "--role", "client", "--name", "admin")
	mgmt := testenv.NewNetNS(t, "m")
	testenv.Bridge(t, mgmt, "mgmt")
	testenv.Run(t, "ip", "-n", mgmt.Name, "addr", "add", "10.77.20.1/24", "dev", "mgmt")
	for _, name := range []string{"s", "a", "b", "c", "d"} {
		ns := testenv.NewNetNS(t, name)
		testenv.Attach(t, ns, imgHostIP[name]+"/24", mgmt, "mgmt")
		run("certs", "issue", "--dir", certs, "--role", "hostd", "--name", name, "--host", imgHostIP[name])
		ic.hosts[name] = testenv.StartHostd(t, name, ns, imgHostIP[name]+":7070", "",
			"--tls-cert", filepath.Join(certs, "hostd-"+name+".crt"),
			"--tls-key", filepath.Join(certs, "hostd-"+name+".key"),
			"--tls-ca", filepath.Join(certs, "ca.crt"))
	}
	ic.coord = testenv.StartCoordIn(t, mgmt, t.TempDir(), t.TempDir(), nil,
		"--tls-cert", filepath.Join(certs, "coord-coord.crt"), "--tls-key", filepath.Join(certs, "coord-coord.key"),
		"--tls-ca", filepath.Join(certs, "ca.crt"))
	for _, name := range []string{"s", "a", "b", "c", "d"} {
		ic.cli("hosts", "add", name, imgHostIP[name]+":7070")
	}
	initrd := testguest.Initrd(t, map[string]testguest.File{"/etc/symvirt/rc.d/30-image": {Mode: 0o755, Data: []byte(imageReadRC)}})
	ic.spec = filepath.Join(t.TempDir(), "vm.yaml")
	os.WriteFile(ic.spec, []byte(fmt.Sprintf("name: x\nmemory: 128M\nvcpus: 1\nkernel: %s\ninitrd: %s\nappend: \"console=ttyS0 quiet panic=-1\"\n",
		kernel, initrd)), 0o600)
	ic.image = filepath.Join(t.TempDir(), "base.raw")
	writeTestImage(t, ic.image)
	return ic
}

func (ic *imageCluster) cli(args ...string) string {
	ic.t.Helper()
	out, err := ic.coord.CLI(ic.t, args...)
	if err != nil {
		ic.t.Fatalf("symvirt %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// boot runs `symvirt boot --image` of 8 VMs on a..d and waits until every
// guest has read its blocks; it returns the time from the request to the
// last one ready.
func (ic *imageCluster) boot(image, job string, extra ...string) time.Duration {
	ic.t.Helper()
	start := time.Now()
	args := append([]string{"boot", "--image", image, "--from", ic.spec, "--count", "8", "--hosts", "a,b,c,d",
		"--job", job, "-o", "json"}, extra...)
	var res coord.BootResult
	if err := json.Unmarshal([]byte(ic.cli(args...)), &res); err != nil || res.Ready != 8 {
		ic.t.Fatalf("boot %s: %v %+v", job, err, res)
	}
	for _, vm := range res.VMs {
		ic.waitRead(vm.Host, vm.Name)
	}
	took := time.Since(start)
	ic.t.Logf("job %s: 8 VMs of image %s started in %s, all read their blocks in %s", job, image, res.Took, took)
	return took
}

func (ic *imageCluster) waitRead(host, vm string) {
	ic.t.Helper()
	log := ic.hosts[host].Layout().SerialLog(vm)
	deadline := time.Now().Add(4 * time.Minute)
	for {
		data, _ := os.ReadFile(log)
		if m := imageReadDone.FindSubmatch(data); m != nil {
			if string(m[1]) != "0" {
				ic.t.Fatalf("%s on %s read wrong blocks:\n%s", vm, host, data)
			}
			return
		}
		if time.Now().After(deadline) {
			ic.t.Fatalf("%s on %s: no image read after 4m:\n%s", vm, host, data)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopJob stops and removes a job's VMs on their hosts.
func (ic *imageCluster) stopJob(job string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, h := range ic.hosts {
		vms, _ := h.Client().List(ctx)
		for _, vm := range vms {
			if strings.HasPrefix(vm.Name, job+"-") {
				h.Client().Stop(ctx, vm.Name, time.Second)
				h.Client().Delete(ctx, vm.Name)
			}
		}
	}
}

func (ic *imageCluster) imageInfo(host, image string) hostd.ImageInfo {
	ic.t.Helper()
	imgs, err := ic.hosts[host].Client().Images(context.Background())
	if err != nil {
		ic.t.Fatalf("images on %s: %v", host, err)
	}
	for _, i := range imgs {
		if i.Name == image {
			return i
		}
	}
	ic.t.Fatalf("host %s has no image %s: %+v", host, image, imgs)
	return hostd.ImageInfo{}
}

// metric reads one sample of hostd's Prometheus metrics on its socket.
func (ic *imageCluster) metric(host, name, image string) string {
	ic.t.Helper()
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", ic.hosts[host].Socket())
	}}}
	resp, err := cl.Get("http://hostd/metrics")
	if err != nil {
		ic.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(name + `\{image="` + image + `"\} (\S+)`).FindSubmatch(body)
	if m == nil {
		ic.t.Fatalf("%s: no %s for %s", host, name, image)
	}
	return string(m[1])
}
