// Package hostlist expands Slurm hostlists ("node[1-3,7]", "n[01-10]",
// "rack[1-2]-n[1-4]", "a,b[1-2]") the way scripts/symvirt-node-alert's
// built-in expander does (its test runs both on the same cases).
package hostlist

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrSyntax: the hostlist is not one.
var ErrSyntax = errors.New("bad hostlist")

// Max bounds an expansion (a typo such as n[1-1000000000] must not eat the
// coordinator's memory).
const Max = 65536

// Expand returns the hosts of a hostlist in order. Commas outside brackets
// separate entries (empty ones are skipped); each [..] holds numbers and
// ranges, zero-padded to the width of the range's start when that starts
// with 0; several brackets multiply out.
func Expand(list string) ([]string, error) {
	var out []string
	depth, start := 0, 0
	for i, c := range list {
		switch c {
		case '[':
			depth++
		case ']':
			depth--
		case ',':
			if depth == 0 {
				if err := expandOne(list[start:i], &out); err != nil {
					return nil, fmt.Errorf("%q: %w", list, err)
				}
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("%q: %w: unbalanced brackets", list, ErrSyntax)
	}
	if err := expandOne(list[start:], &out); err != nil {
		return nil, fmt.Errorf("%q: %w", list, err)
	}
	return out, nil
}

// expandOne expands one entry's first bracket and recurses on the rest.
func expandOne(s string, out *[]string) error {
	ob := strings.IndexByte(s, '[')
	if ob < 0 {
		if strings.Contains(s, "]") {
			return fmt.Errorf("%w: %q: ] without [", ErrSyntax, s)
		}
		if s != "" {
			if len(*out) >= Max {
				return fmt.Errorf("%w: more than %d hosts", ErrSyntax, Max)
			}
			*out = append(*out, s)
		}
		return nil
	}
	cb := strings.IndexByte(s[ob:], ']')
	if cb < 0 {
		return fmt.Errorf("%w: %q: [ without ]", ErrSyntax, s)
	}
	cb += ob
	pre, items, post := s[:ob], strings.Split(s[ob+1:cb], ","), s[cb+1:]
	for _, item := range items {
		lo, hi, ok := strings.Cut(item, "-")
		if !ok {
			hi = lo
		}
		a, errA := number(lo)
		b, errB := number(hi)
		if errA != nil || errB != nil || b < a {
			return fmt.Errorf("%w: %q: range %q", ErrSyntax, s, item)
		}
		width := 1
		if len(lo) > 1 && lo[0] == '0' {
			width = len(lo)
		}
		for v := a; v <= b; v++ {
			if err := expandOne(fmt.Sprintf("%s%0*d%s", pre, width, v, post), out); err != nil {
				return err
			}
		}
	}
	return nil
}

// number parses digits only (no sign, no space).
func number(s string) (int, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, ErrSyntax
	}
	return strconv.Atoi(s)
}
