package guestproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime"
	"testing"
)

// allocBound is what one ReadFrame may allocate, whatever the input: the
// body buffer (at most MaxFrame), the decoded strings (at most about twice
// the body for escape-heavy strings) and small constants. It does not depend
// on the announced length.
const allocBound = 4 * MaxFrame

// FuzzReadFrame checks that the decoder never panics, never reads past one
// frame, never allocates more than allocBound, and that whatever it accepts
// re-encodes to the same message. Seeds: testdata/fuzz/FuzzReadFrame plus
// the frames below.
func FuzzReadFrame(f *testing.F) {
	for _, m := range validMessages() {
		b, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(header(0))
	f.Add(header(0xFFFFFFFF))
	f.Add(frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5,"devices":[{},{},{}]}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		r := &countingReader{r: bytes.NewReader(data)}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		m, err := ReadFrame(r)
		runtime.ReadMemStats(&after)

		if d := after.TotalAlloc - before.TotalAlloc; d > allocBound {
			t.Fatalf("ReadFrame of %d bytes allocated %d bytes (bound %d)", len(data), d, allocBound)
		}
		if r.n > 4+MaxFrame {
			t.Fatalf("ReadFrame consumed %d bytes, more than one maximal frame", r.n)
		}
		if len(data) >= 4 {
			if n := binary.BigEndian.Uint32(data); (n == 0 || n > MaxFrame) && r.n != 4 {
				t.Fatalf("header announces %d: consumed %d bytes, want 4", n, r.n)
			}
		}
		if err != nil {
			for _, ok := range []error{ErrMalformed, ErrVersion, io.EOF, io.ErrUnexpectedEOF} {
				if errors.Is(err, ok) {
					return
				}
			}
			t.Fatalf("ReadFrame: error of no known class: %v", err)
		}
		frame, err := Encode(m)
		if err != nil {
			t.Fatalf("accepted %+v but cannot encode it: %v", m, err)
		}
		m2, err := ReadFrame(bytes.NewReader(frame))
		if err != nil {
			t.Fatalf("re-read of %q: %v", frame, err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip differs:\n%+v\n%+v", m, m2)
		}
	})
}
