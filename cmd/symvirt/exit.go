package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// Exit codes: the one table (also in `symvirt --help` and the README).
const (
	exitOK          = 0
	exitError       = 1 // anything else
	exitUsage       = 2 // bad command line, or a request refused as invalid
	exitUnreachable = 3 // the coordinator or hostd did not answer: nothing was done
	exitGuest       = 4 // a guest did not get ready: rolled back, the VMs run as before
	exitRolledBack  = 5 // the operation failed and was rolled back: the VMs run as before
	exitPartial     = 6 // VMs lost or stranded, or the outcome unknown: an operator must look
	exitBusy        = 7 // another operation holds the job or VM: retry later
	exitNotFound    = 8 // no such job, VM, host or checkpoint
)

const exitCodesHelp = `EXIT CODES (errors go to stderr; with -o json as one line {"error":{"code":...,"message":...}}):
   0  ok
   1  any other error
   2  usage: bad command line, or a request refused as invalid ("usage", "invalid", "exists", "invalid_state")
   3  unreachable: the coordinator or hostd did not answer, nothing was done ("unreachable")
   4  a guest did not get ready: rolled back, the VMs run as before ("guest_refused", "guest")
   5  failed and rolled back: the VMs run as before ("failed", "migration")
   6  partial: VMs lost or stranded, or the outcome unknown; an operator must look ("needs_operator", "no_result")
   7  busy: another operation holds the job or VM, retry later ("busy")
   8  not found: no such job, VM, host or checkpoint ("not_found")`

// classes maps sentinels (as errors.Is sees them, on either side of the
// wire) to the wire code and the exit code, in order: the refinements of
// coord.ErrFailed come before it.
var classes = []struct {
	err  error
	code string
	exit int
}{
	{errUsage, "usage", exitUsage},
	{errUnreachable, "unreachable", exitUnreachable},
	{jsonapi.ErrNoResult, "no_result", exitPartial},
	{coord.ErrGuestRefused, "guest_refused", exitGuest},
	{coord.ErrNeedsOperator, "needs_operator", exitPartial},
	{coord.ErrFailed, "failed", exitRolledBack},
	{hostd.ErrGuest, "guest", exitGuest},
	{hostd.ErrMigration, "migration", exitRolledBack},
	{jsonapi.ErrNotFound, "not_found", exitNotFound},
	{jsonapi.ErrBusy, "busy", exitBusy},
	{jsonapi.ErrInvalid, "invalid", exitUsage},
	{jsonapi.ErrExists, "exists", exitUsage},
	{hostd.ErrInvalidState, "invalid_state", exitUsage},
	{coord.ErrNoCapacity, "no_capacity", exitError},
	{hostd.ErrUnauthorized, "unauthorized", exitError},
	{hostd.ErrNoDevice, "no_device", exitError},
	{hostd.ErrQEMUStart, "qemu_start", exitError},
	{hostd.ErrChecksum, "checksum", exitError},
	{hostd.ErrRAMFile, "ram_file", exitError},
}

var (
	errUsage       = errors.New("usage")
	errUnreachable = errors.New("unreachable")
)

// usageErr is a command-line mistake (exit 2).
func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// classify returns err's wire code and exit code.
func classify(err error) (string, int) {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.code, c.exit
		}
	}
	return "error", exitError
}

// daemon is the server a command talks to, for error messages: which one,
// at which address, and how to point the CLI elsewhere.
type daemon struct{ what, addr, hint string }

// target is the daemon this run of the CLI talks to (one per process).
var target daemon

func coordTarget(addr string) daemon {
	return daemon{"the coordinator", addr, "is symvirt coord running there? point the CLI at it with --coord ADDR or SYMVIRT_COORD"}
}

func hostdTarget(addr string) daemon {
	return daemon{"hostd", addr, "is symvirt hostd running there? point the CLI at it with --host ADDR or SYMVIRT_HOST"}
}

// explain rewrites a transport error for a person: the daemon and the
// address tried, the cause without the internal HTTP request, and the
// hint; other errors are returned as they are (usage errors lose their
// prefix).
func explain(err error) error {
	var uerr *url.Error
	if !errors.As(err, &uerr) || target.addr == "" {
		return err
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return fmt.Errorf("%w: cannot reach %s at %s: %v (%s)", errUnreachable, target.what, target.addr, op.Err, target.hint)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s at %s closed the connection before answering (%s)", jsonapi.ErrNoResult, target.what, target.addr, target.hint)
	}
	return fmt.Errorf("%s at %s: %w", target.what, target.addr, uerr.Err)
}

// message is err's text for a person.
func message(err error) string {
	msg := err.Error()
	for _, p := range []error{errUsage, errUnreachable} {
		msg = strings.TrimPrefix(msg, p.Error()+": ")
	}
	if errors.Is(err, jsonapi.ErrNoResult) && !strings.Contains(msg, "before answering") {
		msg += " (the outcome is unknown: the operation finishes or rolls back when its daemon runs again; see symvirt status or symvirt vm status)"
	}
	return msg
}

// report writes err to w (text, or one JSON line) and returns the exit
// code.
func report(w io.Writer, err error, asJSON bool) int {
	err = explain(err)
	code, exit := classify(err)
	if asJSON {
		json.NewEncoder(w).Encode(map[string]jsonapi.Error{"error": {Code: code, Message: message(err)}})
		return exit
	}
	fmt.Fprintln(w, "symvirt:", message(err))
	return exit
}
