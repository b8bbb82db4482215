package guestd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/symvirt/symvirt/guestproto"
)

// Host channel errors.
var (
	// ErrNoPort: no virtio-serial port of the configured name.
	ErrNoPort = errors.New("guestd: virtio-serial port not found")
	// ErrHostSilent: a socket host sent nothing (not even a PING) for too
	// long; its connection is closed.
	ErrHostSilent = errors.New("guestd: host silent")
)

const (
	writeTimeout = 5 * time.Second
	// The host needs a handful of frames per round plus heartbeats; far
	// above that is a broken or hostile host.
	inboundRate  = 100
	inboundBurst = 200
	// eofPoll is how often a virtio-serial port with no host behind it (it
	// reads as EOF) is tried again.
	eofPoll = 200 * time.Millisecond
	// takeoverWait is how long a new host connection waits for the current
	// one to end (a host that just hung up) before it is refused.
	takeoverWait = 2 * time.Second
	// defaultHostSilence: a socket host that sends nothing for this long
	// (hostd PINGs every guestproto.DefaultPingInterval) is gone, and its
	// connection no longer keeps the next host out.
	defaultHostSilence = 3 * guestproto.DefaultPingInterval
)

func (a *agent) serveChannel(ctx context.Context, kind, path string) error {
	switch kind {
	case "virtio-serial":
		return a.serveVirtio(ctx)
	case "vsock":
		ln, err := vsock.Listen(a.cfg.VsockPort, nil)
		if err != nil {
			return fmt.Errorf("guestd: vsock port %d: %w", a.cfg.VsockPort, err)
		}
		a.log.Info("listening on vsock", "port", a.cfg.VsockPort)
		return a.serveListener(ctx, ln, vsockHostPeer)
	case "unix":
		if err := removeStaleSocket(path); err != nil {
			return err
		}
		ln, err := listenUnixMode(path, 0o600, -1)
		if err != nil {
			return fmt.Errorf("guestd: channel socket: %w", err)
		}
		defer os.Remove(path)
		a.log.Info("listening on unix socket", "path", path)
		// The socket is 0600: whoever connects is root already.
		return a.serveListener(ctx, ln, nil)
	}
	return fmt.Errorf("guestd: unknown channel kind %q", kind)
}

// serveListener serves one host connection at a time. admit (if not nil)
// vets each peer's address first. A new connection never replaces a live
// one, or any local user able to connect could cut hostd off mid-round (or
// take its place): it waits briefly for the current one to end (a host that
// just hung up; after a restore or migration the guest kernel resets vsock
// connections) and is refused otherwise. A host that died without a word
// ends its connection by falling silent (cfg.hostSilence).
func (a *agent) serveListener(ctx context.Context, ln net.Listener, admit func(net.Addr) error) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var cur net.Conn
	var curDone chan struct{}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			a.log.Warn("accept", "err", err)
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		if err := a.admitHost(ctx, c, admit, curDone); err != nil {
			a.log.Warn("host connection refused", "peer", c.RemoteAddr(), "err", err)
			c.Close()
			continue
		}
		cur, curDone = c, make(chan struct{})
		go func(c net.Conn, done chan struct{}) {
			defer close(done)
			err := a.serveStream(ctx, c, func() { c.Close() }, false)
			c.Close()
			a.log.Info("host connection closed", "err", err)
		}(c, curDone)
	}
	if cur != nil {
		cur.Close()
		<-curDone
	}
	return nil
}

// admitHost decides whether new connection c may be served: its peer must
// pass admit, and the current connection (curDone not yet closed) must end
// within takeoverWait.
func (a *agent) admitHost(ctx context.Context, c net.Conn, admit func(net.Addr) error, curDone <-chan struct{}) error {
	if admit != nil {
		if err := admit(c.RemoteAddr()); err != nil {
			return err
		}
	}
	if curDone == nil {
		return nil
	}
	t := time.NewTimer(takeoverWait)
	defer t.Stop()
	select {
	case <-curDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%w: the current host connection is live", ErrChannelBusy)
	}
}

// findVirtioPort finds the device node of the named virtio-serial port: the
// /dev/virtio-ports/NAME link if udev (or the test guest's hotplug script)
// made one, else the vportNpM whose sysfs name matches.
func findVirtioPort(root, name string) (string, error) {
	link := filepath.Join(root, "dev/virtio-ports", name)
	if _, err := os.Stat(link); err == nil {
		return link, nil
	}
	dir := filepath.Join(root, "sys/class/virtio-ports")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrNoPort, name, err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Join(root, "dev", e.Name())
		if _, err := os.Stat(dev); err != nil {
			return "", fmt.Errorf("%w: %s is %s but %s: %v", ErrNoPort, name, e.Name(), dev, err)
		}
		return dev, nil
	}
	return "", fmt.Errorf("%w: %s", ErrNoPort, name)
}

