package guestd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Hook socket protocol limits.
const (
	MaxHookLine     = 4096 // bytes, without the newline
	maxHookConns    = 256  // a local fork bomb must not exhaust our fds
	hookWriteTimout = 5 * time.Second
	maxAppName      = 64
)

// Hook socket errors.
var (
	// ErrNoRound: WaitSynced without a pending round.
	ErrNoRound = errors.New("guestd: no round pending")
	// ErrRoundEnded: the round waited for ended (Finish or a new Begin).
	ErrRoundEnded = errors.New("guestd: round ended while waiting")
	// ErrNotSynced: applications did not call SYNC in time (NotSyncedError).
	ErrNotSynced = errors.New("guestd: applications did not reach a safe point")
	// ErrSocketInUse: another live server listens on the hook socket.
	ErrSocketInUse = errors.New("guestd: hook socket in use")
)

// NotSyncedError names the registered applications that had not called SYNC
// when WaitSynced's context ended. It matches ErrNotSynced and the context's
// error (context.DeadlineExceeded or context.Canceled).
type NotSyncedError struct {
	Apps []string // "name (pid N)"
	Err  error    // the context's error
}

// Reason is the REFUSED reason: "application X did not reach a safe point".
func (e *NotSyncedError) Reason() string {
	if len(e.Apps) == 1 {
		return "application " + e.Apps[0] + " did not reach a safe point"
	}
	return "applications " + strings.Join(e.Apps, ", ") + " did not reach a safe point"
}

func (e *NotSyncedError) Error() string { return "guestd: " + e.Reason() + ": " + e.Err.Error() }

// Unwrap returns ErrNotSynced and the context's error.
func (e *NotSyncedError) Unwrap() []error { return []error{ErrNotSynced, e.Err} }

// HookServer serves the hook socket applications use to learn about rounds
// and to report safe points. See the package documentation for the line
// protocol.
type HookServer struct {
	path string
	ln   *net.UnixListener
	log  *slog.Logger
	quit chan struct{}
	wg   sync.WaitGroup

	opts hookOptions

	mu      sync.Mutex
	closed  bool
	conns   map[*hookConn]struct{}
	perUID  map[uint32]int // connections per peer uid
	cur     *hookRound     // the pending round, nil if none
	changed chan struct{}  // closed and replaced on every state change
}

// hookRound is one round as the hook socket sees it.
type hookRound struct {
	op, id  string
	done    chan struct{} // closed by Finish
	outcome string        // set before done is closed
	begun   time.Time     // when Begin made it pending
	apps    time.Duration // the longest own time of a registered SYNC (hooktiming.go)
}

// hookConn is one client. Fields after c are guarded by HookServer.mu.
type hookConn struct {
	c       *net.UnixConn
	peerPID int    // from SO_PEERCRED, for logs; 0 if unknown
	peerUID uint32 // from SO_PEERCRED; unknownUID if unknown

	name       string
	pid        int
	registered bool
	synced     bool       // SYNCed in the current round
	seen       bool       // was told PENDING of the current round
	told       time.Time  // a WAIT blocked at Begin was answered PENDING (hooktiming.go)
	missed     *hookRound // an aborted round it was part of but did not SYNC
}

func (c *hookConn) label() string {
	if c.registered {
		return fmt.Sprintf("%s (pid %d)", c.name, c.pid)
	}
	return fmt.Sprintf("unregistered client (pid %d)", c.peerPID)
}

// NewHookServer listens on path: it creates the parent directory, replaces a
// stale socket (one nobody listens on) and makes the socket mode 0660 (in
// the group WithHookGroup gives). A socket another server answers on is
// ErrSocketInUse; a non-socket file at path is an error, not deleted.
func NewHookServer(path string, logger *slog.Logger, opts ...HookOption) (*HookServer, error) {
	o := hookOptions{gid: -1, maxPerUID: DefaultHookMaxPerUID, idle: defaultHookIdle}
	for _, f := range opts {
		f(&o)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "hooksock")
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("guestd: hook socket dir: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := listenUnixMode(path, 0o660, o.gid)
	if err != nil {
		return nil, fmt.Errorf("guestd: hook socket: %w", err)
	}
	s := &HookServer{
		path:    path,
		ln:      ln,
		log:     logger,
		opts:    o,
		quit:    make(chan struct{}),
		conns:   make(map[*hookConn]struct{}),
		perUID:  make(map[uint32]int),
		changed: make(chan struct{}),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	logger.Info("hook socket listening", "path", path, "gid", o.gid, "max_per_uid", o.maxPerUID)
	return s, nil
}

// removeStaleSocket removes a socket at path that no server answers on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("guestd: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("guestd: %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, 500*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrSocketInUse, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("guestd: removing stale socket: %w", err)
	}
	return nil
}

