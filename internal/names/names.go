// Package names is the rule for the names that become path components
// (jobs, VMs) and the check that a path built from them stays inside its
// root: a name is never a way out of a directory.
package names

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ErrInvalid is a name outside the rule or a path outside its root.
var ErrInvalid = errors.New("invalid name")

// Check reports whether name follows the rule: a letter or digit, then up
// to 62 letters, digits, '.', '_' or '-', and no "..". field names what
// the name is, for the error.
func Check(field, name string) error {
	if name == "" {
		return fmt.Errorf("field %s: missing: %w", field, ErrInvalid)
	}
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("field %s: %q: %w: use a letter or digit, then letters, digits, '.', '_' or '-' (at most 63, no \"..\")",
			field, name, ErrInvalid)
	}
	return nil
}

// Join joins root and one path element per part and checks that the
// result lies strictly inside root: every part must be a single element
// (no separator, not "." or "..").
func Join(root string, parts ...string) (string, error) {
	root = filepath.Clean(root)
	for _, p := range parts {
		if p == "" || p == "." || p == ".." || strings.ContainsRune(p, '/') || strings.ContainsRune(p, 0) {
			return "", fmt.Errorf("path element %q under %s: %w", p, root, ErrInvalid)
		}
	}
	dir := filepath.Join(append([]string{root}, parts...)...)
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return "", fmt.Errorf("%s is outside %s: %w", dir, root, ErrInvalid)
	}
	return dir, nil
}
