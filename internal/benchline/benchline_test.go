package benchline

import (
	"encoding/json"
	"math"
	"testing"
)

// A ratio to a zero pause is a value JSON has no number for; the line keeps
// it as a string and every other figure as it was.
func TestEncodeKeepsALineWithInf(t *testing.T) {
	line := Encode(map[string]any{"bench": "live", "pause_seconds": 0.0, "ratio": math.Inf(1),
		"per_vm": map[string]float64{"vm1": math.NaN(), "vm2": 0.004}, "rounds": []float64{0.1, math.Inf(-1)}})
	var got map[string]any
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("line %q is not JSON: %v", line, err)
	}
	if got["bench"] != "live" || got["ratio"] != "+Inf" || got["pause_seconds"] != 0.0 {
		t.Errorf("line %s: want bench live, ratio \"+Inf\", pause_seconds 0", line)
	}
	if vm := got["per_vm"].(map[string]any); vm["vm1"] != "NaN" || vm["vm2"] != 0.004 {
		t.Errorf("per_vm %v: want vm1 \"NaN\", vm2 0.004", vm)
	}
	if r := got["rounds"].([]any); r[0] != 0.1 || r[1] != "-Inf" {
		t.Errorf("rounds %v: want [0.1 \"-Inf\"]", r)
	}
}

func TestEncodeFiniteLineAsIs(t *testing.T) {
	if got, want := Encode(map[string]any{"bench": "b", "seconds": 1.5}), `{"bench":"b","seconds":1.5}`; got != want {
		t.Errorf("Encode = %s, want %s", got, want)
	}
}

// A value no JSON can hold at all still gives a line naming its bench.
func TestEncodeNamesTheBenchOfALineItCannotEncode(t *testing.T) {
	line := Encode(map[string]any{"bench": "b", "ch": make(chan int)})
	var got map[string]any
	if err := json.Unmarshal([]byte(line), &got); err != nil || got["bench"] != "b" || got["encode_error"] == nil {
		t.Errorf("line %s: want bench b and encode_error", line)
	}
}
