package hostd

import "errors"

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
)

// errorCodes gives every sentinel a stable wire name. Ordered, so an error
// wrapping several sentinels maps to the same code every time.
var errorCodes = []struct {
	code string
	err  error
}{
	{"not_found", ErrNotFound},
	{"exists", ErrExists},
	{"invalid_spec", ErrInvalidSpec},
	{"invalid_state", ErrInvalidState},
	{"busy", ErrBusy},
	{"qemu_start", ErrQEMUStart},
	{"checksum", ErrChecksum},
	{"no_device", ErrNoDevice},
	{"guest", ErrGuest},
	{"migration", ErrMigration},
	{"unauthorized", ErrUnauthorized},
}

func codeOf(err error) string {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}

func errorForCode(code string) error {
	for _, c := range errorCodes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
