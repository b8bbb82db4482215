package coord

import (
	"errors"
	"slices"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// Sentinel errors of the coordinator, wrapped with context and checked
// with errors.Is. The first four are the ones hostd shares (jsonapi).
var (
	ErrNotFound   = jsonapi.ErrNotFound
	ErrExists     = jsonapi.ErrExists
	ErrInvalid    = jsonapi.ErrInvalid
	ErrBusy       = jsonapi.ErrBusy
	ErrFailed     = errors.New("operation failed")
	ErrNoCapacity = errors.New("no host with room")
)

// codes gives every sentinel its wire name and HTTP status.
var codes = slices.Concat(jsonapi.Shared, jsonapi.Codes{
	{Code: "failed", Err: ErrFailed},
	{Code: "no_capacity", Err: ErrNoCapacity},
})
