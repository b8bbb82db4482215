package coord

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// The sources of a template's fan-out are the hosts holding its recorded
// id, the host it was made on first; a host claiming another id under
// the name is never one, and a boot that would use it is refused.
func TestTemplateSourcesTrustTheRecordedID(t *testing.T) {
	rec := Template{Name: "tf", ID: "good", Host: "s"}
	holders := []templateHolder{{"a", "good"}, {"d", "forged"}, {"s", "good"}, {"e", ""}}
	if got := templateSeeds(rec, holders); !reflect.DeepEqual(got, []string{"s", "a"}) {
		t.Errorf("seeds %v, want [s a]", got)
	}
	if err := refuseForeign(rec, holders, []string{"a", "b"}); err != nil {
		t.Errorf("boot on a and b: %v", err)
	}
	for _, h := range []string{"d", "e"} {
		err := refuseForeign(rec, holders, []string{"b", h})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "host "+h) || !strings.Contains(err.Error(), "good") {
			t.Errorf("boot on %s, which holds another template tf: %v", h, err)
		}
	}
	if got := templateSeeds(rec, []templateHolder{{"d", "forged"}}); len(got) != 0 {
		t.Errorf("seeds %v from a host with another id", got)
	}
}
