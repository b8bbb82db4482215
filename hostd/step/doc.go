// Package step is the wire of the coordinator's steps to hostd: a Request
// (header plus one args struct per kind), its Result, the kinds, and the
// signed migration Grant a migrate step carries.
//
// Contract: a Request that passes Validate has its id, operation and VM
// set and exactly the arguments its kind takes (Save.Dir absolute,
// Migrate.Dest set); anything else wraps jsonapi.ErrInvalid. The package
// executes nothing: hostd runs a request once per id, refuses Forward
// kinds once its operation was closed, and holds the VM under the
// request's lease (see hostd/steps.go). Fields tagged `json:"-"` are
// callbacks for hostd's own direct operations and never cross the wire.
package step
