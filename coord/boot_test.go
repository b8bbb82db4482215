package coord

import (
	"errors"
	"fmt"
	"testing"
)

func TestPlaceBootSpreadsAndBounds(t *testing.T) {
	plan, err := placeBoot("j", 5, []string{"a", "b", "c"}, map[string]int{"a": 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for i, vm := range plan {
		if vm.Name != fmt.Sprintf("j-%d", i) {
			t.Fatalf("vm %d named %s", i, vm.Name)
		}
		per[vm.Host]++
	}
	// a already runs 2: b and c take the VMs until all are even (2, 3, 2).
	if per["a"] != 0 || per["b"] != 3 || per["c"] != 2 || plan[0].Host != "b" || plan[1].Host != "c" {
		t.Fatalf("placement %v (per host %v)", plan, per)
	}
	if _, err := placeBoot("j", 5, []string{"a", "b"}, nil, map[string]int{"a": 2, "b": 2}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("5 VMs on two hosts of max 2: %v", err)
	}
	if _, err := placeBoot("j", 1, nil, nil, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("no hosts: %v", err)
	}
}

func TestValidBoot(t *testing.T) {
	for _, req := range []BootRequest{
		{Job: "", Template: "t", Count: 1},
		{Job: "j", Template: "../t", Count: 1},
		{Job: "j", Template: "t", Count: 0},
		{Job: "j", Template: "t", Count: MaxBootCount + 1},
	} {
		if err := validBoot(req); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", req, err)
		}
	}
	if err := validBoot(BootRequest{Job: "j", Template: "t", Count: 32}); err != nil {
		t.Error(err)
	}
}
