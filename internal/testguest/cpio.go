package testguest

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// File is one file to put into an initramfs: either Data (inline contents)
// or Src (a host file to copy). Mode gives the permissions; zero means 0644
// for Data and the host file's permissions for Src. Mode may also carry
// os.ModeDir (an empty directory; Data and Src unused) or os.ModeSymlink
// (a symbolic link whose target is Data).
type File struct {
	Data []byte
	Src  string
	Mode os.FileMode
}

// Unix file type bits of the newc format.
const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
)

// WriteCPIO writes files as an uncompressed newc ("070701") cpio archive,
// the format the Linux kernel unpacks as initramfs. Names are paths inside
// the guest ("/etc/x" and "etc/x" are the same); every parent directory is
// added (mode 0755) before its contents. Entries are owned by root.
func WriteCPIO(w io.Writer, files map[string]File) error {
	type entry struct {
		name string
		f    File
	}
	byName := map[string]File{}
	for name, f := range files {
		clean := path.Clean("/" + name)[1:]
		if clean == "" || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("cpio: bad file name %q", name)
		}
		if _, dup := byName[clean]; dup {
			return fmt.Errorf("cpio: file %q given twice", clean)
		}
		byName[clean] = f
	}
	for name := range byName {
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if _, ok := byName[dir]; !ok {
				byName[dir] = File{Mode: os.ModeDir | 0o755}
			}
		}
	}
	entries := make([]entry, 0, len(byName))
	for name, f := range byName {
		entries = append(entries, entry{name, f})
	}
	// Sorted, so that a directory ("a") always precedes its contents ("a/b").
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })

	cw := &cpioWriter{w: bufio.NewWriter(w)}
	for i, e := range entries {
		if err := cw.file(uint32(i+1), e.name, e.f); err != nil {
			return err
		}
	}
	if err := cw.header(0, "TRAILER!!!", 0, 1, 0); err != nil {
		return err
	}
	return cw.w.Flush()
}

type cpioWriter struct {
	w *bufio.Writer
	n int64 // bytes written, for the 4-byte alignment
}

func (c *cpioWriter) file(ino uint32, name string, f File) error {
	switch {
	case f.Mode&os.ModeDir != 0:
		return c.header(ino, name, sIFDIR|perm(f.Mode, 0o755), 2, 0)
	case f.Mode&os.ModeSymlink != 0:
		if err := c.header(ino, name, sIFLNK|0o777, 1, len(f.Data)); err != nil {
			return err
		}
		return c.data(f.Data)
	case f.Mode&os.ModeType != 0:
		return fmt.Errorf("cpio: %s: unsupported file type %v", name, f.Mode.Type())
	}
	data, mode := f.Data, perm(f.Mode, 0o644)
	if f.Src != "" {
		if f.Data != nil {
			return fmt.Errorf("cpio: %s: both Data and Src given", name)
		}
		st, err := os.Stat(f.Src)
		if err != nil {
			return fmt.Errorf("cpio: %s: %w", name, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("cpio: %s: source %s is not a regular file", name, f.Src)
		}
		if data, err = os.ReadFile(f.Src); err != nil {
			return fmt.Errorf("cpio: %s: %w", name, err)
		}
		mode = perm(f.Mode, st.Mode())
	}
	if err := c.header(ino, name, sIFREG|mode, 1, len(data)); err != nil {
		return err
	}
	return c.data(data)
}

// perm returns the permission bits (with setuid, setgid and sticky) of m in
// Unix form, or those of def when m has none.
func perm(m, def fs.FileMode) uint32 {
	if m&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) == 0 {
		m = def
	}
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

func (c *cpioWriter) header(ino uint32, name string, mode, nlink uint32, size int) error {
	if int64(size) > 0xffffffff {
		return fmt.Errorf("cpio: %s: too large", name)
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize (with the NUL), check.
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	if _, err := c.w.WriteString(h + name + "\x00"); err != nil {
		return err
	}
	c.n += int64(len(h) + len(name) + 1)
	return c.pad()
}

func (c *cpioWriter) data(b []byte) error {
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	c.n += int64(len(b))
	return c.pad()
}

func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		if _, err := c.w.Write(make([]byte, 4-r)); err != nil {
			return err
		}
		c.n += 4 - r
	}
	return nil
}
