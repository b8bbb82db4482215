package guestproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// frameOf builds a frame around an arbitrary body, valid or not.
func frameOf(body string) []byte {
	b := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(b, uint32(len(body)))
	copy(b[4:], body)
	return b
}

// header is a frame header announcing n bytes, with no body.
func header(n uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, n)
	return b
}

func validMessages() []Message {
	return []Message{
		{V: 1, Type: TypeHello, Seq: 1},
		{V: 1, Type: TypeHelloAck, State: StateIdle},
		{V: 1, Type: TypeHelloAck, State: StateReady, ID: "r-1", Op: OpCheckpoint},
		{V: 1, Type: TypePing, Seq: 42},
		{V: 1, Type: TypePong},
		{V: 1, Type: TypePrepare, ID: "job7.r3", Op: OpMigrate, DeadlineMS: 30000,
			Devices: []Device{{ID: "pt0", MAC: "52:54:00:12:34:56"}, {ID: "gpu0"}}},
		{V: 1, Type: TypePrepare, ID: "mig.1", Op: OpMigrate, DeadlineMS: 60000, Freeze: true},
		{V: 1, Type: TypeReady, ID: "r-1"},
		{V: 1, Type: TypeRefused, ID: "r-1", Reason: "application solver did not reach a safe point"},
		{V: 1, Type: TypeResume, ID: "r-1", Outcome: OutcomeRestored},
		{V: 1, Type: TypeAbort, ID: "r-1", Reason: "peer host refused"},
		{V: 1, Type: TypeAbort, ID: "r-1"},
		{V: 1, Type: TypeDone, ID: "r-1"},
		{V: 2, Type: TypeHello}, // another version is still a frame
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	msgs := validMessages()
	for _, m := range msgs {
		if err := WriteFrame(&buf, m); err != nil {
			t.Fatalf("WriteFrame(%+v): %v", m, err)
		}
	}
	fr := NewFrameReader(&buf)
	for _, want := range msgs {
		got, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("ReadFrame for %s: %v", want.Type, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
		}
	}
	if _, err := fr.ReadFrame(); err != io.EOF {
		t.Errorf("ReadFrame at the end: %v, want io.EOF", err)
	}
}

func TestWriteFrameRejectsInvalid(t *testing.T) {
	bad := []Message{
		{Type: "NOPE"},
		{Type: TypePrepare, ID: "r", Op: OpCheckpoint}, // no deadline
		{Type: TypeRefused, ID: "r"},                   // no reason
		{Type: TypeReady, ID: "has space"},
		{Type: TypeResume, ID: "r", Outcome: "maybe"},
		{Type: TypePing, ID: "r"},
	}
	for _, m := range bad {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, m); !errors.Is(err, ErrMalformed) {
			t.Errorf("WriteFrame(%+v) = %v, want ErrMalformed", m, err)
		}
		if buf.Len() != 0 {
			t.Errorf("WriteFrame(%+v) wrote %d bytes of an invalid message", m, buf.Len())
		}
	}
	long := Message{Type: TypeRefused, ID: "r", Reason: strings.Repeat("é", MaxReason)}
	if err := WriteFrame(io.Discard, long); !errors.Is(err, ErrMalformed) {
		t.Errorf("over-long reason: %v, want ErrMalformed", err)
	}
	long.Reason = TruncateReason(long.Reason)
	if err := WriteFrame(io.Discard, long); err != nil {
		t.Errorf("TruncateReason'd reason: %v", err)
	}
}

