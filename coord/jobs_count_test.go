package coord

import (
	"errors"
	"strings"
	"testing"
)

// A job file asks for clones with template: and count:, or lists its VMs;
// each malformed combination is refused with the field it is about.
func TestJobBootRequest(t *testing.T) {
	ok := Job{Name: "j", Template: "small", Count: 3, Hosts: []string{"a", "b"}, Parallel: 4}
	if !ok.Clones() {
		t.Fatal("a job with template and count is not a job of clones")
	}
	req, err := ok.BootRequest()
	if err != nil {
		t.Fatal(err)
	}
	if req.Job != "j" || req.Template != "small" || req.Count != 3 || len(req.Hosts) != 2 || req.Parallel != 4 {
		t.Fatalf("boot request %+v", req)
	}
	if (Job{Name: "j", VMs: []JobVM{{Name: "v", Host: "a"}}}).Clones() {
		t.Fatal("a job listing its VMs counts as clones")
	}
	for _, c := range []struct {
		job  Job
		want string
	}{
		{Job{Name: "j", Count: 2}, "needs field template"},
		{Job{Name: "j", Template: "small"}, "count 0 is out of range"},
		{Job{Name: "j", Template: "small", Count: -1}, "count -1 is out of range"},
		{Job{Name: "j", Template: "small", Count: MaxBootCount + 1}, "out of range 1..10000"},
		{Job{Name: "j", Template: "small", Count: 2, VMs: []JobVM{{Name: "v", Host: "a"}}}, "vms and template/count together"},
		{Job{Name: "j", Template: "small", Count: 2, Parallel: -1}, "parallel -1"},
		{Job{Name: "../j", Template: "small", Count: 2}, "job"},
		{Job{Name: "j", Template: "a/b", Count: 2}, "template"},
	} {
		if !c.job.Clones() {
			t.Errorf("%+v: not a job of clones", c.job)
		}
		_, err := c.job.BootRequest()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want ErrInvalid about %q", c.job, err, c.want)
		}
	}
	if _, err := (Job{Name: "j", Template: "small", Count: MaxBootCount}).BootRequest(); err != nil {
		t.Errorf("count at the bound: %v", err)
	}
}
