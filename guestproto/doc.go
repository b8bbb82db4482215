// Package guestproto is the wire protocol between hostd (on the host) and
// guestd (in the VM), and the host side of it. Both sides import it, so the
// framing, the message schema and its validation live in exactly one place.
//
// # Framing
//
// A frame is a 4-byte big-endian length followed by that many bytes of JSON
// (one Message). A length of 0 is malformed and a length above MaxFrame is
// ErrFrameTooLarge (which also matches ErrMalformed); in both cases the
// reader returns before allocating or reading the body, so a peer cannot make
// the other side allocate more than MaxFrame for a frame. After a framing
// error the stream is out of sync and the channel must be dropped (the guest,
// on virtio-serial, instead resynchronises on the next HELLO).
//
// # Messages
//
// Every message carries "v" (Version) and "type". HELLO and HELLO_ACK may
// carry another version (that is how a mismatch is detected: ErrVersion);
// every other message must be of this Version. Unknown types and invalid or
// misplaced fields are ErrMalformed. Unknown JSON keys are ignored.
//
//	HELLO      host->guest  first frame of every host connection
//	HELLO_ACK  guest->host  state; id+op of the round in flight if state is "ready"
//	PING/PONG  both ways    heartbeat; PONG echoes the PING's seq
//	PREPARE    host->guest  id, op, deadline_ms, devices: reach a safe point;
//	                        freeze (op "migrate" only): also freeze the guest's
//	                        processes that do not depend on the outside world
//	READY      guest->host  id: safe point reached, devices may go;
//	                        took_ns, apps_ns (optional): the guest's time from
//	                        PREPARE, and its applications' own part (Timing)
//	REFUSED    guest->host  id, reason: the round is over, nothing changed
//	RESUME     host->guest  id, outcome: the operation is over, undo the hand-off;
//	                        host_time_ns: the host's clock, which the guest steps to
//	ABORT      host->guest  id, reason: cancel a PREPARE or a READY round
//	DONE       guest->host  id: RESUME/ABORT handled (also for unknown ids)
//
// # Order of a round (what the host must do)
//
//  1. Connect, Handshake. If HelloAck.State is "ready", the guest is still
//     in round PendingID from before the connection (a restore, a migration
//     or a hostd restart): finish that round first with Resume(PendingID,
//     outcome) or Abort. "preparing" or "finishing" (rare: the guest was
//     still ending earlier work after waiting 5 s for it) means: Handshake
//     again a few seconds later.
//  2. Prepare. On READY the guest is at a safe point and its network no longer
//     uses the listed devices. On ErrRefused the guest has already ended the
//     round itself (no ABORT is needed). On any other error (deadline, closed
//     channel) the host must Abort(id) (after a reconnect and Handshake if the
//     channel died) so that the guest undoes its hand-off. With
//     Prepare.Freeze (dependency-aware migration, op "migrate" only), READY
//     also means the guest has frozen its processes that do not depend on
//     the outside world; they stay frozen until Resume or Abort (or the
//     guest's own time limit), and a guest without its taint tracker
//     answers REFUSED.
//  3. Detach the devices, stop/save/migrate, re-attach devices.
//  4. Resume(id, outcome) on whatever connection now reaches the guest:
//     "checkpointed" (same VM goes on), "restored" (a new VM from the
//     checkpoint: new connection, Handshake reports the round), "migrated" /
//     "rejuvenated" (on the destination, after Handshake), "failed" (the
//     operation went wrong after READY; devices may or may not be back).
//     Abort(id) before anything was detached. The guest answers DONE once its
//     NICs, hook scripts and applications have been told; give Resume a
//     context of at least the guest's NIC wait (10 s) plus its hook time.
//
// # Host
//
// Host owns one channel: one goroutine reads (bounded frames, a rate limit
// on inbound frames), one writes (with write deadlines where the transport
// has them), and one request (Handshake, Prepare, Resume, Abort) is in flight
// at a time. A guest that sends garbage, a type it must never send, a reply
// for an id it was never asked about, or floods frames gets its channel
// closed: Done is closed and Err says why. Until the handshake succeeds the
// host drops every frame but HELLO_ACK (and the guest every frame but HELLO):
// on virtio-serial a new connection may still carry the previous one's tail.
package guestproto
