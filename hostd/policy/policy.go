package policy

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/hostd/spec"
)

// Policy confines what a VM spec may make QEMU (run as root) open on this
// host. A spec comes from hostd's API, a coordinator's job file, a migration
// source or a checkpoint's manifest: none of them is trusted with host files
// or host hardware.
type Policy struct {
	// ImageDirs hold kernels and initrds; a disk's backing file may lie
	// here too (a read-only base image under a VM's overlay). Default:
	// STATE_DIR/images.
	ImageDirs []string `yaml:"image_dirs"`
	// DiskDirs hold VM disks. Default: STATE_DIR/disks.
	DiskDirs []string `yaml:"disk_dirs"`
	// TapNames are patterns (path.Match, e.g. "tap-*") a NIC's tap must
	// match. Empty: any interface name. The kernel already refuses a tap
	// another QEMU holds open.
	TapNames []string `yaml:"tap_names"`
	// QEMUDirs hold the binaries a warm restart may switch a VM's QEMU to
	// (an upgrade); the configured qemu binary is always allowed. Default:
	// none other.
	QEMUDirs []string `yaml:"qemu_dirs"`
}

// SetDefaults fills the directories an operator expects when the config is
// silent, and resolves every directory (symlinks too), so a spec's resolved
// path compares with what the directory really is.
func (p *Policy) SetDefaults(stateDir string) error {
	state, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	if p.ImageDirs == nil {
		p.ImageDirs = []string{filepath.Join(state, "images")}
	}
	if p.DiskDirs == nil {
		p.DiskDirs = []string{filepath.Join(state, "disks")}
	}
	if p.ImageDirs, err = resolveDirs("image_dirs", p.ImageDirs); err != nil {
		return err
	}
	if p.DiskDirs, err = resolveDirs("disk_dirs", p.DiskDirs); err != nil {
		return err
	}
	if p.QEMUDirs, err = resolveDirs("qemu_dirs", p.QEMUDirs); err != nil {
		return err
	}
	for _, pat := range p.TapNames {
		if _, err := path.Match(pat, ""); err != nil {
			return fmt.Errorf("config: policy.tap_names: %q: %v", pat, err)
		}
	}
	return nil
}

func resolveDirs(name string, dirs []string) ([]string, error) {
	out := make([]string, len(dirs))
	for i, d := range dirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("config: policy.%s: %q is not an absolute path", name, d)
		}
		out[i] = resolveDir(d)
	}
	return out, nil
}

// resolveDir cleans d and resolves its symlinks; a directory that does not
// exist yet keeps its clean path (nothing can lie in it until it does).
func resolveDir(d string) string {
	d = filepath.Clean(d)
	if r, err := filepath.EvalSymlinks(d); err == nil {
		return r
	}
	return d
}

func policyErr(field, format string, a ...any) error {
	return fmt.Errorf("%w: spec field %s: %s", sentinel.ErrUnauthorized, field, fmt.Sprintf(format, a...))
}

// Check enforces the policy on a validated spec before hostd takes it
// (Create, and through it an incoming migration). pools are this host's
// device pools. Every field that reaches QEMU or the host's file system is
// checked here or in Validate.
func (p *Policy) Check(s spec.Spec, pools map[string][]map[string]string) error {
	if err := p.checkBoot(s); err != nil {
		return err
	}
	for i, d := range s.Disks {
		f := fmt.Sprintf("disks[%d].path", i)
		if err := p.checkFile(f, d.Path, p.DiskDirs, "disk"); err != nil {
			return err
		}
		if err := p.checkBacking(f, d.Path, d.Format, true); err != nil {
			return err
		}
	}
	return p.checkDevices(s, pools)
}

