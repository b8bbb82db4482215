package hostd

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// fakeRelay is a relay whose QEMU end the test holds: qOut is where QEMU
// would write the VM's frames, qIn where it would read the injected ones.
func fakeRelay(t *testing.T, peers ...string) (*peerHold, *frameRelay, net.Conn, net.Conn) {
	h := &peerHold{op: "op", peers: map[string]bool{}, log: slog.Default(), holding: true, since: time.Now()}
	for _, p := range peers {
		h.peers[p] = true
	}
	r := &frameRelay{nic: "n", queue: make(chan []byte, relayQueue), done: make(chan struct{})}
	out, qOutF, err := holdPair()
	if err != nil {
		t.Fatal(err)
	}
	in, qInF, err := holdPair()
	if err != nil {
		t.Fatal(err)
	}
	qOut, _ := net.FileConn(qOutF)
	qIn, _ := net.FileConn(qInF)
	qOutF.Close()
	qInF.Close()
	r.out, r.in = out, in
	h.relays = []*frameRelay{r}
	go r.read(h)
	go r.write()
	t.Cleanup(func() { r.close(); qOut.Close(); qIn.Close() })
	return h, r, qOut, qIn
}

// record is a frame from src as QEMU's filter-redirector writes it, with
// a 12-byte vnet header and a payload byte to tell frames apart.
func record(src string, tag byte) []byte {
	mac, _ := net.ParseMAC(src)
	frame := append(append(make([]byte, 12), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}...), mac...)
	frame = append(frame, 0x08, 0x00, tag)
	rec := binary.BigEndian.AppendUint32(nil, uint32(len(frame)))
	rec = binary.BigEndian.AppendUint32(rec, 12)
	return append(rec, frame...)
}

func readRecord(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("no injected frame: %v", err)
	}
	rec := make([]byte, 8+binary.BigEndian.Uint32(hdr[:4]))
	copy(rec, hdr[:])
	if _, err := io.ReadFull(c, rec[8:]); err != nil {
		t.Fatal(err)
	}
	return rec
}

// A peer's frames wait for the release, then go in before anything
// newer; every other frame goes in at once.
func TestRelayHoldsPeersUntilRelease(t *testing.T) {
	peer, other := "52:54:00:00:00:01", "52:54:00:00:00:02"
	h, _, qOut, qIn := fakeRelay(t, peer)
	for i, src := range []string{peer, other, peer} {
		qOut.Write(record(src, byte(i)))
	}
	if got := readRecord(t, qIn); !bytes.Equal(got, record(other, 1)) {
		t.Fatalf("first injected %x, want the outside frame", got)
	}
	qIn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _ := qIn.Read(make([]byte, 1)); n != 0 {
		t.Fatal("a peer's frame went in while held")
	}
	h.release()
	qOut.Write(record(other, 3))
	for _, want := range [][]byte{record(peer, 0), record(peer, 2), record(other, 3)} {
		if got := readRecord(t, qIn); !bytes.Equal(got, want) {
			t.Fatalf("after the release got %x, want %x", got, want)
		}
	}
}

// A record longer than any frame ends the relay instead of being read.
func TestRelayRefusesOversizedRecord(t *testing.T) {
	_, r, qOut, _ := fakeRelay(t)
	bad := binary.BigEndian.AppendUint32(nil, holdMaxRecord+1)
	qOut.Write(binary.BigEndian.AppendUint32(bad, 12))
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay kept reading after an oversized record")
	}
}

// The hold keeps at most holdMaxFrames of a peer's frames.
func TestRelayBoundsWhatItHolds(t *testing.T) {
	peer := "52:54:00:00:00:01"
	h, r, qOut, _ := fakeRelay(t, peer)
	for i := range holdMaxFrames + 10 {
		qOut.Write(record(peer, byte(i)))
	}
	waitUntil(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(r.held)+r.dropped == holdMaxFrames+10
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(r.held) != holdMaxFrames || r.dropped != 10 {
		t.Fatalf("held %d, dropped %d", len(r.held), r.dropped)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}
