// Package spec is the VM spec: what an operator writes (YAML, or JSON),
// what hostd persists for each VM and hands to another hostd on migration.
//
// Contract: ParseSpec and LoadSpec refuse unknown fields; Validate names the
// first wrong field in an error wrapping jsonapi.ErrInvalid (hostd's
// ErrInvalidSpec) and fills in the defaults, so a validated Spec is
// complete. The package checks the spec's own consistency only: whether
// its paths and devices are allowed on a host is hostd's policy.
package spec
