package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestConsolidateCommand runs a small simulation in both output formats.
func TestConsolidateCommand(t *testing.T) {
	args := []string{"--hosts", "10", "--vms", "60", "--hours", "3", "--step", "10m", "--seed", "4"}
	var out bytes.Buffer
	if err := runConsolidate(append(args, "--output", "json"), &out); err != nil {
		t.Fatal(err)
	}
	var got report
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got.Config.Hosts != 10 || got.Step != "10m0s" || len(got.Results) != 2 || got.Results[0].Rounds != 18 {
		t.Fatalf("config %+v, %d results: %+v", got.Config, len(got.Results), got.Results)
	}
	out.Reset()
	if err := runConsolidate(args, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10 hosts", "60 VMs", "planner", "ffd", "migrations"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if err := runConsolidate([]string{"--output", "yaml", "--hours", "1"}, &out); err == nil {
		t.Error("--output yaml accepted")
	}
}
