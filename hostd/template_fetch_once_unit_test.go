package hostd

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A second fetch of a template under way waits for the first and takes
// its result; one of another id is refused, naming both; once the first
// is done, a new one starts.
func TestTemplateFetchesJoin(t *testing.T) {
	var f templateFetches
	first, ok, err := f.join("tf", "id1")
	if err != nil || !ok {
		t.Fatalf("first join: %v %v", ok, err)
	}
	second, ok, err := f.join("tf", "id1")
	if err != nil || ok || second != first {
		t.Fatalf("second join of the same id: first %v, err %v", ok, err)
	}
	if _, _, err := f.join("tf", "id2"); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "id1") || !strings.Contains(err.Error(), "id2") {
		t.Fatalf("join of another id: %v", err)
	}
	if _, ok, err := f.join("other", "id2"); err != nil || !ok {
		t.Fatalf("another name: %v %v", ok, err)
	}
	got := make(chan Template, 1)
	go func() { tm, _ := second.wait(context.Background()); got <- tm }()
	f.finish("tf", first, Template{Name: "tf", ID: "id1"}, nil)
	if tm := <-got; tm.ID != "id1" {
		t.Fatalf("the waiter got %+v", tm)
	}
	if _, ok, _ := f.join("tf", "id2"); !ok {
		t.Fatal("a fetch after the first finished did not start anew")
	}
}