// listenUnixMode listens on path with the given mode (and group gid, unless
// -1), with no window in which the socket exists with looser permissions:
// it binds a temporary name in the same directory, sets it up and renames
// it into place.
func listenUnixMode(path string, mode os.FileMode, gid int) (*net.UnixListener, error) {
	setup := func(name string) error {
		if gid >= 0 {
			if err := os.Chown(name, -1, gid); err != nil {
				return err
			}
		}
		return os.Chmod(name, mode)
	}
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%d.%d.tmp", os.Getpid(), time.Now().UnixNano()%1e6))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		// E.g. the temporary name is too long for sun_path: bind in place,
		// accepting the short window before chmod.
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			return nil, err
		}
		ln.SetUnlinkOnClose(false)
		if err := setup(path); err != nil {
			ln.Close()
			return nil, err
		}
		return ln, nil
	}
	ln.SetUnlinkOnClose(false)
	if err := setup(tmp); err == nil {
		err = os.Rename(tmp, path)
		if err == nil {
			return ln, nil
		}
	}
	ln.Close()
	os.Remove(tmp)
	return nil, fmt.Errorf("placing socket %s: %w", path, err)
}

// Close stops the server, disconnects every client (blocked WAIT/SYNC calls
// see the connection close) and removes the socket.
func (s *HookServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.quit)
	for c := range s.conns {
		c.c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	os.Remove(s.path)
	return err
}

// notifyLocked wakes everything waiting for a state change. s.mu is held.
func (s *HookServer) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Begin makes an operation pending: POLL, WAIT and STATUS report it and SYNC
// joins it. A round still pending is ended as aborted first.
func (s *HookServer) Begin(op, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		s.log.Warn("round replaced before it finished", "old_id", s.cur.id, "new_id", id)
		s.finishLocked(s.cur, "aborted")
	}
	s.cur = &hookRound{op: op, id: id, done: make(chan struct{}), begun: time.Now()}
	for c := range s.conns {
		c.synced, c.seen, c.missed, c.told = false, false, nil, time.Time{}
	}
	s.notifyLocked()
	s.log.Info("round pending", "op", op, "id", id, "registered", s.registeredLocked())
}

// Finish ends round id: SYNC callers get outcome. Registered clients (and
// clients told PENDING) that had not SYNCed get "aborted" for their next
// SYNC if the outcome is "aborted". Finish of another id is ignored.
func (s *HookServer) Finish(id, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.cur.id != id {
		s.log.Warn("finish of a round not pending", "id", id, "outcome", outcome)
		return
	}
	s.finishLocked(s.cur, outcome)
}

func (s *HookServer) finishLocked(r *hookRound, outcome string) {
	r.outcome = outcome
	close(r.done)
	var missed []string
	for c := range s.conns {
		if outcome == "aborted" && !c.synced && (c.registered || c.seen) {
			c.missed = r
			missed = append(missed, c.label())
		}
		c.synced, c.seen = false, false
	}
	s.cur = nil
	s.notifyLocked()
	s.log.Info("round finished", "op", r.op, "id", r.id, "outcome", outcome, "missed", missed)
}

// WaitSynced returns nil once every registered client has called SYNC in the
// pending round, including clients that register meanwhile. When ctx ends
// first it returns a *NotSyncedError naming the laggards (matching
// ErrNotSynced and ctx's error); ErrNoRound without a round; ErrRoundEnded if
// the round ends while waiting.
func (s *HookServer) WaitSynced(ctx context.Context) error {
	s.mu.Lock()
	r := s.cur
	s.mu.Unlock()
	if r == nil {
		return ErrNoRound
	}
	for {
		s.mu.Lock()
		if s.cur != r {
			s.mu.Unlock()
			return fmt.Errorf("%w: %s", ErrRoundEnded, r.id)
		}
		lag := s.laggardsLocked()
		ch := s.changed
		s.mu.Unlock()
		if len(lag) == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			s.mu.Lock()
			lag = s.laggardsLocked()
			s.mu.Unlock()
			if len(lag) == 0 {
				return nil // they made it just in time
			}
			return &NotSyncedError{Apps: lag, Err: ctx.Err()}
		}
	}
}

func (s *HookServer) laggardsLocked() []string {
	var lag []string
	for c := range s.conns {
		if c.registered && !c.synced {
			lag = append(lag, c.label())
		}
	}
	sort.Strings(lag)
	return lag
}

