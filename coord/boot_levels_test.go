package coord

import (
	"errors"
	"slices"
	"sync"
	"testing"
)

// fanLevels runs a host only after its parent (the first of its
// sources) has run, and stops at the first level that fails: a child
// never asks a parent that has not fetched the template or image.
func TestFanLevelsParentsFirst(t *testing.T) {
	hosts := []string{"a", "b", "c", "d", "e", "f", "g"}
	tree := FanoutTree([]string{"s", "r"}, hosts, 2, 1)
	var mu sync.Mutex
	var order []string
	err := fanLevels(tree, 2, func(h string) error {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, h)
		return nil
	})
	if err != nil || len(order) != len(hosts) {
		t.Fatalf("ran %v: %v", order, err)
	}
	for _, h := range hosts {
		if p := tree[h][0]; p != "s" && slices.Index(order, p) > slices.Index(order, h) {
			t.Errorf("%s ran before its parent %s: %v", h, p, order)
		}
	}
	boom := errors.New("boom")
	order = nil
	err = fanLevels(tree, 2, func(h string) error {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, h)
		if h == "a" {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || !slices.Equal(order, []string{"a"}) {
		t.Fatalf("after the root's child failed: ran %v, err %v", order, err)
	}
}