func TestReadFrameRejects(t *testing.T) {
	devs := make([]string, MaxDevices+1)
	for i := range devs {
		devs[i] = `{"id":"d"}`
	}
	cases := []struct {
		name  string
		in    []byte
		want  error
		extra error // also matched, if set
	}{
		{"zero length", header(0), ErrMalformed, nil},
		{"4 GiB announced", header(0xFFFFFFFF), ErrMalformed, ErrFrameTooLarge},
		{"MaxFrame+1 announced", header(MaxFrame + 1), ErrFrameTooLarge, ErrMalformed},
		{"garbage", frameOf("\x00\x01garbage"), ErrMalformed, nil},
		{"not an object", frameOf(`["v",1]`), ErrMalformed, nil},
		{"truncated JSON", frameOf(`{"v":1,"type":"PI`), ErrMalformed, nil},
		{"trailing garbage", frameOf(`{"v":1,"type":"PING"} x`), ErrMalformed, nil},
		{"unknown type", frameOf(`{"v":1,"type":"REBOOT"}`), ErrMalformed, nil},
		{"no version", frameOf(`{"type":"PING"}`), ErrMalformed, nil},
		{"string version", frameOf(`{"v":"1","type":"PING"}`), ErrMalformed, nil},
		{"prepare of version 2", frameOf(`{"v":2,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5}`), ErrVersion, nil},
		{"prepare without id", frameOf(`{"v":1,"type":"PREPARE","op":"checkpoint","deadline_ms":5}`), ErrMalformed, nil},
		{"prepare bad op", frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"reboot","deadline_ms":5}`), ErrMalformed, nil},
		{"prepare zero deadline", frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint"}`), ErrMalformed, nil},
		{"prepare negative deadline", frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":-1}`), ErrMalformed, nil},
		{"prepare bad mac", frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5,"devices":[{"id":"pt0","mac":"52:54"}]}`), ErrMalformed, nil},
		{"prepare null device", frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5,"devices":[null]}`), ErrMalformed, nil},
		{"prepare too many devices", frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5,"devices":[` + strings.Join(devs, ",") + `]}`), ErrMalformed, nil},
		{"devices not an array", frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5,"devices":7}`), ErrMalformed, nil},
		{"ready with outcome", frameOf(`{"v":1,"type":"READY","id":"r","outcome":"restored"}`), ErrMalformed, nil},
		{"refused without reason", frameOf(`{"v":1,"type":"REFUSED","id":"r"}`), ErrMalformed, nil},
		{"resume bad outcome", frameOf(`{"v":1,"type":"RESUME","id":"r","outcome":"fine"}`), ErrMalformed, nil},
		{"hello_ack pending while idle", frameOf(`{"v":1,"type":"HELLO_ACK","state":"idle","id":"r","op":"checkpoint"}`), ErrMalformed, nil},
		{"hello_ack id without op", frameOf(`{"v":1,"type":"HELLO_ACK","state":"ready","id":"r"}`), ErrMalformed, nil},
		{"id with newline", frameOf(`{"v":1,"type":"DONE","id":"r\n1"}`), ErrMalformed, nil},
		{"deep nesting", frameOf(`{"v":1,"type":"PING","x":` + strings.Repeat("[", 5000) + `}`), ErrMalformed, nil},
		{"truncated body", header(100), io.ErrUnexpectedEOF, nil},
		{"truncated header", []byte{0, 0}, io.ErrUnexpectedEOF, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(c.in))
			if !errors.Is(err, c.want) {
				t.Fatalf("ReadFrame = %v, want %v", err, c.want)
			}
			if c.extra != nil && !errors.Is(err, c.extra) {
				t.Fatalf("ReadFrame = %v, want it to match %v too", err, c.extra)
			}
		})
	}
}

func TestReadFrameSizeLimit(t *testing.T) {
	// Exactly MaxFrame is accepted (padding is JSON whitespace)...
	msg := `{"v":1,"type":"PING","seq":3}`
	body := msg + strings.Repeat(" ", MaxFrame-len(msg))
	m, err := ReadFrame(bytes.NewReader(frameOf(body)))
	if err != nil || m.Type != TypePing || m.Seq != 3 {
		t.Fatalf("frame of exactly MaxFrame: %+v, %v", m, err)
	}
	// ...one more byte is not, and nothing past the header is read.
	r := &countingReader{r: bytes.NewReader(frameOf(body + " "))}
	if _, err := ReadFrame(r); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("MaxFrame+1: %v, want ErrFrameTooLarge", err)
	}
	if r.n != 4 {
		t.Errorf("read %d bytes of an oversized frame, want only the 4-byte header", r.n)
	}
}

// A peer announcing a huge frame must not make the reader allocate it.
func TestReadFrameDoesNotAllocateAnnouncedLength(t *testing.T) {
	in := append(header(0xFFFFFFF0), make([]byte, 1024)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		if _, err := ReadFrame(bytes.NewReader(in)); !errors.Is(err, ErrFrameTooLarge) {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 100*1024 {
		t.Errorf("100 oversized frames allocated %d bytes", d)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestResyncFindsNextHello(t *testing.T) {
	hello, _ := Encode(Message{Type: TypeHello, Seq: 5})
	helloNoSeq, _ := Encode(Message{Type: TypeHello})
	ack, _ := Encode(Message{Type: TypeHelloAck, State: StateIdle})
	for _, h := range [][]byte{hello, helloNoSeq} {
		var in []byte
		in = append(in, 0, 0, 0x10, 0x00, '{', '"', 'v') // a frame cut short by a dying host
		in = append(in, ack[:10]...)                     // a HELLO_ACK head is no HELLO
		in = append(in, ack...)                          // nor a whole one
		in = append(in, h...)
		br := bufio.NewReaderSize(bytes.NewReader(in), 64)
		if err := Resync(br); err != nil {
			t.Fatalf("Resync: %v", err)
		}
		m, err := ReadFrame(br)
		if err != nil || m.Type != TypeHello {
			t.Fatalf("after Resync: %+v, %v", m, err)
		}
	}
	if err := Resync(bufio.NewReader(bytes.NewReader([]byte("no hello here at all, sorry")))); err != io.EOF {
		t.Errorf("Resync without a HELLO: %v, want io.EOF", err)
	}
}