// Registered is the number of registered (HELLO'd, connected) clients.
func (s *HookServer) Registered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.registeredLocked()
}

func (s *HookServer) registeredLocked() int {
	n := 0
	for c := range s.conns {
		if c.registered {
			n++
		}
	}
	return n
}

func (s *HookServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.quit:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: back off rather than spin.
			s.log.Warn("hook socket accept", "err", err)
			select {
			case <-s.quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		hc := &hookConn{c: c}
		hc.peerPID, hc.peerUID = peerCred(c)
		s.mu.Lock()
		if why := s.admitLocked(hc.peerUID); why != "" {
			s.mu.Unlock()
			s.log.Warn("hook client rejected", "peer_pid", hc.peerPID, "peer_uid", hc.peerUID, "why", why)
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = c.Write([]byte("ERR " + why + "\n"))
			c.Close()
			continue
		}
		s.conns[hc] = struct{}{}
		s.perUID[hc.peerUID]++
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(hc)
	}
}

// errHookClient is a client breaking the protocol; it gets "ERR ..." and is
// disconnected.
type errHookClient struct{ msg string }

func (e errHookClient) Error() string { return e.msg }

// hookLine is one line from a client, or the news that it sent one too long.
type hookLine struct {
	text    string
	tooLong bool
}

func (s *HookServer) serve(c *hookConn) {
	defer s.wg.Done()
	lines := make(chan hookLine)
	stop := make(chan struct{})
	go readHookLines(c, lines, stop)
	defer func() {
		close(stop)
		s.drop(c)
	}()
	idle := time.NewTimer(s.opts.idle)
	defer idle.Stop()
	for {
		var l hookLine
		var ok bool
		s.mu.Lock()
		registered := c.registered
		s.mu.Unlock()
		var idleC <-chan time.Time
		if !registered {
			idle.Reset(s.opts.idle)
			idleC = idle.C
		}
		select {
		case l, ok = <-lines:
		case <-s.quit:
			return
		case <-idleC:
			s.log.Warn("hook client dropped: idle and not registered", "peer_pid", c.peerPID, "peer_uid", c.peerUID, "idle", s.opts.idle)
			_ = s.reply(c, "ERR idle without HELLO")
			return
		}
		if !ok {
			return
		}
		var err error = errHookClient{fmt.Sprintf("line longer than %d bytes", MaxHookLine)}
		if !l.tooLong {
			err = s.command(c, l.text, lines)
		}
		if err != nil {
			var pe errHookClient
			if errors.As(err, &pe) {
				s.reject(c, pe.msg)
			} else {
				s.log.Debug("hook client dropped", "client", c.label(), "err", err)
			}
			return
		}
	}
}

// readHookLines sends c's lines, each at most MaxHookLine bytes, until c
// ends, sends one too long, or stop closes; then it closes lines.
func readHookLines(c *hookConn, lines chan<- hookLine, stop <-chan struct{}) {
	defer close(lines)
	br := bufio.NewReaderSize(c.c, MaxHookLine+1)
	for {
		b, err := br.ReadSlice('\n')
		var l hookLine
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			l.tooLong = true
		case err != nil:
			return
		default:
			l.text = strings.TrimSuffix(string(b[:len(b)-1]), "\r")
		}
		select {
		case lines <- l:
		case <-stop:
			return
		}
		if l.tooLong {
			return
		}
	}
}

// drop closes c and forgets it; a round no longer waits for it.
func (s *HookServer) drop(c *hookConn) {
	c.c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	if s.perUID[c.peerUID]--; s.perUID[c.peerUID] <= 0 {
		delete(s.perUID, c.peerUID)
	}
	if c.registered {
		s.notifyLocked() // WaitSynced no longer waits for it
	}
	s.mu.Unlock()
	if c.registered {
		s.log.Info("application unregistered", "name", c.name, "pid", c.pid)
	}
}

func (s *HookServer) reject(c *hookConn, why string) {
	s.log.Warn("hook client disconnected: protocol error", "peer_pid", c.peerPID, "why", why)
	_ = s.reply(c, "ERR "+why)
}

func (s *HookServer) reply(c *hookConn, line string) error {
	_ = c.c.SetWriteDeadline(time.Now().Add(hookWriteTimout))
	_, err := c.c.Write([]byte(line + "\n"))
	return err
}

