package guestproto

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func validClone() Message {
	return Message{V: 1, Type: TypeClone, ID: "c1", HostTimeNS: MinHostTimeNS + 1, Clone: &Clone{
		Seed: strings.Repeat("ab", 64), MachineID: strings.Repeat("0f", 16), Hostname: "vm-1.example",
		NICs: []CloneNIC{{OldMAC: "52:54:00:00:00:01", MAC: "52:54:5a:00:00:02", IP: "10.0.0.2/24"}},
	}}
}

func TestCloneRoundTrip(t *testing.T) {
	for _, standby := range []bool{false, true} {
		m := validClone()
		m.Clone.Standby = standby
		f, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadFrame(bytes.NewReader(f))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip: got %+v, want %+v", got, m)
		}
	}
}

// Every field of a CLONE is checked, on both sides.
func TestCloneRejected(t *testing.T) {
	for name, change := range map[string]func(*Message){
		"no clone":        func(m *Message) { m.Clone = nil },
		"short seed":      func(m *Message) { m.Clone.Seed = "abcd" },
		"seed not hex":    func(m *Message) { m.Clone.Seed = strings.Repeat("zz", 64) },
		"long seed":       func(m *Message) { m.Clone.Seed = strings.Repeat("00", MaxCloneSeed+1) },
		"machine-id":      func(m *Message) { m.Clone.MachineID = strings.Repeat("0F", 16) },
		"hostname":        func(m *Message) { m.Clone.Hostname = "a b" },
		"hostname dash":   func(m *Message) { m.Clone.Hostname = "-a" },
		"hostname empty":  func(m *Message) { m.Clone.Hostname = "a..b" },
		"hostname long":   func(m *Message) { m.Clone.Hostname = strings.Repeat("a", MaxHostname+1) },
		"mac":             func(m *Message) { m.Clone.NICs[0].MAC = "52:54:00:00:00" },
		"old mac":         func(m *Message) { m.Clone.NICs[0].OldMAC = "" },
		"ip":              func(m *Message) { m.Clone.NICs[0].IP = "10.0.0.300/24" },
		"host time":       func(m *Message) { m.HostTimeNS = 1 },
		"clone on resume": func(m *Message) { m.Type, m.Outcome = TypeResume, OutcomeRestored },
		"too many nics": func(m *Message) {
			for range MaxCloneNICs {
				m.Clone.NICs = append(m.Clone.NICs, m.Clone.NICs[0])
			}
		},
	} {
		m := validClone()
		change(&m)
		if _, err := Encode(m); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Encode: %v", name, err)
		}
	}
}

// The guest decodes at most MaxCloneNICs NICs, whatever the frame holds.
func TestCloneDecodeBounded(t *testing.T) {
	body := `{"v":1,"type":"CLONE","id":"c1","clone":{"seed":"` + strings.Repeat("ab", 32) +
		`","machine_id":"` + strings.Repeat("0f", 16) + `","hostname":"h","nics":[` +
		strings.Repeat(`{"old_mac":"52:54:00:00:00:01","mac":"52:54:00:00:00:02"},`, 50) + `{}]}}`
	if _, err := decode([]byte(body)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("51 nics: %v", err)
	}
	body = strings.Replace(body, strings.Repeat(`{"old_mac":"52:54:00:00:00:01","mac":"52:54:00:00:00:02"},`, 50)+`{}`,
		`{"old_mac":"52:54:00:00:00:01","mac":"52:54:00:00:00:02"}`, 1)
	m, err := decode([]byte(body))
	if err != nil || len(m.Clone.NICs) != 1 {
		t.Fatalf("one nic: %+v %v", m.Clone, err)
	}
}
