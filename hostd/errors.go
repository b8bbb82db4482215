package hostd

import (
	"errors"
	"net/http"
	"slices"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// Sentinel errors. Callers wrap them with the VM or field they concern and
// check them with errors.Is; the API maps them to stable codes so a remote
// client gets the same sentinel back. The first four are the ones coord
// shares (jsonapi).
var (
	ErrNotFound     = jsonapi.ErrNotFound
	ErrExists       = jsonapi.ErrExists
	ErrInvalidSpec  = jsonapi.ErrInvalid
	ErrBusy         = jsonapi.ErrBusy
	ErrInvalidState = errors.New("invalid state")
	ErrQEMUStart    = errors.New("qemu failed to start")
	ErrChecksum     = manifest.ErrChecksum
	ErrNoDevice     = errors.New("no free device in pool")
	ErrGuest        = errors.New("guest did not cooperate")
	ErrMigration    = errors.New("migration failed")
	ErrUnauthorized = errors.New("unauthorized")
	// ErrRAMFile: a guest RAM file or its directory is not the one hostd
	// created (pre-created, a symlink, replaced): it is never used.
	ErrRAMFile = errors.New("guest RAM file refused")
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
