package placement

import "errors"

// Sentinel errors of the planner, wrapped with context and checked with
// errors.Is.
var (
	// ErrInvalid: the input is malformed (a VM on an unknown host, a
	// duplicate name, a policy fraction out of range).
	ErrInvalid = errors.New("invalid placement input")
	// ErrInfeasible: the current placement violates a constraint that no
	// move can repair (two pinned VMs of one anti-affinity group on one
	// host, or no host left for a VM that must leave).
	ErrInfeasible = errors.New("placement infeasible")
)
