package coord

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/symvirt/symvirt/hostd"
)

func TestFanoutTree(t *testing.T) {
	hosts := []string{"a", "b", "c", "d", "e", "f"}
	for _, tc := range []struct {
		name           string
		seeds, hosts   []string
		degree, seedDg int
		want           map[string][]string
	}{
		{"seed degree 1, degree 2: a chain head then a binary tree", []string{"s"}, hosts, 2, 1, map[string][]string{
			"a": {"s"}, "b": {"a", "s"}, "c": {"a", "s"},
			"d": {"b", "a", "s"}, "e": {"b", "a", "s"}, "f": {"c", "a", "s"}}},
		{"seed degree = degree 3", []string{"s"}, hosts, 3, 0, map[string][]string{
			"a": {"s"}, "b": {"s"}, "c": {"s"},
			"d": {"a", "s"}, "e": {"a", "s"}, "f": {"a", "s"}}},
		{"replica last, and a seed among the hosts is not placed", []string{"s", "r"}, []string{"a", "r", "b", "c"}, 1, 1, map[string][]string{
			"a": {"s", "r"}, "b": {"a", "s", "r"}, "c": {"b", "a", "s", "r"}}},
		{"no seed", nil, hosts, 2, 1, map[string][]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := FanoutTree(tc.seeds, tc.hosts, tc.degree, tc.seedDg)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// Every node serves at most degree children (the seed seedDegree), so
// the seed sends each block at most seedDegree times whatever the count.
func TestFanoutTreeDegreeBound(t *testing.T) {
	var hosts []string
	for i := range 100 {
		hosts = append(hosts, fmt.Sprintf("h%d", i))
	}
	for _, d := range []int{1, 2, 4, 8} {
		tree := FanoutTree([]string{"s"}, hosts, d, 1)
		children := map[string]int{}
		depth := 0
		for _, list := range tree {
			children[list[0]]++
			depth = max(depth, len(list))
		}
		if len(tree) != 100 || children["s"] != 1 {
			t.Fatalf("degree %d: %d hosts placed, seed has %d children", d, len(tree), children["s"])
		}
		for h, n := range children {
			if n > d {
				t.Fatalf("degree %d: %s has %d children", d, h, n)
			}
		}
		t.Logf("degree %d: depth %d for 100 hosts", d, depth)
	}
}

func TestImageBootRequestChecked(t *testing.T) {
	spec := &hostd.Spec{Name: "x"}
	for _, tc := range []struct {
		req BootRequest
		ok  bool
	}{
		{BootRequest{Job: "j", Count: 1, Image: "img", Spec: spec}, true},
		{BootRequest{Job: "j", Count: 1, Image: "img"}, false},                            // no spec
		{BootRequest{Job: "j", Count: 1, Image: "img", Template: "t", Spec: spec}, false}, // both
		{BootRequest{Job: "j", Count: 1, Image: "../x", Spec: spec}, false},
		{BootRequest{Job: "j", Count: 1, Template: "t"}, true},
	} {
		if err := validBoot(tc.req); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc.req, err)
		}
	}
}
