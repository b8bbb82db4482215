package hostd

import (
	"testing"
	"time"
)

// A frame that reached the source's tap shortly before its pause (a
// client's question 6 to 37 ms before it was resent only after the
// client's retransmission timeout in the consolidation test) is passed
// on; one from long before is not.
func TestFramesJustBeforeThePauseArePassedOn(t *testing.T) {
	paused := time.Now()
	tap := &frameTap{}
	tap.keep(capturedFrame{at: paused.Add(-time.Second), data: []byte("old")})
	tap.keep(capturedFrame{at: paused.Add(-37 * time.Millisecond), data: []byte("question")})
	tap.keep(capturedFrame{at: paused.Add(time.Millisecond), data: []byte("during")})
	got := tap.take(forwardFrom(paused))
	if len(got) != 2 || string(got[0]) != "question" || string(got[1]) != "during" {
		t.Fatalf("passed on %q, want the question and the frame during the pause", got)
	}
}
