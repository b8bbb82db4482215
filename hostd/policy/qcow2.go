package policy

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/symvirt/symvirt/hostd/spec"
)

// A qcow2 image names other files in its header: a backing file (opened
// by QEMU with the image, and its own backing in turn) and an external
// data file. Either would let an image in an allowed directory make QEMU
// read /dev/sda or /etc/shadow, so both are held to the policy too.

const (
	qcow2Magic        = 0x514649fb
	qcow2ExtEnd       = 0
	qcow2ExtBackingFm = 0xe2792aca
	qcow2ExtDataFile  = 0x44415441
	qcow2MaxChain     = 16
)

// qcow2Refs are the files a qcow2 header names.
type qcow2Refs struct {
	isQcow2  bool
	backing  string
	backFmt  string
	dataFile string
}

// readQcow2Refs reads the header of path; a file that is not qcow2 names
// nothing.
func readQcow2Refs(path string) (qcow2Refs, error) {
	var r qcow2Refs
	f, err := os.Open(path)
	if err != nil {
		return r, err
	}
	defer f.Close()
	hdr := make([]byte, 104)
	if n, err := io.ReadFull(f, hdr); err != nil && n < 72 {
		return r, nil // too short for qcow2: QEMU reads it as nothing else
	}
	be := binary.BigEndian
	if be.Uint32(hdr) != qcow2Magic {
		return r, nil
	}
	r.isQcow2 = true
	version := be.Uint32(hdr[4:])
	if off, size := be.Uint64(hdr[8:]), be.Uint32(hdr[16:]); off != 0 {
		if size > 1023 {
			return r, fmt.Errorf("backing file name of %d bytes", size)
		}
		if r.backing, err = readAt(f, int64(off), int(size)); err != nil {
			return r, err
		}
	}
	extAt := int64(72)
	if version >= 3 {
		extAt = int64(be.Uint32(hdr[100:]))
	}
	return r, readQcow2Exts(f, extAt, &r)
}

// readQcow2Exts walks the header extensions from off, bounded to 64 KiB.
func readQcow2Exts(f *os.File, off int64, r *qcow2Refs) error {
	be := binary.BigEndian
	for start := off; off < start+64<<10; {
		head, err := readAt(f, off, 8)
		if err != nil {
			return nil // no (more) extensions
		}
		typ, n := be.Uint32([]byte(head)), be.Uint32([]byte(head[4:]))
		if typ == qcow2ExtEnd || n > 4096 {
			return nil
		}
		data, err := readAt(f, off+8, int(n))
		if err != nil {
			return err
		}
		switch typ {
		case qcow2ExtBackingFm:
			r.backFmt = data
		case qcow2ExtDataFile:
			r.dataFile = data
		}
		off += 8 + int64(n+7)&^7
	}
	return nil
}

func readAt(f *os.File, off int64, n int) (string, error) {
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return "", err
	}
	return string(b), nil
}

// checkBacking follows the backing chain of a disk image: each file it
// names must be a regular file in the disk or image directories. relOK
// says whether a relative name may resolve next to the image (not for a
// checkpoint's disk, which is copied elsewhere before QEMU opens it).
func (p *Policy) checkBacking(field, img, format string, relOK bool) error {
	if format != "qcow2" {
		return nil
	}
	dirs := append(append([]string{}, p.DiskDirs...), p.ImageDirs...)
	for depth := 0; ; depth++ {
		if depth == qcow2MaxChain {
			return policyErr(field, "%s: backing chain longer than %d", img, qcow2MaxChain)
		}
		r, err := readQcow2Refs(img)
		if err != nil {
			return spec.FieldErr(field, "%s: qcow2 header: %v", img, err)
		}
		if r.dataFile != "" {
			return policyErr(field, "%s names an external data file %q; not allowed", img, r.dataFile)
		}
		if r.backing == "" {
			return nil
		}
		if r.backFmt != "" && r.backFmt != "qcow2" && r.backFmt != "raw" {
			return policyErr(field, "%s: backing format %q: want qcow2 or raw", img, r.backFmt)
		}
		next, err := backingPath(img, r.backing, relOK)
		if err != nil {
			return policyErr(field, "%s: backing file %q: %v", img, r.backing, err)
		}
		if err := checkFileIn(field+" (backing file of "+img+")", next, dirs, "disk or image"); err != nil {
			return err
		}
		if r.backFmt == "raw" {
			return nil
		}
		img = next
	}
}

// backingPath is the file QEMU opens for backing name b of image img.
func backingPath(img, b string, relOK bool) (string, error) {
	if strings.HasPrefix(b, "json:") {
		return "", fmt.Errorf("json: names are not allowed")
	}
	if i := strings.IndexByte(b, ':'); i >= 0 && !strings.Contains(b[:i], "/") {
		return "", fmt.Errorf("protocol names are not allowed, only files")
	}
	if filepath.IsAbs(b) {
		return b, nil
	}
	if !relOK {
		return "", fmt.Errorf("a relative name is not allowed here")
	}
	return filepath.Join(filepath.Dir(img), b), nil
}
