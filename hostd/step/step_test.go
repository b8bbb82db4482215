package step

import (
	"errors"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

func TestValidateTakesOnlyTheKindsArguments(t *testing.T) {
	hdr := Request{ID: "a1", Op: "op1", VM: "v"}
	with := func(kind string, set func(*Request)) Request {
		r := hdr
		r.Kind = kind
		if set != nil {
			set(&r)
		}
		return r
	}
	save := func(r *Request) { r.Save = &SaveArgs{Dir: "/ck/v"} }
	good := []Request{
		with(Stop, nil),
		with(Save, save),
		with(WaitSave, save),
		with(Prepare, func(r *Request) { r.Prepare = &PrepareArgs{Operation: "checkpoint"} }),
		with(Migrate, func(r *Request) { r.Migrate = &MigrateArgs{Dest: "h2:1"} }),
		with(Replace, func(r *Request) { r.Replace = &ReplaceArgs{} }),
	}
	for _, r := range good {
		if err := r.Validate(); err != nil {
			t.Errorf("%s: %v", r.Kind, err)
		}
	}
	bad := map[string]Request{
		"required":             {Kind: Stop, VM: "v"},
		`kind "teleport"`:      with("teleport", nil),
		`"save" are missing`:   with(Save, nil),
		`"save" are not taken`: with(Stop, save),
		"not an absolute path": with(Save, func(r *Request) { r.Save = &SaveArgs{Dir: "ck"} }),
		"dest is missing":      with(Migrate, func(r *Request) { r.Migrate = &MigrateArgs{} }),
	}
	for want, r := range bad {
		err := r.Validate()
		if !errors.Is(err, jsonapi.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: got %v, want ErrInvalid naming %q", r, err, want)
		}
	}
}

func TestForwardKinds(t *testing.T) {
	for _, k := range []string{Prepare, Save, Migrate, Arm, Point, Replace} {
		if !Forward(k) {
			t.Errorf("%s is a forward step", k)
		}
	}
	for _, k := range []string{Attach, Resume, Abort, Kill, CancelMigrate, DeleteArtifacts, WaitSave} {
		if Forward(k) {
			t.Errorf("%s closes an operation", k)
		}
	}
}

// A fence's peers are Ethernet addresses, bounded in number, and only a
// fence step takes them.
func TestValidateFencePeers(t *testing.T) {
	req := func(kind string, peers ...string) Request {
		r := Request{ID: "a1", Op: "op1", VM: "v", Kind: kind, Fence: &FenceArgs{Peers: peers}}
		if kind == Point {
			r.Save = &SaveArgs{Dir: "/x"}
		}
		return r
	}
	if err := req(Fence, "52:54:00:00:00:01", "52:54:00:AA:00:02").Validate(); err != nil {
		t.Fatalf("valid peers: %v", err)
	}
	many := make([]string, MaxFencePeers+1)
	for i := range many {
		many[i] = "52:54:00:00:00:01"
	}
	for name, r := range map[string]Request{
		"not a MAC":        req(Fence, "52:54:00:00:00:01", "nope"),
		"not Ethernet":     req(Fence, "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"),
		"too many":         req(Fence, many...),
		"not a fence step": req(Point, "52:54:00:00:00:01"),
	} {
		if err := r.Validate(); !errors.Is(err, jsonapi.ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	set, _ := req(Fence, "52:54:00:AA:00:02").Fence.PeerSet()
	if !set["52:54:00:aa:00:02"] {
		t.Fatalf("peer set %v: want the canonical form", set)
	}
}
