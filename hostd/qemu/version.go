package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/symvirt/symvirt/hostd/sentinel"
)

// MinMajor.MinMinor is the oldest QEMU symvirt runs: Debian 12's 7.2 (the
// migration capabilities, QMP commands and stream format it relies on).
// 10.0 (Debian 13, bookworm-backports) is tested beside it.
const (
	MinMajor = 7
	MinMinor = 2
)

// CheckVersion refuses a QEMU older than MinMajor.MinMinor; bin names it
// in the error.
func CheckVersion(bin string, v goqmp.Version) error {
	q := v.QEMU
	if q.Major > MinMajor || (q.Major == MinMajor && q.Minor >= MinMinor) {
		return nil
	}
	return fmt.Errorf("%w: %s is QEMU %s, older than %d.%d, the oldest symvirt supports", sentinel.ErrQEMUStart, bin, v, MinMajor, MinMinor)
}

var versionLine = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)\.(\d+)(?: \(([^)]*)\))?`)

// BinaryVersion runs bin --version (5 s at most) and parses what it says.
func BinaryVersion(ctx context.Context, bin string) (goqmp.Version, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return goqmp.Version{}, fmt.Errorf("%s --version: %w", bin, err)
	}
	return ParseVersion(string(out))
}

// ParseVersion reads the first line of qemu-system-x86_64 --version.
func ParseVersion(out string) (goqmp.Version, error) {
	var v goqmp.Version
	m := versionLine.FindStringSubmatch(out)
	if m == nil {
		return v, fmt.Errorf("no \"QEMU emulator version\" in %.80q", out)
	}
	v.QEMU.Major, _ = strconv.Atoi(m[1])
	v.QEMU.Minor, _ = strconv.Atoi(m[2])
	v.QEMU.Micro, _ = strconv.Atoi(m[3])
	v.Package = m[4]
	return v, nil
}

// hasRunWithUser reports whether bin takes -run-with user= (QEMU 9.1 and
// later); a binary whose version cannot be read is taken to be older.
func hasRunWithUser(ctx context.Context, bin string) bool {
	v, err := BinaryVersion(ctx, bin)
	q := v.QEMU
	return err == nil && (q.Major > 9 || (q.Major == 9 && q.Minor >= 1))
}