// CheckRestore is Check for a checkpoint's spec: its disks are names
// inside the checkpoint directory dir, which hostd copies into the VM's
// own directory before QEMU opens them.
func (p *Policy) CheckRestore(s spec.Spec, dir string, pools map[string][]map[string]string) error {
	if err := p.checkBoot(s); err != nil {
		return err
	}
	root := resolveDir(dir)
	for i, d := range s.Disks {
		f := fmt.Sprintf("disks[%d].path", i)
		if !filepath.IsLocal(d.Path) {
			return policyErr(f, "%s is not a file name inside the checkpoint directory", d.Path)
		}
		path := filepath.Join(dir, d.Path)
		if err := checkFileIn(f, path, []string{root}, "checkpoint"); err != nil {
			return err
		}
		// The copy lives in another directory: a relative backing file
		// would resolve there, so only absolute ones are allowed.
		if err := p.checkBacking(f, path, d.Format, false); err != nil {
			return err
		}
	}
	return p.checkDevices(s, pools)
}

func (p *Policy) checkBoot(s spec.Spec) error {
	if err := p.checkFile("kernel", s.Kernel, p.ImageDirs, "image"); err != nil {
		return err
	}
	return p.checkFile("initrd", s.Initrd, p.ImageDirs, "image")
}

// checkFile checks one path of the spec ("" is absent) against dirs.
func (p *Policy) checkFile(field, name string, dirs []string, kind string) error {
	if name == "" {
		return nil
	}
	if !filepath.IsAbs(name) {
		return spec.FieldErr(field, "%s is not an absolute path", name)
	}
	return checkFileIn(field, name, dirs, kind)
}

// checkFileIn resolves name (made clean, symlinks followed) and requires a
// regular file inside one of dirs: never a device node, a directory or a
// FIFO, whatever a symlink in an allowed directory points to.
func checkFileIn(field, name string, dirs []string, kind string) error {
	clean := filepath.Clean(name)
	inside := func(p string) bool { return slices.ContainsFunc(dirs, func(d string) bool { return within(p, d) }) }
	// Outside by name is refused before it is looked at: the answer must
	// not tell a client whether a host file exists.
	if !inside(clean) {
		return policyErr(field, "%s is outside the allowed %s directories %v", name, kind, dirs)
	}
	real, err := filepath.EvalSymlinks(clean)
	if err != nil {
		return spec.FieldErr(field, "%s: %v", name, unwrapPathErr(err))
	}
	if !inside(real) {
		return policyErr(field, "%s (resolves to %s) is outside the allowed %s directories %v", name, real, kind, dirs)
	}
	shown := name
	if real != clean {
		shown = fmt.Sprintf("%s (resolves to %s)", name, real)
	}
	st, err := os.Stat(real)
	if err != nil {
		return spec.FieldErr(field, "%s: %v", name, unwrapPathErr(err))
	}
	if !st.Mode().IsRegular() {
		return policyErr(field, "%s is %s, not a regular file", shown, fileKind(st.Mode()))
	}
	return nil
}

// within reports whether p lies inside dir (both clean and absolute).
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && filepath.IsLocal(rel)
}

func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return "not a regular file (" + m.Type().String() + ")"
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// CheckBinary allows a QEMU binary other than the configured one (runs as
// root, chosen by a client) only from QEMUDirs, and only a regular
// executable file that no one but its owner can write.
func (p *Policy) CheckBinary(name, configured string) error {
	bin, err := exec.LookPath(name)
	if err != nil {
		return fmt.Errorf("%w: qemu binary %q: %v", sentinel.ErrInvalidSpec, name, err)
	}
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return fmt.Errorf("%w: qemu binary %q: %v", sentinel.ErrInvalidSpec, name, err)
	}
	if conf, err := exec.LookPath(configured); err == nil {
		if r, err := filepath.EvalSymlinks(conf); err == nil && r == real {
			return nil
		}
	}
	if !slices.ContainsFunc(p.QEMUDirs, func(d string) bool { return within(real, d) }) {
		return fmt.Errorf("%w: qemu binary %s (resolves to %s) is outside the allowed qemu directories %v", sentinel.ErrUnauthorized, name, real, p.QEMUDirs)
	}
	st, err := os.Stat(real)
	if err != nil || !st.Mode().IsRegular() || st.Mode()&0o022 != 0 {
		return fmt.Errorf("%w: qemu binary %s: not a regular file writable only by its owner", sentinel.ErrUnauthorized, real)
	}
	return nil
}