// command handles one line. lines is watched while WAIT/SYNC block: the
// client hanging up ends the wait (and unregisters it); another command
// before the answer is a protocol error.
func (s *HookServer) command(c *hookConn, line string, lines <-chan hookLine) error {
	verb, args, _ := strings.Cut(line, " ")
	fields := []string{}
	if args != "" {
		fields = strings.Split(args, " ")
	}
	want := 0
	if verb == "HELLO" {
		want = 2
	}
	switch verb {
	case "HELLO", "POLL", "WAIT", "SYNC", "STATUS":
		if len(fields) != want {
			return errHookClient{fmt.Sprintf("%s takes %d arguments", verb, want)}
		}
	default:
		return errHookClient{"unknown command"}
	}
	switch verb {
	case "HELLO":
		return s.cmdHello(c, fields[0], fields[1])
	case "POLL":
		s.mu.Lock()
		r := s.pendingForLocked(c)
		s.mu.Unlock()
		if r == nil {
			return s.reply(c, "IDLE")
		}
		return s.reply(c, "PENDING "+r.op+" "+r.id)
	case "WAIT":
		return s.cmdWait(c, lines)
	case "SYNC":
		return s.cmdSync(c, lines)
	}
	return s.cmdStatus(c)
}

func (s *HookServer) cmdHello(c *hookConn, name, pidStr string) error {
	if !validAppName(name) {
		return errHookClient{"invalid name"}
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return errHookClient{"invalid pid"}
	}
	s.mu.Lock()
	c.name, c.pid, c.registered = name, pid, true
	s.notifyLocked()
	n := s.registeredLocked()
	s.mu.Unlock()
	if c.peerPID != 0 && c.peerPID != pid {
		// Another pid namespace, or a helper registering for a parent:
		// fine, but worth knowing when reading the logs.
		s.log.Info("application pid differs from peer pid", "name", name, "pid", pid, "peer_pid", c.peerPID)
	}
	s.log.Info("application registered", "name", name, "pid", pid, "registered", n)
	return s.reply(c, "OK 1")
}

// cmdWait answers PENDING as soon as a round is pending. A client that was
// blocked here when the round began is told now: its own time to reach its
// safe point starts with this answer.
func (s *HookServer) cmdWait(c *hookConn, lines <-chan hookLine) error {
	blocked := false
	for {
		s.mu.Lock()
		r := s.pendingForLocked(c)
		ch := s.changed
		if r != nil && blocked && r == s.cur {
			c.told = time.Now()
		}
		s.mu.Unlock()
		if r != nil {
			return s.reply(c, "PENDING "+r.op+" "+r.id)
		}
		if err := s.block(ch, lines); err != nil {
			return err
		}
		blocked = true
	}
}

func (s *HookServer) cmdSync(c *hookConn, lines <-chan hookLine) error {
	s.mu.Lock()
	if m := c.missed; m != nil {
		c.missed = nil
		s.mu.Unlock()
		return s.reply(c, "OUTCOME aborted "+m.op+" "+m.id)
	}
	r := s.cur
	if r == nil {
		s.mu.Unlock()
		return s.reply(c, "OUTCOME none - -")
	}
	c.synced = true
	own := r.syncedLocked(c, time.Now())
	s.notifyLocked()
	s.mu.Unlock()
	s.log.Info("application at safe point", "client", c.label(), "id", r.id, "own_time", own)
	if err := s.block(r.done, lines); err != nil {
		return err
	}
	return s.reply(c, "OUTCOME "+r.outcome+" "+r.op+" "+r.id)
}

func (s *HookServer) cmdStatus(c *hookConn) error {
	s.mu.Lock()
	r := s.cur
	reg, synced := 0, 0
	for o := range s.conns {
		if o.registered {
			reg++
			if o.synced {
				synced++
			}
		}
	}
	s.mu.Unlock()
	if r == nil {
		return s.reply(c, "STATUS idle")
	}
	return s.reply(c, fmt.Sprintf("STATUS pending %s %s synced=%d/%d", r.op, r.id, synced, reg))
}

// pendingForLocked is the round c should hear about: the current one (c is
// now told about it), or the aborted one it missed.
func (s *HookServer) pendingForLocked(c *hookConn) *hookRound {
	if s.cur != nil {
		c.seen = true
		return s.cur
	}
	return c.missed
}

// block waits for ch while watching the client: a hang-up or another command
// ends the wait with an error.
func (s *HookServer) block(ch <-chan struct{}, lines <-chan hookLine) error {
	select {
	case <-ch:
		return nil
	case _, ok := <-lines:
		if !ok {
			return errors.New("client hung up while waiting")
		}
		return errHookClient{"command sent while WAIT or SYNC was in progress"}
	case <-s.quit:
		return errors.New("server closing")
	}
}

// validAppName: 1..64 printable ASCII characters, no spaces (the protocol is
// space-separated and names end up in logs).
func validAppName(s string) bool {
	if len(s) == 0 || len(s) > maxAppName {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
