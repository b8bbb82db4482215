package bootsim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/bootsim"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestCalibrateBoot measures on this machine the per-phase times the boot
// simulator runs on and writes them to $SYMVIRT_BOOTSIM_CALIBRATION
// (make sim-boot-calibrate, under the e2e lock): qcow2 overlay creation,
// NBD block reads and throughput from qemu-nbd across a veth pair between
// two network namespaces, reading a local copy, and a template clone's
// QEMU start and resume as hostd reports them.
func TestCalibrateBoot(t *testing.T) {
	out := os.Getenv("SYMVIRT_BOOTSIM_CALIBRATION")
	if out == "" {
		t.Skip("calibration: SYMVIRT_BOOTSIM_CALIBRATION=FILE (make sim-boot-calibrate)")
	}
	testenv.RequireRoot(t)
	host, _ := os.Hostname()
	cal := bootsim.Calibration{Host: host, When: time.Now().UTC().Format(time.RFC3339)}
	dir := t.TempDir()
	cal.Figures = append(cal.Figures, overlayFigure(t, dir))
	cal.Figures = append(cal.Figures, nbdFigures(t, dir)...)
	cal.Figures = append(cal.Figures, cloneFigures(t)...)
	for _, f := range cal.Figures {
		t.Logf("%-13s %12.6g %-4s %s", f.Name, f.Value, f.Unit, f.Source)
	}
	data, err := json.MarshalIndent(cal, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

func median(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

const overlayRuns = 15

// overlayFigure times `qemu-img create -b` of an overlay on a 1 GiB base,
// the step each VM's disk takes on its host's cache.
func overlayFigure(t *testing.T, dir string) bootsim.Figure {
	base := filepath.Join(dir, "base.qcow2")
	testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1G")
	var took []float64
	for i := range overlayRuns {
		start := time.Now()
		testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", filepath.Join(dir, fmt.Sprintf("ov%d.qcow2", i)))
		took = append(took, time.Since(start).Seconds())
	}
	return bootsim.Figure{Name: bootsim.FigOverlay, Value: median(took), Unit: "s",
		Source: fmt.Sprintf("measured: median of %d `qemu-img create -f qcow2 -b` on a 1 GiB qcow2 base (process start included)", overlayRuns)}
}

const (
	nbdImage  = 256 << 20
	nbdBlock  = 64 << 10
	nbdReads  = 64
	nbdStream = 128 << 20
)

// nbdFigures serves a file of random bytes with qemu-nbd in one namespace
// and reads it with qemu-io from another across a veth pair: single
// 64 KiB reads at scattered offsets (latency), one 128 MiB read
// (throughput); then the same 128 MiB from the local file.
func nbdFigures(t *testing.T, dir string) []bootsim.Figure {
	img := filepath.Join(dir, "image.raw")
	buf := make([]byte, nbdImage)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= len(buf); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			buf[i+j] = byte(v >> (8 * j))
		}
	}
	if err := os.WriteFile(img, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	a, b := testenv.NewNetNS(t, "bsa"), testenv.NewNetNS(t, "bsb")
	testenv.Link(t, a, b, "10.77.0.1/24", "10.77.0.2/24")
	ctx, cancel := context.WithCancel(context.Background())
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", a.Name, "qemu-nbd", "-r", "-t", "-f", "raw", "-x", "img",
		"-b", "10.77.0.1", "-p", "10809", img)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); srv.Wait() })
	url := "nbd://10.77.0.1:10809/img"
	args := []string{"netns", "exec", b.Name, "qemu-io", "-r", "-f", "raw", url}
	for i := range nbdReads {
		args = append(args, "-c", fmt.Sprintf("read %d %d", (int64(i)*(3<<20+4096))%(nbdImage-nbdBlock), nbdBlock))
	}
	var lat []float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		o, err := exec.Command("ip", args...).CombinedOutput()
		if err == nil {
			lat = opSeconds(t, string(o))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-io over NBD: %v\n%s", err, o)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stream := func(ns []string, target string) float64 {
		cmd := append(ns, "qemu-io", "-r", "-f", "raw", target, "-c", fmt.Sprintf("read 0 %d", nbdStream))
		return nbdStream / median(opSeconds(t, testenv.Run(t, cmd[0], cmd[1:]...)))
	}
	veth := "measured: qemu-nbd in one network namespace, qemu-io in another, across a veth pair"
	return []bootsim.Figure{
		{Name: bootsim.FigLatency, Value: median(lat), Unit: "s", Source: fmt.Sprintf("%s: median of %d reads of 64 KiB at scattered offsets", veth, nbdReads)},
		{Name: bootsim.FigBlock, Value: nbdBlock, Unit: "B", Source: "the block size the latency was measured with"},
		{Name: bootsim.FigStream, Value: stream([]string{"ip", "netns", "exec", b.Name}, url), Unit: "B/s", Source: veth + ": one 128 MiB read"},
		{Name: bootsim.FigLocal, Value: stream(nil, img), Unit: "B/s", Source: "measured: qemu-io reading 128 MiB of a local raw file (page cache)"},
	}
}

var opsPerSec = regexp.MustCompile(`and ([0-9.]+) ops/sec`)

// opSeconds parses each qemu-io operation's time (1 / its ops/sec).
func opSeconds(t *testing.T, out string) []float64 {
	var s []float64
	for _, m := range opsPerSec.FindAllStringSubmatch(out, -1) {
		if v, err := strconv.ParseFloat(m[1], 64); err == nil && v > 0 {
			s = append(s, 1/v)
		}
	}
	if len(s) == 0 {
		t.Fatalf("no qemu-io timings in:\n%s", out)
	}
	return s
}

const cloneRuns = 5

// cloneFigures makes a template of the test guest on a hostd and starts
// clones of it: QEMU start (process to QMP ready) and the rest of the
// clone (state loaded, guestd ready and told it is a clone).
func cloneFigures(t *testing.T) []bootsim.Figure {
	kernel, initrd := testguest.Paths(t)
	h := testenv.StartHostd(t, "cal", nil, "", "")
	c := h.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	file := filepath.Join(t.TempDir(), "cal.yaml")
	os.WriteFile(file, []byte(fmt.Sprintf(`name: cal
memory: 256M
vcpus: 1
kernel: %s
initrd: %s
append: "console=ttyS0 quiet panic=-1 symvirt.agent=1"
nics: [{id: net0, model: virtio-net-pci}]
guest_channel: {type: virtio-serial}
`, kernel, initrd)), 0o600)
	spec, err := hostd.LoadSpec(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateTemplate(ctx, "cal", spec); err != nil {
		t.Fatal(err)
	}
	var start, resume, ready []float64
	for i := range cloneRuns {
		res, err := c.Clone(ctx, hostd.CloneRequest{Template: "cal", Name: fmt.Sprintf("cal%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		start = append(start, res.Start.Seconds())
		resume = append(resume, (res.Ready - res.Start).Seconds())
		ready = append(ready, res.Ready.Seconds())
	}
	src := fmt.Sprintf("measured: median of %d clones of a 256 MiB test-guest template on one hostd", cloneRuns)
	return []bootsim.Figure{
		{Name: bootsim.FigStart, Value: median(start), Unit: "s", Source: src + ", hostd's start_ns (clone request to QEMU running with its QMP connected)"},
		{Name: bootsim.FigResume, Value: median(resume), Unit: "s", Source: src + ", ready_ns - start_ns (state loaded, guestd ready and re-identified)"},
		{Name: bootsim.FigHostReady, Value: median(ready), Unit: "s", Source: src + ", ready_ns (request to guestd ready)"},
	}
}
