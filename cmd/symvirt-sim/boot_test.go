package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord/bootsim"
)

// TestBootCommand runs a small boot simulation with a calibration file in
// both output formats: the figures are applied and printed with their
// sources, the three modes come out, and a missing calibration is refused.
func TestBootCommand(t *testing.T) {
	cal := bootsim.Calibration{Host: "testhost", Figures: []bootsim.Figure{
		{Name: bootsim.FigStart, Value: 0.04, Unit: "s", Source: "measured: here"},
		{Name: bootsim.FigResume, Value: 0.09, Unit: "s", Source: "measured: there"}}}
	file := filepath.Join(t.TempDir(), "cal.json")
	data, _ := json.Marshal(cal)
	os.WriteFile(file, data, 0o600)
	args := []string{"--calibration", file, "--hosts", "6", "--vms", "18", "--image-gib", "1", "--read-mib", "64"}
	var out bytes.Buffer
	if err := runBoot(append(args, "--output", "json"), &out); err != nil {
		t.Fatal(err)
	}
	var got bootReport
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got.Config.Hosts != 6 || got.Config.Start.Seconds() != 0.04 || len(got.Results) != 3 || len(got.Degrees) != 8 || len(got.Variants) < 5 || !got.TargetMet {
		t.Fatalf("report %+v", got)
	}
	if tree, central := got.Results[0], got.Results[2]; tree.Mode != "tree" || central.Mode != "central" || tree.Ready >= central.Ready {
		t.Errorf("tree %+v, central %+v", tree, central)
	}
	out.Reset()
	if err := runBoot(args, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"testhost", "qemu_start", "measured: here", "(a) fan-out tree", "(b) copy", "(c) one central", "target: (a) under 30s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if err := runBoot([]string{"--calibration", filepath.Join(t.TempDir(), "none.json")}, &out); err == nil ||
		!strings.Contains(err.Error(), "make sim-boot-calibrate") {
		t.Errorf("missing calibration: %v", err)
	}
}

// The calibration measured on the development VM (make
// sim-boot-calibrate, 2026-12-05; docs/templates.md quotes its
// prediction) still predicts 1,000 VMs on 100 hosts ready within the
// target over the tree, and far later by the two other ways.
func TestBootPredictionDevVM(t *testing.T) {
	cal, err := loadCalibration(filepath.Join("testdata", "bootsim-calibration-devvm.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bootsim.FigOverlay, bootsim.FigStart, bootsim.FigResume, bootsim.FigLatency, bootsim.FigStream} {
		if f, ok := cal.Get(name); !ok || !strings.HasPrefix(f.Source, "measured") {
			t.Errorf("figure %s: %+v", name, f)
		}
	}
	c, err := cal.Apply(bootsim.Default())
	if err != nil {
		t.Fatal(err)
	}
	tree, err := bootsim.Run(c, bootsim.Tree)
	if err != nil {
		t.Fatal(err)
	}
	central, err := bootsim.Run(c, bootsim.Central)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("1,000 VMs on 100 hosts: tree %v, central %v", tree.Ready, central.Ready)
	if tree.Ready >= bootTarget || central.Ready < 10*tree.Ready {
		t.Errorf("tree %v (target %v), central %v", tree.Ready, bootTarget, central.Ready)
	}
}
