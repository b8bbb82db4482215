package hostd

import (
	"errors"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// Sentinel errors. Callers wrap them with the VM or field they concern and
// check them with errors.Is; the API maps them to stable codes so a remote
// client gets the same sentinel back.
var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrInvalidSpec  = errors.New("invalid spec")
	ErrInvalidState = errors.New("invalid state")
	ErrBusy         = errors.New("another operation is in progress")
	ErrQEMUStart    = errors.New("qemu failed to start")
	ErrChecksum     = errors.New("checksum mismatch")
	ErrNoDevice     = errors.New("no free device in pool")
	ErrGuest        = errors.New("guest did not cooperate")
	ErrMigration    = errors.New("migration failed")
	ErrUnauthorized = errors.New("unauthorized")
	// ErrRAMFile: a guest RAM file or its directory is not the one hostd
	// created (pre-created, a symlink, replaced): it is never used.
	ErrRAMFile = errors.New("guest RAM file refused")
)

// errorCodes gives every sentinel a stable wire name, so a remote client
// gets the same sentinel back.
var errorCodes = jsonapi.Codes{
	{Code: "not_found", Err: ErrNotFound},
	{Code: "exists", Err: ErrExists},
	{Code: "invalid_spec", Err: ErrInvalidSpec},
	{Code: "invalid_state", Err: ErrInvalidState},
	{Code: "busy", Err: ErrBusy},
	{Code: "qemu_start", Err: ErrQEMUStart},
	{Code: "checksum", Err: ErrChecksum},
	{Code: "no_device", Err: ErrNoDevice},
	{Code: "guest", Err: ErrGuest},
	{Code: "migration", Err: ErrMigration},
	{Code: "unauthorized", Err: ErrUnauthorized},
	{Code: "ram_file", Err: ErrRAMFile},
}

func codeOf(err error) string { return errorCodes.Of(err) }
