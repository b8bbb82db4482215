package hostd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchPrecopyImage checks what live_mode auto rests on: whether a
// precopy image (a running VM copied while it runs, stopped for its last
// pages) holds exactly the guest RAM of its snapshot point. A guest
// rewrites 16 MiB over and over; each round copies it into a file, and
// while QEMU holds it stopped after the copy (postmigrate) its RAM file in
// /dev/shm is the exact state, compared page by page with the image's last
// copy of each page. It reports the rounds whose image differs.
func TestBenchPrecopyImage(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/rc.d/45-dirtier": {Mode: 0o755, Data: []byte(testguest.DirtierScript)}})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	h, _ := benchHost(t, "5")
	vm, err := h.Create(Spec{Name: "pimg", Memory: 256, VCPUs: 1, Kernel: kernel, Initrd: initrd,
		Append: "console=ttyS0 quiet"})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer vm.kill()
	waitSerial(t, filepath.Join(vm.dir, fileSerial), regexp.MustCompile(`symvirt-dirtier-ready`))
	mon, err := vm.monitor()
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(64 << 30), "downtime-limit": 5}))
	shm := h.ramPath(vm.Spec())
	image := filepath.Join(t.TempDir(), "image")
	const rounds = 20
	bad, worst := 0, 0
	for round := range rounds {
		f, err := os.Create(image)
		must(err)
		must(mon.GetFD(ctx, "pimg", f))
		f.Close()
		must(mon.Migrate(ctx, "fd:pimg"))
		_, err = mon.WaitMigration(ctx, 5*time.Millisecond, nil)
		must(err)
		for {
			st, err := mon.Status(ctx)
			must(err)
			if st.Status == "postmigrate" {
				break
			}
			time.Sleep(time.Millisecond)
		}
		mem, err := os.ReadFile(shm)
		must(err)
		must(mon.Cont(ctx))
		pages, err := imagePages(image)
		must(err)
		differ := 0
		for off := 0; off+4096 <= len(mem); off += 4096 {
			if pages[int64(off)] != sha256.Sum256(mem[off:off+4096]) {
				differ++
			}
		}
		if differ > 0 {
			bad++
			t.Logf("round %d: %d of %d pages differ", round, differ, len(mem)/4096)
		}
		worst = max(worst, differ)
		time.Sleep(300 * time.Millisecond)
	}
	emit(map[string]any{"bench": "precopy_image_vs_ram", "accel": h.cfg.Accel, "rounds": rounds,
		"rounds_differing": bad, "pages_differing_max": worst})
}

// imagePages reads the RAM section of a QEMU 7.2 migration stream (4 KiB
// pages, no compression) and returns the digest of the last copy of each
// page of guest RAM (block ram0), by offset.
func imagePages(path string) (map[int64][32]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// QEMU_VM_SECTION_START, section id, "ram", instance and version id.
	i := bytes.Index(data, []byte("\x03ram"))
	if i < 5 || data[i-5] != 0x01 {
		return nil, errors.New("no ram section")
	}
	section := binary.BigEndian.Uint32(data[i-4 : i])
	r := bufio.NewReader(bytes.NewReader(data[i+4+8:]))
	var rerr error
	be := func(n int) uint64 {
		b := make([]byte, 8)
		if _, err := io.ReadFull(r, b[8-n:]); err != nil && rerr == nil {
			rerr = err
		}
		return binary.BigEndian.Uint64(b)
	}
	name := func() string {
		n, _ := r.ReadByte()
		b := make([]byte, n)
		io.ReadFull(r, b)
		return string(b)
	}
	const (
		flagZero, flagMemSize, flagPage, flagEOS, flagContinue = 0x02, 0x04, 0x08, 0x10, 0x20
		sectionPart, sectionEnd, sectionFooter                 = 0x02, 0x03, 0x7e
	)
	pages := map[int64][32]byte{}
	page := make([]byte, 4096)
	block := ""
	for rerr == nil {
		for rerr == nil {
			h := be(8)
			flags, off := h&0xfff, int64(h&^0xfff)
			if flags&flagMemSize != 0 {
				for left := off; left > 0 && rerr == nil; {
					name()
					left -= int64(be(8))
				}
				continue
			}
			if flags&flagEOS != 0 {
				break
			}
			if flags&flagContinue == 0 {
				block = name()
			}
			switch {
			case flags&flagZero != 0:
				c, _ := r.ReadByte()
				for j := range page {
					page[j] = c
				}
			case flags&flagPage != 0:
				if _, err := io.ReadFull(r, page); err != nil {
					return nil, err
				}
			default:
				return nil, fmt.Errorf("page flags %#x not read here", flags)
			}
			if block == "ram0" {
				pages[off] = sha256.Sum256(page)
			}
		}
		b, err := r.ReadByte()
		if err == nil && b == sectionFooter {
			be(4)
			b, err = r.ReadByte()
		}
		if err != nil || (b != sectionPart && b != sectionEnd) || uint32(be(4)) != section {
			break // the devices' state follows the last ram part
		}
	}
	return pages, rerr
}
