package hostd

import (
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
})

func codeOf(err error) string { return errorCodes.Of(err) }
