// Package sentinel holds hostd's sentinel errors, so that hostd and its
// subpackages wrap the same ones.
//
// Contract: every error hostd and its subpackages return wraps one of
// these (with %w, with context naming the VM or field). hostd re-exports them (errors.go) and
// maps each to a stable wire code, which a remote client decodes back to
// the same sentinel; callers check them with errors.Is.
package sentinel
