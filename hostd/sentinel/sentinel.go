package sentinel

import (
	"errors"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// The first four are the ones coord shares (internal/jsonapi).
var (
	ErrNotFound     = jsonapi.ErrNotFound
	ErrExists       = jsonapi.ErrExists
	ErrInvalidSpec  = jsonapi.ErrInvalid
	ErrBusy         = jsonapi.ErrBusy
	ErrInvalidState = errors.New("invalid state")
	ErrQEMUStart    = errors.New("qemu failed to start")
	// ErrChecksum: a checkpoint's file or manifest is not what it should
	// be (digest, form, or a file outside its directory).
	ErrChecksum  = errors.New("checksum mismatch")
	ErrNoDevice  = errors.New("no free device in pool")
	ErrGuest     = errors.New("guest did not cooperate")
	ErrMigration = errors.New("migration failed")
	// ErrUnauthorized: the caller, or what a spec asks of the host, is not
	// allowed.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrRAMFile: a guest RAM file or its directory is not the one hostd
	// created (pre-created, a symlink, replaced): it is never used.
	ErrRAMFile = errors.New("guest RAM file refused")
)
