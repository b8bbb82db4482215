package coord_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/benchline"
)

// TestImageFanoutBoot boots 8 VMs of a 1 GiB image on 4 hosts without
// copying it first, in one run: through the fan-out tree (seed s with
// one child, degree 2), against copying the whole image to each host
// first; then again with the seed's hostd killed (-9) mid-boot, the
// image's replica on host a taking its children.
func TestImageFanoutBoot(t *testing.T) {
	ic := newImageCluster(t)
	ic.fanoutVsCopy()
	chunk := strconv.Itoa(imgChunk)
	ic.cli("images", "add", "imgk", "--host", "s", "--path", ic.image, "--chunk", chunk)
	ic.cli("images", "add", "imgk", "--host", "a", "--path", ic.image, "--chunk", chunk)
	killed := make(chan int64, 1)
	go ic.killSeedOnFirstChunk("imgk", killed)
	ic.boot("imgk", "kill")
	served := <-killed
	if served <= 0 {
		t.Fatal("the seed was not killed mid-boot")
	}
	b := ic.imageInfo("b", "imgk")
	t.Logf("seed killed after serving %d bytes; b (its child) failed over %d times to %v, every VM ready", served, b.Failovers, b.Sources)
	if b.Failovers == 0 || !slices.Contains(b.Sources, imgHostIP["a"]+":7070") {
		t.Fatalf("b did not re-parent to the replica: %+v", b)
	}
}

// TestBenchImageFanout is the fan-out against copy-first line alone
// (SYMVIRT_BENCH=1): the ratio is copy-first time over fan-out time.
func TestBenchImageFanout(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with SYMVIRT_BENCH=1")
	}
	newImageCluster(t).fanoutVsCopy()
}

// fanoutVsCopy boots the 8 VMs through the tree, then (another image
// name, so no cache is warm) with the whole image copied first.
func (ic *imageCluster) fanoutVsCopy() {
	t := ic.t
	chunk := strconv.Itoa(imgChunk)
	ic.cli("images", "add", "img", "--host", "s", "--path", ic.image, "--chunk", chunk)
	fan := ic.boot("img", "fan")
	ic.checkSeedServedOnce("img")
	ic.stopJob("fan")
	ic.cli("images", "add", "imgcopy", "--host", "s", "--path", ic.image, "--chunk", chunk)
	cp := ic.boot("imgcopy", "copy", "--copy")
	ic.stopJob("copy")
	t.Logf("8 VMs on 4 hosts, time to all ready: fan-out %s, copy the image to each host first %s (%.2fx)",
		fan.Round(time.Millisecond), cp.Round(time.Millisecond), float64(cp)/float64(fan))
	if os.Getenv("SYMVIRT_BENCH") == "1" {
		benchline.Print(map[string]any{"bench": "image_fanout", "vms": 8, "hosts": 4, "image_gib": 1,
			"data_mib": imgData >> 20, "fanout_seconds": fan.Seconds(), "copy_first_seconds": cp.Seconds(),
			"copy_first_vs_fanout": float64(cp) / float64(fan)})
	}
}

// checkSeedServedOnce: the seed sent each chunk the guests read once
// (bytes served ≤ 1.2x the distinct chunks read), and each host fetched
// each once although two VMs read it there.
func (ic *imageCluster) checkSeedServedOnce(image string) {
	t := ic.t
	distinct := int64(imgReads * imgChunk)
	seed := ic.imageInfo("s", image)
	prom := ic.metric("s", "symvirt_hostd_image_served_bytes_total", image)
	t.Logf("seed served %d bytes (%d chunks; Prometheus %s) for %d distinct bytes the guests read: %.3fx",
		seed.Served, seed.ServedChunks, prom, distinct, float64(seed.Served)/float64(distinct))
	if seed.Served > distinct*12/10 || seed.Served < distinct {
		t.Errorf("seed served %d bytes, want %d..%d", seed.Served, distinct, distinct*12/10)
	}
	if want := strconv.FormatInt(seed.Served, 10); prom != want && prom != fmt.Sprintf("%g", float64(seed.Served)) {
		t.Errorf("Prometheus says the seed served %s, its counters %s", prom, want)
	}
	for _, h := range []string{"a", "b", "c", "d"} {
		i := ic.imageInfo(h, image)
		t.Logf("host %s: sources %v, fetched %d bytes, served %d, %d chunks held", h, i.Sources, i.Fetched, i.Served, i.Held)
		if i.Fetched > distinct*12/10 {
			t.Errorf("host %s fetched %d bytes for its 2 VMs, want ≤ %d (once per chunk)", h, i.Fetched, distinct*12/10)
		}
	}
}

// killSeedOnFirstChunk kills s's hostd as soon as it has served a chunk
// of image, and reports how much it had served.
func (ic *imageCluster) killSeedOnFirstChunk(image string, killed chan<- int64) {
	deadline := time.Now().Add(4 * time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		imgs, _ := ic.hosts["s"].Client().Images(ctx)
		cancel()
		for _, i := range imgs {
			if i.Name == image && i.Served > 0 {
				ic.hosts["s"].Kill()
				killed <- i.Served
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	killed <- 0
}
