package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord"
)

// Job files with template: and count: parse into a boot; the malformed
// ones are refused before anything is sent to the coordinator.
func TestLoadJobCount(t *testing.T) {
	dir := t.TempDir()
	load := func(body string) (coord.Job, error) {
		f := filepath.Join(dir, "job.yaml")
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return loadJob(f)
	}
	j, err := load("name: web\ntemplate: small\ncount: 5\nhosts: [a, b]\nparallel: 3\n")
	if err != nil {
		t.Fatal(err)
	}
	req, err := j.BootRequest()
	if err != nil || req.Job != "web" || req.Template != "small" || req.Count != 5 || strings.Join(req.Hosts, ",") != "a,b" || req.Parallel != 3 {
		t.Fatalf("boot request %+v, %v", req, err)
	}
	for body, want := range map[string]string{
		"name: web\ncount: 5\n":                                           "needs field template",
		"name: web\ntemplate: small\ncount: 0\n":                          "out of range",
		"name: web\ntemplate: small\ncount: 10001\n":                      "out of range",
		"name: web\ntemplate: small\ncount: 2\nvms: [{name: v, host: a}]": "together",
		"name: web\ntemplate: small\ncounts: 2\n":                         "counts",
	} {
		if _, err := load(body); !errors.Is(err, coord.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want ErrInvalid about %q", body, err, want)
		}
	}
	if _, err := loadJob(filepath.Join("..", "..", "examples", "clones.yaml")); err != nil {
		t.Errorf("examples/clones.yaml: %v", err)
	}
}
