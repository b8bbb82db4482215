package testguest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

type cpioEntry struct {
	name  string
	mode  uint32
	nlink uint32
	data  string
}

// readCPIO parses a newc archive strictly (magic, alignment, trailer).
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	for {
		if off+110 > len(b) {
			t.Fatalf("truncated header at %d", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("bad field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		mode, nlink, size, namesize := field(1), field(4), field(6), field(11)
		if uid, gid := field(2), field(3); uid != 0 || gid != 0 {
			t.Errorf("owner %d:%d, want 0:0", uid, gid)
		}
		off += 110
		name := string(b[off : off+int(namesize)-1])
		if b[off+int(namesize)-1] != 0 {
			t.Fatalf("name %q not NUL-terminated", name)
		}
		off += int(namesize)
		align()
		data := string(b[off : off+int(size)])
		off += int(size)
		align()
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after trailer", len(b)-off)
			}
			return out
		}
		out = append(out, cpioEntry{name, mode, nlink, data})
	}
}

func TestWriteCPIO(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte("from host"), 0o750); err != nil {
		t.Fatal(err)
	}
	files := map[string]File{
		"/etc/symvirt/rc.d/10-x": {Data: []byte("#!/bin/sh\necho hi\n"), Mode: 0o755},
		"etc/motd":               {Data: []byte("abc")}, // default 0644, size not a multiple of 4
		"/bin/tool":              {Src: src},            // host file's mode
		"/bin/tool2":             {Src: src, Mode: 0o600},
		"/var/empty":             {Mode: os.ModeDir | 0o700},
		"/var/empty/../link":     {Mode: os.ModeSymlink, Data: []byte("/bin/tool")},
		"/etc":                   {Mode: os.ModeDir | 0o711}, // explicit parent wins
		"/empty":                 {},
	}
	var buf bytes.Buffer
	if err := WriteCPIO(&buf, files); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, buf.Bytes())
	want := []cpioEntry{
		{"bin", 0o40755, 2, ""},
		{"bin/tool", 0o100750, 1, "from host"},
		{"bin/tool2", 0o100600, 1, "from host"},
		{"empty", 0o100644, 1, ""},
		{"etc", 0o40711, 2, ""},
		{"etc/motd", 0o100644, 1, "abc"},
		{"etc/symvirt", 0o40755, 2, ""},
		{"etc/symvirt/rc.d", 0o40755, 2, ""},
		{"etc/symvirt/rc.d/10-x", 0o100755, 1, "#!/bin/sh\necho hi\n"},
		{"var", 0o40755, 2, ""},
		{"var/empty", 0o40700, 2, ""},
		{"var/link", 0o120777, 1, "/bin/tool"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("archive:\n got %v\nwant %v", got, want)
	}

	// GNU cpio, where installed, must read it back the same.
	if _, err := exec.LookPath("cpio"); err == nil {
		dir := t.TempDir()
		cmd := exec.Command("cpio", "-id", "--quiet", "--no-absolute-filenames")
		cmd.Dir = dir
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cpio -id: %v: %s", err, out)
		}
		b, err := os.ReadFile(filepath.Join(dir, "etc/symvirt/rc.d/10-x"))
		if err != nil || string(b) != "#!/bin/sh\necho hi\n" {
			t.Errorf("extracted rc.d script: %q, %v", b, err)
		}
		if l, err := os.Readlink(filepath.Join(dir, "var/link")); err != nil || l != "/bin/tool" {
			t.Errorf("extracted link: %q, %v", l, err)
		}
	}
}

func TestWriteCPIOErrors(t *testing.T) {
	for name, files := range map[string]map[string]File{
		"root":      {"/": {Data: []byte("x")}},
		"duplicate": {"/a/b": {}, "a/b": {}},
		"both":      {"/a": {Data: []byte("x"), Src: "/etc/hostname"}},
		"missing":   {"/a": {Src: "/nonexistent/file"}},
		"device":    {"/dev/x": {Mode: os.ModeDevice}},
	} {
		if err := WriteCPIO(new(bytes.Buffer), files); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
