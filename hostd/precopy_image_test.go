package hostd

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// imagePages (precopy_image_vs_ram) reads a RAM section whose last part
// comes after a command, as QEMU 10 writes it (MIG_CMD_SWITCHOVER_START
// before the part sent with the VM stopped): the page of the last part is
// the one kept.
func TestImagePagesQEMU10Stream(t *testing.T) {
	var b bytes.Buffer
	be := func(v any) { binary.Write(&b, binary.BigEndian, v) }
	name := func(s string) { b.WriteByte(byte(len(s))); b.WriteString(s) }
	page := func(fill byte, cont bool) {
		flags := uint64(ramFlagPage)
		if cont {
			flags |= ramFlagContinue
		}
		be(uint64(0x1000) | flags)
		if !cont {
			name("ram0")
		}
		b.Write(bytes.Repeat([]byte{fill}, 4096))
	}
	b.WriteString("QEVM\x00\x00\x00\x03")
	b.WriteByte(0x01) // QEMU_VM_SECTION_START
	be(uint32(1))
	name("ram")
	be(uint32(0))
	be(uint32(4))
	be(uint64(8192) | ramFlagMemSize)
	name("ram0")
	be(uint64(8192))
	page('a', false)
	be(uint64(ramFlagEOS))
	b.WriteByte(vmSectionFooter)
	be(uint32(1))
	b.WriteByte(vmCommand)
	be(uint16(11)) // MIG_CMD_SWITCHOVER_START
	be(uint16(0))
	b.WriteByte(vmSectionEnd)
	be(uint32(1))
	page('b', false)
	be(uint64(ramFlagEOS))
	b.WriteByte(vmSectionFooter)
	be(uint32(1))
	b.WriteByte(0x04) // QEMU_VM_SECTION_FULL: devices
	path := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	pages, err := imagePages(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pages[0x1000], sha256.Sum256(bytes.Repeat([]byte{'b'}, 4096)); got != want {
		t.Fatalf("page 0x1000 is not the last part's copy (pages: %d)", len(pages))
	}
}
