package guestproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
	"unicode/utf8"
)

// Version is the protocol version this package speaks.
const Version = 1

// Limits of a valid message. They keep every field small enough that one
// frame (MaxFrame) always suffices and that logging a peer's reason is safe.
const (
	MaxIDLen    = 64        // round and device ids
	MaxReason   = 1024      // REFUSED/ABORT reason, bytes
	MaxDevices  = 16        // devices in one PREPARE
	MaxDeadline = time.Hour // PREPARE deadline
)

// The range a RESUME's host_time_ns must lie in (2020-01-01 to 2200-01-01,
// UTC): a guest never steps its clock to a time outside it.
const (
	MinHostTimeNS int64 = 1577836800 * 1e9
	MaxHostTimeNS int64 = 7258118400 * 1e9
)

// Message types.
const (
	TypeHello    = "HELLO"
	TypeHelloAck = "HELLO_ACK"
	TypePing     = "PING"
	TypePong     = "PONG"
	TypePrepare  = "PREPARE"
	TypeReady    = "READY"
	TypeRefused  = "REFUSED"
	TypeResume   = "RESUME"
	TypeAbort    = "ABORT"
	TypeDone     = "DONE"
)

// Operations a round prepares for.
const (
	OpCheckpoint = "checkpoint"
	OpMigrate    = "migrate"
	OpRestore    = "restore"
	OpRejuvenate = "rejuvenate"
	OpDetach     = "detach"
)

// Outcomes a RESUME reports (OutcomeAborted also ends an ABORTed round).
const (
	OutcomeCheckpointed = "checkpointed"
	OutcomeRestored     = "restored"
	OutcomeMigrated     = "migrated"
	OutcomeRejuvenated  = "rejuvenated"
	OutcomeAborted      = "aborted"
	OutcomeFailed       = "failed"
)

// Guest states reported in HELLO_ACK.
const (
	StateIdle      = "idle"      // no round
	StatePreparing = "preparing" // PREPARE being handled
	StateReady     = "ready"     // READY sent, waiting for RESUME/ABORT
	StateFinishing = "finishing" // RESUME/ABORT being handled
)

// Device is a device the host is about to detach from the guest. MAC, if
// set, lets the guest find the NIC and move its traffic elsewhere first.
type Device struct {
	ID  string `json:"id"`
	MAC string `json:"mac,omitempty"`
}

// Message is one frame's body. Which fields are set depends on Type; see the
// package documentation. The zero value of a field means "absent".
type Message struct {
	V          int      `json:"v"`
	Type       string   `json:"type"`
	ID         string   `json:"id,omitempty"`
	Op         string   `json:"op,omitempty"`
	DeadlineMS int64    `json:"deadline_ms,omitempty"`
	Devices    []Device `json:"devices,omitempty"`
	Outcome    string   `json:"outcome,omitempty"`
	Reason     string   `json:"reason,omitempty"`
	Seq        uint64   `json:"seq,omitempty"`
	State      string   `json:"state,omitempty"`
	// Freeze (PREPARE of op "migrate" only) asks for a dependency-aware
	// migration: the guest freezes its processes that do not depend on the
	// world outside the VM until the round ends. Absent means false, so a
	// host that does not know it asks for a plain migration, and a guest
	// that does not know it ignores it (and does not freeze).
	Freeze bool `json:"freeze,omitempty"`
	// HostTimeNS (RESUME only) is the host's wall clock when it sent the
	// RESUME, in ns since the Unix epoch: a guest that was away (restored,
	// migrated, stopped to be saved) steps its clock to it, as libvirt's
	// set-time through qemu-guest-agent does. Absent from an older host;
	// ignored by an older guest.
	HostTimeNS int64 `json:"host_time_ns,omitempty"`
	// Usage (HELLO_ACK only, optional): the guest's memory in use (usage.go).
	Usage
	// Timing (READY only, optional): how the guest spent the prepare
	// (timing.go).
	Timing
	// Clone (CLONE only): the clone's new identity.
	Clone *Clone `json:"clone,omitempty"`
}

// HostTime is HostTimeNS as a time (the zero time when absent).
func (m Message) HostTime() time.Time {
	if m.HostTimeNS == 0 {
		return time.Time{}
	}
	return time.Unix(0, m.HostTimeNS)
}

// Deadline is DeadlineMS as a duration.
func (m Message) Deadline() time.Duration { return time.Duration(m.DeadlineMS) * time.Millisecond }

// ValidOp tells whether op is one of the Op* constants.
func ValidOp(op string) bool {
	switch op {
	case OpCheckpoint, OpMigrate, OpRestore, OpRejuvenate, OpDetach:
		return true
	}
	return false
}

// ValidOutcome tells whether o is one of the Outcome* constants.
func ValidOutcome(o string) bool {
	switch o {
	case OutcomeCheckpointed, OutcomeRestored, OutcomeMigrated, OutcomeRejuvenated, OutcomeAborted, OutcomeFailed:
		return true
	}
	return false
}

