package guestproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxFrame is the largest frame body accepted or sent, in bytes.
const MaxFrame = 64 << 10

// Errors. Callers check them with errors.Is; the returned errors wrap them
// with context.
var (
	// ErrMalformed: a frame or message that does not follow the protocol.
	ErrMalformed = errors.New("guestproto: malformed frame")
	// ErrFrameTooLarge: a frame length above MaxFrame. Errors wrapping it
	// also match ErrMalformed.
	ErrFrameTooLarge = errors.New("guestproto: frame too large")
	// ErrVersion: the peer speaks another protocol version.
	ErrVersion = errors.New("guestproto: protocol version mismatch")
	// ErrRefused: the guest answered PREPARE with REFUSED (see RefusedError).
	ErrRefused = errors.New("guestproto: guest refused")
	// ErrClosed: the channel is closed or died (Host.Err says why).
	ErrClosed = errors.New("guestproto: channel closed")
	// ErrNoHandshake: a request was made before a successful Handshake.
	ErrNoHandshake = errors.New("guestproto: no handshake")
	// ErrFlood: the peer sent frames faster than the protocol ever needs.
	ErrFlood = errors.New("guestproto: peer floods frames")
	// ErrUnexpected: the peer sent a message it must never send, or a reply
	// to something never asked.
	ErrUnexpected = errors.New("guestproto: unexpected message")
)

// FrameReader reads frames from a stream. It reuses one buffer, which never
// grows beyond MaxFrame, so a long-lived channel allocates the frame buffer
// once. It is not safe for concurrent use.
type FrameReader struct {
	r   io.Reader
	hdr [4]byte
	buf []byte
}

// NewFrameReader returns a FrameReader reading from r.
func NewFrameReader(r io.Reader) *FrameReader { return &FrameReader{r: r} }

// ReadFrame reads and validates one frame. At a frame boundary, a stream that
// ends returns io.EOF; one that ends inside a frame returns
// io.ErrUnexpectedEOF. A frame error (ErrMalformed, ErrFrameTooLarge,
// ErrVersion) leaves the stream position undefined.
func (fr *FrameReader) ReadFrame() (Message, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return Message{}, err
	}
	n := binary.BigEndian.Uint32(fr.hdr[:])
	switch {
	case n == 0:
		return Message{}, fmt.Errorf("%w: zero-length frame", ErrMalformed)
	case n > MaxFrame:
		// Checked before any allocation or read of the body: a peer
		// announcing 4 GiB gets nothing from us.
		return Message{}, fmt.Errorf("%w: %w: length %d > %d", ErrMalformed, ErrFrameTooLarge, n, MaxFrame)
	}
	if uint32(cap(fr.buf)) < n {
		fr.buf = make([]byte, n)
	}
	body := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Message{}, err
	}
	return decode(body)
}

// ReadFrame reads one frame from r (see FrameReader.ReadFrame). It allocates
// at most the frame's actual length, never the announced one beyond
// MaxFrame.
func ReadFrame(r io.Reader) (Message, error) {
	return NewFrameReader(r).ReadFrame()
}

// Encode validates m and returns it as one frame: header and body. A zero V
// means Version.
func Encode(m Message) ([]byte, error) {
	if m.V == 0 {
		m.V = Version
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.Type, err)
	}
	if len(body) > MaxFrame {
		return nil, fmt.Errorf("encode %s: %w: %d bytes", m.Type, ErrFrameTooLarge, len(body))
	}
	frame := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	copy(frame[4:], body)
	return frame, nil
}

// WriteFrame validates m and writes it as one frame with a single Write, so
// that a frame is never interleaved with another writer's or split by us.
func WriteFrame(w io.Writer, m Message) error {
	frame, err := Encode(m)
	if err != nil {
		return err
	}
	_, err = w.Write(frame)
	return err
}

// helloPrefix is how every HELLO that WriteFrame encodes begins (encoding/json
// writes fields in struct order), what Resync looks for.
var helloPrefix = []byte(`{"v":1,"type":"HELLO"`)

// Resync skips bytes until br is at the start of a HELLO frame as this
// package encodes it. A reader that met a framing error on a stream it cannot
// close (virtio-serial, where a host that died mid-frame is followed by the
// next host on the same port) calls it to find the next host's first frame.
// It returns br's error (e.g. io.EOF, a read deadline).
func Resync(br *bufio.Reader) error {
	need := 4 + len(helloPrefix) + 1
	for {
		b, err := br.Peek(need)
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(b)
		if n >= uint32(len(helloPrefix)+1) && n <= MaxFrame &&
			bytes.Equal(b[4:4+len(helloPrefix)], helloPrefix) &&
			(b[need-1] == ',' || b[need-1] == '}') {
			return nil
		}
		if _, err := br.Discard(1); err != nil {
			return err
		}
	}
}