// serveVirtio serves the virtio-serial port until ctx ends. The port
// outlives host connections: it reads as EOF while no host is connected
// (between a checkpoint and a restore, during a migration), so EOF means
// "poll again", not "exit"; a partial frame is dropped with the EOF.
func (a *agent) serveVirtio(ctx context.Context) error {
	lastErr := ""
	for ctx.Err() == nil {
		path, err := findVirtioPort(a.cfg.SysRoot, a.cfg.PortName)
		var f *os.File
		if err == nil {
			f, err = openPort(path)
		}
		if err != nil {
			if err.Error() != lastErr {
				a.log.Warn("virtio-serial port not available; retrying", "err", err)
				lastErr = err.Error()
			}
			sleepCtx(ctx, time.Second)
			continue
		}
		lastErr = ""
		a.log.Info("virtio-serial port open", "path", path)
		pw, unwatch := watchHostConnect(f, a.cfg.eofPoll, a.log)
		a.portWait = pw
		for ctx.Err() == nil {
			err := a.serveStream(ctx, f, func() {
				if f.SetReadDeadline(time.Now()) != nil {
					f.Close() // not pollable: the only way to stop the read
				}
			}, true)
			_ = f.SetReadDeadline(time.Time{})
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, guestproto.ErrFlood) {
				sleepCtx(ctx, eofPoll)
				continue
			}
			a.log.Warn("virtio-serial port failed; reopening", "err", err)
			break
		}
		unwatch()
		f.Close()
		sleepCtx(ctx, eofPoll)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// inbound is one thing the reader saw: a frame, or garbage (virtio-serial
// only; the reader then resynchronises on the next HELLO).
type inbound struct {
	m       guestproto.Message
	garbage error
}

// serveStream runs host sessions over one byte stream until it ends (read
// error, EOF, ctx) or, on a socket, the host breaks the protocol. interrupt
// must unblock a pending Read. On virtio-serial (virtio true) garbage, a
// flood or a write error only end the session: the next HELLO starts anew.
func (a *agent) serveStream(ctx context.Context, rw io.ReadWriter, interrupt func(), virtio bool) error {
	br := bufio.NewReaderSize(rw, 4096)
	frames := make(chan inbound)
	readErr := make(chan error, 1)
	writeErr := make(chan writeFailure, 16)
	st := &stream{a: a, virtio: virtio, out: make(chan outFrame, 64),
		lim: guestproto.NewLimiter(inboundRate, inboundBurst)}
	stop := make(chan struct{})
	var wake *portWait
	if virtio {
		wake = a.portWait
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); readFrames(rw, br, virtio, wake, frames, readErr, stop) }()
	go func() { defer wg.Done(); writeFrames(rw, st.out, writeErr, stop) }()
	defer func() {
		st.endSess(errSessionEnded)
		close(stop)
		interrupt()
		wg.Wait()
	}()
	var tick <-chan time.Time
	if a.cfg.Heartbeat > 0 {
		t := time.NewTicker(a.cfg.Heartbeat)
		defer t.Stop()
		tick = t.C
	}
	// On a socket, a host that falls silent is gone: virtio-serial has no
	// such notion (the port outlives hosts), and no one else can take it.
	var silent <-chan time.Time
	var silence *time.Timer
	if !virtio && a.cfg.hostSilence > 0 {
		silence = time.NewTimer(a.cfg.hostSilence)
		defer silence.Stop()
		silent = silence.C
	}
	for {
		if st.sess != nil && st.sess.ctx.Err() != nil { // ended by send (host not reading)
			if !virtio {
				return context.Cause(st.sess.ctx)
			}
			st.endSess(context.Cause(st.sess.ctx))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-silent:
			return fmt.Errorf("%w: nothing from the host for %v", ErrHostSilent, a.cfg.hostSilence)
		case err := <-readErr:
			return err
		case wf := <-writeErr:
			if !virtio {
				return fmt.Errorf("write: %w", wf.err)
			}
			if wf.sess != st.sess {
				// A frame of a session a HELLO has ended since (a
				// PING queued while no host was there): the new
				// host's session goes on.
				a.log.Debug("virtio-serial write of an ended session failed", "session", wf.sess.id, "err", wf.err)
				continue
			}
			a.log.Warn("virtio-serial write failed: host gone?", "err", wf.err)
			st.endSess(wf.err)
		case <-tick:
			st.ping()
		case in := <-frames:
			if silence != nil {
				silence.Reset(a.cfg.hostSilence)
			}
			if err := st.frame(in); err != nil {
				return err
			}
		}
	}
}