func validState(s string) bool {
	switch s {
	case StateIdle, StatePreparing, StateReady, StateFinishing:
		return true
	}
	return false
}

// ValidID tells whether s may be a round or device id: 1..MaxIDLen bytes of
// [A-Za-z0-9._:-]. Ids end up in logs, hook script environments and the hook
// socket's space-separated lines, so they must not hold spaces or controls.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

func validReason(s string) bool {
	return len(s) <= MaxReason && utf8.ValidString(s)
}

// TruncateReason makes s a valid reason: valid UTF-8 of at most MaxReason
// bytes, cut at a character boundary.
func TruncateReason(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= MaxReason {
		return s
	}
	cut := MaxReason
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// Validate checks m against the schema of its type. It returns an error
// wrapping ErrMalformed, or ErrVersion for a non-handshake message of another
// version.
func (m Message) Validate() error {
	if m.V < 1 {
		return fmt.Errorf("%w: version %d", ErrMalformed, m.V)
	}
	switch m.Type {
	case TypeHello, TypeHelloAck:
		if m.V != Version {
			// Another version: only v and type are meaningful to us, and the
			// handshake turns this into ErrVersion.
			return nil
		}
	case TypePing, TypePong, TypePrepare, TypeReady, TypeRefused, TypeResume, TypeAbort, TypeDone, TypeClone:
		if m.V != Version {
			return fmt.Errorf("%w: %s of version %d, want %d", ErrVersion, m.Type, m.V, Version)
		}
	default:
		return fmt.Errorf("%w: unknown type %.32q", ErrMalformed, m.Type)
	}
	f, err := m.typeFields()
	if err != nil {
		return err
	}
	return m.checkFields(f)
}

// fields are the optional fields a type may carry; anything else set is an
// error, so that a confused peer is noticed rather than half-understood.
type fields struct {
	id, op, deadline, devices, outcome, reason, state, freeze, hostTime, usage, clone, timing bool
}

func (m Message) bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, m.Type, fmt.Sprintf(format, a...))
}

// typeFields checks what is particular to m's type and says which optional
// fields it may carry.
func (m Message) typeFields() (fields, error) {
	var f fields
	switch m.Type {
	case TypeHelloAck:
		f.state, f.usage = true, true
		if err := m.checkUsage(); err != nil {
			return f, err
		}
		if !validState(m.State) {
			return f, m.bad("invalid state %.32q", m.State)
		}
		if (m.ID == "") != (m.Op == "") {
			return f, m.bad("pending id and op must come together")
		}
		if m.ID != "" && m.State != StateReady {
			return f, m.bad("pending round in state %s", m.State)
		}
		f.id, f.op = m.ID != "", m.Op != ""
	case TypePrepare:
		f.id, f.op, f.deadline, f.devices, f.freeze = true, true, true, true, true
		return f, m.checkPrepare()
	case TypeReady:
		f.id, f.timing = true, true
		return f, m.checkTiming()
	case TypeDone:
		f.id = true
	case TypeRefused:
		f.id, f.reason = true, true
		if m.Reason == "" {
			return f, m.bad("empty reason")
		}
	case TypeResume:
		f.id, f.outcome, f.hostTime = true, true, true
		if !ValidOutcome(m.Outcome) {
			return f, m.bad("invalid outcome %.32q", m.Outcome)
		}
		if m.HostTimeNS != 0 && (m.HostTimeNS < MinHostTimeNS || m.HostTimeNS > MaxHostTimeNS) {
			return f, m.bad("host_time_ns %d out of range", m.HostTimeNS)
		}
	case TypeAbort:
		f.id, f.reason = true, true
	case TypeClone:
		f.id, f.hostTime, f.clone = true, true, true
		return f, m.checkClone()
	}
	return f, nil
}

func (m Message) checkPrepare() error {
	if m.Freeze && m.Op != OpMigrate {
		// Freezing only pays off while memory is copied to another
		// host; for any other op it would just stop the guest's work.
		return m.bad("freeze with op %.32q, only with %s", m.Op, OpMigrate)
	}
	if m.DeadlineMS <= 0 || m.Deadline() > MaxDeadline {
		return m.bad("deadline_ms %d out of range", m.DeadlineMS)
	}
	if len(m.Devices) > MaxDevices {
		return m.bad("%d devices, at most %d", len(m.Devices), MaxDevices)
	}
	for i, d := range m.Devices {
		if !ValidID(d.ID) {
			return m.bad("device %d: invalid id", i)
		}
		if d.MAC != "" {
			hw, err := net.ParseMAC(d.MAC)
			if err != nil || len(hw) != 6 {
				return m.bad("device %s: invalid mac", d.ID)
			}
		}
	}
	return nil
}

