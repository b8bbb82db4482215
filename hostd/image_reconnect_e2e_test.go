package hostd_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// The reconnect test image: reconnectBlocks blocks of 64 KiB (one cache
// chunk each), every one different.
const reconnectBlocks = 1024

func reconnectImage() []byte {
	var img bytes.Buffer
	for i := range reconnectBlocks {
		line := fmt.Sprintf("symvirt nbd reconnect block %08d\n", i)
		img.Write(bytes.Repeat([]byte(line), (64<<10)/len(line)+1)[:64<<10])
	}
	return img.Bytes()
}

// reconnectReadRC reads the first 4 KiB of each block in turn, once
// (read-ahead off, so a read stays in its block and no block is read
// early), printing each one's sha256 or "error".
var reconnectReadRC = fmt.Sprintf(`#!/bin/sh
echo 0 > /sys/block/vda/queue/read_ahead_kb
( i=0
  while [ $i -lt %d ]; do
    if dd if=/dev/vda of=/tmp/b bs=4096 skip=$((i * 16)) count=1 2>/dev/null; then
      echo "symvirt-nbd-read $i $(sha256sum < /tmp/b | cut -d' ' -f1)"
    else
      echo "symvirt-nbd-read $i error"
    fi
    i=$((i + 1))
    usleep 200000
  done ) &
`, reconnectBlocks)

var reconnectReadRE = regexp.MustCompile(`symvirt-nbd-read (\d+) (\S+)`)

// guestReads is every block the guest read so far and what it got.
func guestReads(path string) map[int]string {
	data, _ := os.ReadFile(path)
	out := map[int]string{}
	for _, m := range reconnectReadRE.FindAllSubmatch(data, -1) {
		i, _ := strconv.Atoi(string(m[1]))
		out[i] = string(m[2])
	}
	return out
}

// waitReads waits until the guest has read block n.
func waitReads(t *testing.T, path string, n int) map[int]string {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		r := guestReads(path)
		if _, ok := r[n]; ok {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not read block %d within 4 minutes (%d blocks read)", n, len(r))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestImageVMReadsAcrossHostdRestart: a VM booted from an image keeps
// reading it across a SIGKILL and restart of its hostd. The guest reads
// a new block every 0.2 s; the restarted hostd serves the image's cache
// on the same socket before it adopts the VM, and QEMU's NBD client
// reconnects (reads in between wait), so every block the guest read,
// before, during and after the restart (blocks it never read before,
// fetched from the seed by the restarted cache), has its content.
func TestImageVMReadsAcrossHostdRestart(t *testing.T) {
	testenv.RequireRoot(t)
	img := reconnectImage()
	file := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(file, img, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 8*time.Minute)
	seed := testenv.StartHostd(t, "seed", nil, "", "")
	host := testenv.StartHostd(t, "host", nil, "", "")
	reg, err := seed.Client().RegisterImage(ctx, hostd.RegisterImageRequest{Name: "img", Path: file, Chunk: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.Client().AttachImage(ctx, "img", hostd.AttachImageRequest{ID: reg.ID, Sources: []string{seed.Socket()}}); err != nil {
		t.Fatal(err)
	}
	kernel, _ := testguest.Paths(t)
	spec := hostd.Spec{
		Name: "iv1", Memory: 256, VCPUs: 1, Kernel: kernel,
		Initrd: testguest.Initrd(t, map[string]testguest.File{
			"/etc/symvirt/rc.d/60-image-reads": {Mode: 0o755, Data: []byte(reconnectReadRC)}}),
		Append: "console=ttyS0 quiet panic=-1 symvirt.name=iv1",
	}
	res, err := host.Client().BootImageVM(ctx, "img", hostd.ImageVMRequest{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	log := serialLog(host, "iv1")
	waitReads(t, log, 4)
	restartHostd(host)
	restarted := len(guestReads(log))
	reads := waitReads(t, log, restarted+10)
	for i := 0; i <= restarted+10; i++ {
		want := sha256.Sum256(img[i<<16 : i<<16+4096])
		if got := reads[i]; got != hex.EncodeToString(want[:]) {
			t.Errorf("block %d (hostd restarted by block %d): guest read %q", i, restarted, got)
		}
	}
	info, err := host.Client().Status(ctx, "iv1")
	if err != nil || info.State != "running" || info.PID != res.PID {
		t.Fatalf("VM after hostd restart: %+v %v; want running, pid %d", info, err, res.PID)
	}
	if i := imageOn(t, host, "img"); i.Held <= restarted {
		t.Errorf("the restarted cache holds %d chunks; the guest read %d blocks", i.Held, restarted+10)
	}
	t.Logf("guest read blocks 0..%d, hostd restarted while it was at block %d; cache: %+v", restarted+10, restarted, imageOn(t, host, "img"))
	if _, err := host.Client().Stop(ctx, "iv1", 0); err != nil {
		t.Fatal(err)
	}
}
