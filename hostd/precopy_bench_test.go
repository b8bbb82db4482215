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

	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchPrecopyImage checks what live_mode auto rests on: whether a
// precopy image (a running VM copied while it runs, stopped for its last
// pages) holds exactly the guest RAM of its snapshot point, over 20 rounds
// of precopyImageRounds. It reports the rounds whose image differs.
func TestBenchPrecopyImage(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	h, vm := startDirtier(t)
	const rounds = 20
	bad, worst := 0, 0
	precopyImageRounds(t, h, vm, rounds, func(round, differ int) bool {
		if differ > 0 {
			bad++
		}
		worst = max(worst, differ)
		return true
	})
	// h runs live_mode auto: its choice is the default this QEMU gets.
	benchline.Print(map[string]any{"bench": "precopy_image_vs_ram", "accel": h.cfg.Accel, "rounds": rounds,
		"qemu": testguest.QemuVersion(t), "default_live_mode": h.cfg.LiveMode,
		"max_bandwidth_bytes": precopyImageBandwidth, "rounds_differing": bad, "pages_differing_max": worst})
}

// startDirtier starts a 256 MiB guest rewriting 16 MiB over and over
// (testguest.DirtierScript) on a host of live_mode auto.
func startDirtier(t *testing.T) (*Host, *VM) {
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/rc.d/45-dirtier": {Mode: 0o755, Data: []byte(testguest.DirtierScript)}})
	h, _ := benchHost(t, "5")
	vm, err := h.Create(Spec{Name: "pimg", Memory: 256, VCPUs: 1, Kernel: kernel, Initrd: initrd,
		Append: "console=ttyS0 quiet"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vm.kill)
	waitSerial(t, filepath.Join(vm.dir, fileSerial), regexp.MustCompile(`symvirt-dirtier-ready`))
	return h, vm
}

// precopyImageBandwidth is the copies' max-bandwidth: low enough that
// QEMU syncs its dirty bitmap in the middle of each copy (4 or 5 syncs a
// copy, against 2 unbounded), which is where QEMU 7.2 under TCG loses
// writes (README, live_mode).
const precopyImageBandwidth = 512 << 20

// precopyImageRounds copies vm by precopy into a file, round after round,
// until more returns false or rounds are done. While QEMU holds the VM
// stopped after a copy (postmigrate) its RAM file in /dev/shm is the exact
// state at the point, compared page by page with the image's last copy of
// each page; more gets the round and how many pages differed.
func precopyImageRounds(t *testing.T, h *Host, vm *VM, rounds int, more func(round, differ int) bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
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
	must(mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(precopyImageBandwidth), "downtime-limit": 5}))
	shm := h.ramPath(vm.Spec())
	image := filepath.Join(t.TempDir(), "image")
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
			t.Logf("round %d: %d of %d pages differ", round, differ, len(mem)/4096)
		}
		if !more(round, differ) {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// imagePages reads the RAM section of a migration stream of QEMU 7.2 or
// 10.0 (4 KiB pages, no compression, no multifd) and returns the digest of
// the last copy of each page of guest RAM (block ram0), by offset.
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
	s := &ramStream{r: bufio.NewReader(bytes.NewReader(data[i+4+8:])), pages: map[int64][32]byte{}}
	section := binary.BigEndian.Uint32(data[i-4 : i])
	for s.err == nil {
		if err := s.part(); err != nil {
			return nil, err
		}
		if !s.nextPart(section) {
			break // the devices' state follows the last ram part
		}
	}
	return s.pages, s.err
}

// ramStream reads the parts of a stream's RAM section.
type ramStream struct {
	r     *bufio.Reader
	err   error // the first read error
	block string
	pages map[int64][32]byte
}

// Page header flags (migration/ram.c) and stream bytes (savevm.c).
const (
	ramFlagZero, ramFlagMemSize, ramFlagPage, ramFlagEOS, ramFlagContinue = 0x02, 0x04, 0x08, 0x10, 0x20
	vmSectionPart, vmSectionEnd, vmCommand, vmSectionFooter               = 0x02, 0x03, 0x08, 0x7e
)

func (s *ramStream) be(n int) uint64 {
	b := make([]byte, 8)
	if _, err := io.ReadFull(s.r, b[8-n:]); err != nil && s.err == nil {
		s.err = err
	}
	return binary.BigEndian.Uint64(b)
}

func (s *ramStream) name() string {
	n, _ := s.r.ReadByte()
	b := make([]byte, n)
	io.ReadFull(s.r, b)
	return string(b)
}

// part reads pages up to the end of one part (RAM_SAVE_FLAG_EOS).
func (s *ramStream) part() error {
	page := make([]byte, 4096)
	for s.err == nil {
		h := s.be(8)
		flags, off := h&0xfff, int64(h&^0xfff)
		if flags&ramFlagMemSize != 0 {
			for left := off; left > 0 && s.err == nil; {
				s.name()
				left -= int64(s.be(8))
			}
			continue
		}
		if flags&ramFlagEOS != 0 {
			return nil
		}
		if flags&ramFlagContinue == 0 {
			s.block = s.name()
		}
		switch {
		case flags&ramFlagZero != 0:
			c, _ := s.r.ReadByte()
			for j := range page {
				page[j] = c
			}
		case flags&ramFlagPage != 0:
			if _, err := io.ReadFull(s.r, page); err != nil {
				return err
			}
		default:
			return fmt.Errorf("page flags %#x not read here", flags)
		}
		if s.block == "ram0" {
			s.pages[off] = sha256.Sum256(page)
		}
	}
	return nil
}

// nextPart skips the section footer and any command between two sections
// (QEMU 10 sends MIG_CMD_SWITCHOVER_START, no payload, before the last
// part) and reports whether a part of section follows.
func (s *ramStream) nextPart(section uint32) bool {
	b, err := s.r.ReadByte()
	for err == nil && (b == vmSectionFooter || b == vmCommand) {
		if b == vmSectionFooter {
			s.be(4)
		} else {
			s.be(2)                   // command
			s.r.Discard(int(s.be(2))) // its payload
		}
		b, err = s.r.ReadByte()
	}
	return err == nil && (b == vmSectionPart || b == vmSectionEnd) && uint32(s.be(4)) == section
}