// checkFields checks the optional fields m's type may carry and refuses
// the ones it may not.
func (m Message) checkFields(f fields) error {
	if f.id && !ValidID(m.ID) {
		return m.bad("invalid id")
	}
	if f.op && !ValidOp(m.Op) {
		return m.bad("invalid op %.32q", m.Op)
	}
	if f.reason && !validReason(m.Reason) {
		return m.bad("reason longer than %d bytes or not UTF-8", MaxReason)
	}
	switch {
	case !f.id && m.ID != "":
		return m.bad("unexpected id")
	case !f.op && m.Op != "":
		return m.bad("unexpected op")
	case !f.deadline && m.DeadlineMS != 0:
		return m.bad("unexpected deadline_ms")
	case !f.devices && len(m.Devices) != 0:
		return m.bad("unexpected devices")
	case !f.outcome && m.Outcome != "":
		return m.bad("unexpected outcome")
	case !f.reason && m.Reason != "":
		return m.bad("unexpected reason")
	case !f.state && m.State != "":
		return m.bad("unexpected state")
	case !f.freeze && m.Freeze:
		return m.bad("unexpected freeze")
	case !f.hostTime && m.HostTimeNS != 0:
		return m.bad("unexpected host_time_ns")
	case !f.usage && m.Usage != Usage{}:
		return m.bad("unexpected mem_used/mem_total")
	case !f.clone && m.Clone != nil:
		return m.bad("unexpected clone")
	case !f.timing && m.Timing != Timing{}:
		return m.bad("unexpected apps_ns/took_ns")
	}
	return nil
}

// wireDevice decodes one element of "devices". JSON null is rejected so that
// the fixed-size array below can count the elements present.
type wireDevice struct {
	Device
	present bool
}

func (d *wireDevice) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		return errors.New("null device")
	}
	if err := json.Unmarshal(b, &d.Device); err != nil {
		return err
	}
	d.present = true
	return nil
}

// wireMessage is Message as decoded. Devices go into a fixed array one longer
// than allowed: encoding/json skips elements past an array's end without
// allocating them, so a frame full of "{}" cannot make us allocate a huge
// slice, and a filled last slot means "too many".
type wireMessage struct {
	V          int                        `json:"v"`
	Type       string                     `json:"type"`
	ID         string                     `json:"id"`
	Op         string                     `json:"op"`
	DeadlineMS int64                      `json:"deadline_ms"`
	Devices    [MaxDevices + 1]wireDevice `json:"devices"`
	Outcome    string                     `json:"outcome"`
	Reason     string                     `json:"reason"`
	Seq        uint64                     `json:"seq"`
	State      string                     `json:"state"`
	Freeze     bool                       `json:"freeze"`
	HostTimeNS int64                      `json:"host_time_ns"`
	Usage
	Timing
	Clone *wireClone `json:"clone"`
}

// maxNesting bounds how deeply a frame's JSON may nest. The schema needs 3
// (message, devices, device); the rest is room for ignored additions. Checked
// before encoding/json sees the body, whose parser would otherwise grow a
// stack for each level of "[[[[...".
const maxNesting = 8

func nestingOK(b []byte) bool {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			if depth++; depth > maxNesting {
				return false
			}
		case '}', ']':
			depth--
		}
	}
	return true
}

// decode parses and validates one frame body.
func decode(body []byte) (Message, error) {
	// The body must be one JSON object; a top-level array or string would
	// make Unmarshal's error less clear, and trailing garbage is an error.
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Message{}, fmt.Errorf("%w: body is not a JSON object", ErrMalformed)
	}
	if !nestingOK(body) {
		return Message{}, fmt.Errorf("%w: JSON nested deeper than %d", ErrMalformed, maxNesting)
	}
	w := new(wireMessage)
	if err := json.Unmarshal(body, w); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	m := Message{
		V: w.V, Type: w.Type, ID: w.ID, Op: w.Op, DeadlineMS: w.DeadlineMS,
		Outcome: w.Outcome, Reason: w.Reason, Seq: w.Seq, State: w.State,
		Freeze: w.Freeze, HostTimeNS: w.HostTimeNS, Usage: w.Usage, Timing: w.Timing,
	}
	var err error
	if m.Clone, err = w.Clone.clone(); err != nil {
		return Message{}, err
	}
	n := 0
	for n < len(w.Devices) && w.Devices[n].present {
		n++
	}
	for i := n; i < len(w.Devices); i++ {
		if w.Devices[i].present {
			return Message{}, fmt.Errorf("%w: devices: holes", ErrMalformed)
		}
	}
	if n > MaxDevices {
		return Message{}, fmt.Errorf("%w: more than %d devices", ErrMalformed, MaxDevices)
	}
	if n > 0 {
		m.Devices = make([]Device, n)
		for i := range n {
			m.Devices[i] = w.Devices[i].Device
		}
	}
	if err := m.Validate(); err != nil {
		return Message{}, err
	}
	return m, nil
}
