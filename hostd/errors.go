package hostd

import (
	"errors"
	"net/http"
	"slices"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// Sentinel errors (defined in hostd/sentinel, which the subpackages
// share). Callers wrap them with the VM or field they concern and check
// them with errors.Is; the API maps them to stable codes so a remote
// client gets the same sentinel back.
var (
	ErrNotFound     = sentinel.ErrNotFound
	ErrExists       = sentinel.ErrExists
	ErrInvalidSpec  = sentinel.ErrInvalidSpec
	ErrBusy         = sentinel.ErrBusy
	ErrInvalidState = sentinel.ErrInvalidState
	ErrQEMUStart    = sentinel.ErrQEMUStart
	ErrChecksum     = sentinel.ErrChecksum
	ErrNoDevice     = sentinel.ErrNoDevice
	ErrGuest        = sentinel.ErrGuest
	ErrMigration    = sentinel.ErrMigration
	ErrUnauthorized = sentinel.ErrUnauthorized
	ErrRAMFile      = sentinel.ErrRAMFile
	// ErrStaleEpoch: a step came from a coordinator leader older than one
	// this host has already obeyed (a deposed leader): refused.
	ErrStaleEpoch = errors.New("step from a deposed coordinator leader (stale epoch)")
)

// errorCodes gives every sentinel a stable wire name and HTTP status. A
// failed migration that was refused is "migration" (before unauthorized).
var errorCodes = slices.Concat(jsonapi.Shared, jsonapi.Codes{
	{Code: "invalid_state", Err: ErrInvalidState, Status: http.StatusConflict},
	{Code: "qemu_start", Err: ErrQEMUStart},
	{Code: "checksum", Err: ErrChecksum, Status: http.StatusBadRequest},
	{Code: "no_device", Err: ErrNoDevice},
	{Code: "guest", Err: ErrGuest},
	{Code: "migration", Err: ErrMigration},
	{Code: "unauthorized", Err: ErrUnauthorized, Status: http.StatusForbidden},
	{Code: "ram_file", Err: ErrRAMFile},
	{Code: "stale_epoch", Err: ErrStaleEpoch, Status: http.StatusConflict},
})

func codeOf(err error) string { return errorCodes.Of(err) }
