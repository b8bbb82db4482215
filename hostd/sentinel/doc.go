// Package sentinel holds hostd's sentinel errors, so that hostd and its
// subpackages wrap the same ones.
//
// Contract: an error is wrapped (%w) with context naming the VM or field
// it concerns and checked with errors.Is. hostd re-exports these
// (errors.go) and maps each to a stable wire code, which a remote client
// decodes back to the same sentinel. The first four are the ones coord
// shares (internal/jsonapi).
package sentinel
