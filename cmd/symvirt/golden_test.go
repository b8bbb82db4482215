package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/help/*.golden from the current help")

// The help a newcomer reads, pinned: a change to it shows in review as a
// change to testdata/help/*.golden (go test -run TestHelpGolden -update
// rewrites them).
func TestHelpGolden(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "test"
	for _, args := range [][]string{
		{}, {"checkpoint"}, {"restart"}, {"migrate"}, {"evacuate"}, {"status"}, {"hosts"}, {"hosts", "add"},
		{"hosts", "rm"}, {"jobs"}, {"jobs", "create"}, {"jobs", "show"}, {"jobs", "rm"}, {"checkpoints"},
		{"vm"}, {"vm", "checkpoint"}, {"vm", "migrate"}, {"rejuvenate"}, {"coord"}, {"hostd"},
		{"schedule"}, {"hosts", "cordon"}, {"hosts", "uncordon"}, {"ops"}, {"ops", "cancel"}, {"ops", "watch"},
		{"consolidate"},
	} {
		name := strings.Join(append([]string{"symvirt"}, args...), "-")
		var out, errb bytes.Buffer
		if code := run(append(append([]string{"symvirt"}, args...), "--help"), &out, &errb); code != 0 || errb.Len() > 0 {
			t.Fatalf("%s --help: exit %d: %s", name, code, errb.String())
		}
		golden := filepath.Join("testdata", "help", name+".golden")
		if *update {
			os.MkdirAll(filepath.Dir(golden), 0o755)
			if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (go test -run TestHelpGolden -update writes it)", err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("%s --help differs from %s (-update rewrites it):\n%s", name, golden, out.String())
		}
	}
}
