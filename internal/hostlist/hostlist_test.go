package hostlist

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var cases = []struct {
	in   string
	want []string // nil: a syntax error
}{
	{"node1", []string{"node1"}},
	{"node[1-3,7]", []string{"node1", "node2", "node3", "node7"}},
	{"n[01-03]", []string{"n01", "n02", "n03"}},
	{"n[8-11]", []string{"n8", "n9", "n10", "n11"}},
	{"n[098-101]", []string{"n098", "n099", "n100", "n101"}},
	{"rack[1-2]-n[1-2]", []string{"rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"}},
	{"a,b[1-2],c", []string{"a", "b1", "b2", "c"}},
	{"a,,b", []string{"a", "b"}},
	{"x[5]", []string{"x5"}},
	{"node[3-1]", nil}, {"node[1-", nil}, {"node]", nil}, {"node[a-b]", nil}, {"node[1-2", nil},
	{"n[1,]", nil}, {"n[-2]", nil}, {"n[1-2-3]", nil},
}

func TestExpand(t *testing.T) {
	for _, tc := range cases {
		got, err := Expand(tc.in)
		if tc.want == nil {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("%q: %v %v, want ErrSyntax", tc.in, got, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: %v %v, want %v", tc.in, got, err, tc.want)
		}
	}
	if _, err := Expand("n[1-1000000]"); !errors.Is(err, ErrSyntax) {
		t.Errorf("a million hosts: %v, want ErrSyntax", err)
	}
}

// The shell expander of scripts/symvirt-node-alert (its expand function,
// run by sh) agrees with Expand on every case: the same hosts, or an error
// for both.
func TestExpandAgreesWithNodeAlertScript(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "scripts", "symvirt-node-alert"))
	if err != nil {
		t.Fatal(err)
	}
	src := string(data)
	i := strings.Index(src, "\nexpand() {")
	j := strings.Index(src[i+1:], "\n}\n")
	if i < 0 || j < 0 {
		t.Fatal("no expand function in scripts/symvirt-node-alert")
	}
	fn := src[i+1 : i+1+j+2]
	for _, tc := range cases {
		out, err := exec.Command("sh", "-c", fn+"\nexpand \"$1\"", "sh", tc.in).Output()
		if tc.want == nil {
			if err == nil {
				t.Errorf("%q: the script expands it to %q, Expand refuses it", tc.in, out)
			}
			continue
		}
		got := strings.Fields(string(out))
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: the script says %q (%v), Expand %v", tc.in, got, err, tc.want)
		}
	}
}