// stream is serveStream's state: the session of the host on it.
type stream struct {
	a      *agent
	virtio bool
	out    chan outFrame
	lim    *guestproto.Limiter
	sess   *session
	seq    uint64
}

func (st *stream) endSess(cause error) {
	if st.sess != nil {
		st.a.endSession(st.sess, cause)
		st.sess = nil
	}
}

func (st *stream) ping() {
	if st.sess != nil {
		st.seq++
		st.sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypePing, Seq: st.seq})
	}
}

// frame handles what the reader saw. An error ends the stream (a socket
// host breaking the protocol); on virtio-serial it only ends the session.
func (st *stream) frame(in inbound) error {
	a := st.a
	if in.garbage != nil {
		a.log.Warn("garbage from the host: waiting for the next HELLO", "err", in.garbage)
		st.endSess(in.garbage)
		return nil
	}
	if !st.lim.Allow(time.Now()) {
		err := fmt.Errorf("%w: more than %d frames at once", guestproto.ErrFlood, inboundBurst)
		if !st.virtio {
			return err
		}
		st.endSess(err)
		return nil
	}
	if in.m.Type == guestproto.TypeHello {
		// The old session ends first, but is logged after the answer:
		// every round starts with a HELLO, and the host waits for it.
		old := st.sess
		if old != nil {
			a.mu.Lock()
			old.end(errNewHost)
			a.mu.Unlock()
		}
		st.sess = a.newSession(st.out)
		a.hello(st.sess)
		if old != nil {
			old.log.Info("host session ended", "cause", errNewHost)
		}
		if in.m.V != guestproto.Version {
			a.log.Warn("host speaks another protocol version", "host", in.m.V, "guest", guestproto.Version)
		}
		return nil
	}
	if st.sess == nil {
		a.log.Debug("frame before HELLO dropped", "type", in.m.Type, "id", in.m.ID)
		return nil
	}
	if err := a.handle(st.sess, in.m); err != nil {
		a.log.Warn("host broke the protocol", "err", err)
		if !st.virtio {
			return err
		}
		st.endSess(err)
	}
	return nil
}

// readFrames passes each frame read from br to frames until a read error
// (sent on readErr) or stop. On virtio-serial an EOF only means no host
// right now, and malformed frames are passed on as garbage, then skipped.
// A port at EOF is read again when wake fires (a host connected: see
// portwake.go) or, failing that, after eofPoll.
func readFrames(rw io.Reader, br *bufio.Reader, virtio bool, wake *portWait, frames chan<- inbound, readErr chan<- error, stop <-chan struct{}) {
	fr := guestproto.NewFrameReader(br)
	for {
		m, err := fr.ReadFrame()
		if err != nil && virtio && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			// No host right now. The session is kept: the notice
			// that the previous host left can arrive after the next
			// host's HELLO (control and data queues are not ordered),
			// and every new host starts with a HELLO anyway. A
			// partial frame goes with the EOF.
			br.Reset(rw)
			if !wake.wait(stop) {
				return
			}
			continue
		}
		in := inbound{m: m}
		if err != nil {
			if !virtio || !(errors.Is(err, guestproto.ErrMalformed) || errors.Is(err, guestproto.ErrVersion)) {
				readErr <- err
				return
			}
			in.garbage = err
		}
		select {
		case frames <- in:
		case <-stop:
			return
		}
		if in.garbage != nil {
			if err := guestproto.Resync(br); err != nil {
				readErr <- err
				return
			}
		}
	}
}

// writeFrames writes each queued frame, with a deadline where the stream
// has one; a failed write is reported on writeErr (once pending).
func writeFrames(rw io.Writer, out <-chan outFrame, writeErr chan<- writeFailure, stop <-chan struct{}) {
	dl, _ := rw.(interface{ SetWriteDeadline(time.Time) error })
	for {
		select {
		case f := <-out:
			if f.sess.ctx.Err() != nil {
				continue // its host is gone; the next one would drop it
			}
			if dl != nil {
				_ = dl.SetWriteDeadline(time.Now().Add(writeTimeout))
			}
			if _, err := rw.Write(f.b); err != nil {
				select {
				case writeErr <- writeFailure{err, f.sess}:
				default:
				}
			}
		case <-stop:
			return
		}
	}
}

// writeFailure is a write that failed and the session whose frame it was.
type writeFailure struct {
	err  error
	sess *session
}
