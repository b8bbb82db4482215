package qmp

import (
	"errors"
	"fmt"
)

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrDisconnected is returned by calls made after the monitor went away,
	// and by calls that were in flight when it did. Client.Err wraps it
	// together with the cause (EOF, read error, Close, ...).
	ErrDisconnected = errors.New("qmp: monitor disconnected")

	// ErrMessageTooLarge is the cause of a disconnect when QEMU sent a single
	// message larger than the client's limit (see WithMaxMessageSize).
	ErrMessageTooLarge = errors.New("qmp: message exceeds size limit")

	// ErrFDPassingUnsupported is returned by ExecuteWithFile (and GetFD) when
	// the transport is not a *net.UnixConn.
	ErrFDPassingUnsupported = errors.New("qmp: fd passing requires a unix socket transport (*net.UnixConn)")

	// ErrMigrationFailed is wrapped by WaitMigration when QEMU reports the
	// migration status "failed"; the message carries QEMU's error-desc.
	ErrMigrationFailed = errors.New("qmp: migration failed")

	// ErrMigrationCancelled is wrapped by WaitMigration when the migration
	// ended in status "cancelled".
	ErrMigrationCancelled = errors.New("qmp: migration cancelled")

	// Sentinels for QMP error classes; an *Error matches the one for its
	// Class via errors.Is.
	ErrGenericError    = errors.New("qmp: GenericError")
	ErrCommandNotFound = errors.New("qmp: CommandNotFound")
	ErrDeviceNotFound  = errors.New("qmp: DeviceNotFound")
	ErrDeviceNotActive = errors.New("qmp: DeviceNotActive")
	ErrKVMMissingCap   = errors.New("qmp: KVMMissingCap")
)

// classSentinels maps QMP error classes to sentinel errors.
var classSentinels = map[string]error{
	"GenericError":    ErrGenericError,
	"CommandNotFound": ErrCommandNotFound,
	"DeviceNotFound":  ErrDeviceNotFound,
	"DeviceNotActive": ErrDeviceNotActive,
	"KVMMissingCap":   ErrKVMMissingCap,
}

// Error is an error reply from QEMU: {"error": {"class": ..., "desc": ...}}.
type Error struct {
	Class string // QMP error class, e.g. "GenericError"
	Desc  string // human-readable description from QEMU
	Cmd   string // the command that failed
}

// Error implements error; the message names the command.
func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Cmd, e.Class, e.Desc)
}

// Is reports whether target is the sentinel for e's class (e.g.
// ErrCommandNotFound for class "CommandNotFound").
func (e *Error) Is(target error) bool {
	s, ok := classSentinels[e.Class]
	return ok && s == target
}
