package guestd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/ebpf/taint"
	"github.com/symvirt/symvirt/guestproto"
)

// Config configures Run. Zero fields take the defaults below.
type Config struct {
	// Channel to the host: "virtio-serial" (default), "vsock", or
	// "unix:PATH" (guestd listens on PATH; for tests and for hosts that
	// forward a socket into the guest).
	Channel   string
	PortName  string // virtio-serial port name; default "org.symvirt.0"
	VsockPort uint32 // default 1024

	HookSocket    string // default /run/symvirt/hook.sock
	HookDir       string // default /etc/symvirt/hooks.d
	MetricsListen string // host:port for /metrics; "" = no metrics server
	// HookGroup (name or gid) owns the hook socket, mode 0660, so that its
	// members can register; default: guestd's group (root).
	HookGroup string
	// HookMaxPerUID bounds one non-root user's hook socket connections
	// (default DefaultHookMaxPerUID).
	HookMaxPerUID int

	// SysRoot is prefixed to every /sys and /dev path (default "/").
	SysRoot string
	// NICWait bounds the wait for replacement NICs at RESUME (default 10s).
	NICWait time.Duration
	// ResumeHookTimeout bounds all hook scripts of a RESUME/ABORT (default 30s).
	ResumeHookTimeout time.Duration
	// Heartbeat is the interval of the guest's PINGs (default 5s; <0: none).
	Heartbeat time.Duration

	Logger *slog.Logger

	// Taint runs the eBPF taint tracker (package ebpf/taint), which tells
	// the processes that depend on the world outside the VM; rounds with
	// freeze (dependency-aware migration) need it. If it cannot load,
	// guestd logs why and runs without it, refusing such rounds.
	Taint bool
	// TaintSocket serves the tracker to `symvirt taint` (default
	// taint.DefaultSocket; "-": not served).
	TaintSocket string
	// TaintIgnore lists peers whose traffic does not taint (e.g. the
	// management network).
	TaintIgnore []netip.Prefix
	// CgroupRoot is the cgroup v2 hierarchy the freezer uses. Default: the
	// first cgroup2 mount in /proc/self/mountinfo, else one mounted at
	// DefaultCgroupMount when first needed.
	CgroupRoot string
	// FreezeAllow names processes (comm, as in /proc/PID/comm) that are
	// never frozen. nil means DefaultFreezeAllow; empty, none.
	FreezeAllow []string
	// FreezeMax bounds how long processes stay frozen after READY
	// (default DefaultFreezeMax; <0: no bound).
	FreezeMax time.Duration
	// FreezeState is the freezer's record of what it froze (default
	// DefaultFreezeState), for a restarted guestd to undo.
	FreezeState string

	// sysWrite replaces the sysfs writes (tests: a fake kernel).
	sysWrite func(path string, data []byte) error
	// taintSource replaces the eBPF tracker (tests).
	taintSource taint.Source
	// openTaint replaces taint.Open (tests).
	openTaint func(taint.Options) (taint.Source, io.Closer, error)
	// eofPoll is how often a virtio-serial port without a host is read
	// again if no SIGIO came (default eofPoll; tests lengthen it).
	eofPoll time.Duration
	// hostSilence ends a socket host connection with no frame for this long
	// (default defaultHostSilence; tests shorten it).
	hostSilence time.Duration
	// freezeTest holds the freezer's test hooks.
	freezeTest *freezeHooks
	// setClock replaces clock_settime(CLOCK_REALTIME) (tests).
	setClock func(time.Time) error
}

// Defaults.
const (
	DefaultPortName   = "org.symvirt.0"
	DefaultVsockPort  = 1024
	DefaultHookSocket = "/run/symvirt/hook.sock"
	DefaultHookDir    = "/etc/symvirt/hooks.d"
)

func (c *Config) setDefaults() {
	if c.Channel == "" {
		c.Channel = "virtio-serial"
	}
	if c.PortName == "" {
		c.PortName = DefaultPortName
	}
	if c.VsockPort == 0 {
		c.VsockPort = DefaultVsockPort
	}
	if c.HookSocket == "" {
		c.HookSocket = DefaultHookSocket
	}
	if c.HookDir == "" {
		c.HookDir = DefaultHookDir
	}
	if c.SysRoot == "" {
		c.SysRoot = "/"
	}
	if c.NICWait == 0 {
		c.NICWait = 10 * time.Second
	}
	if c.ResumeHookTimeout == 0 {
		c.ResumeHookTimeout = 30 * time.Second
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 5 * time.Second
	}
	if c.eofPoll == 0 {
		c.eofPoll = eofPoll
	}
	if c.hostSilence == 0 {
		c.hostSilence = defaultHostSilence
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TaintSocket == "" {
		c.TaintSocket = taint.DefaultSocket
	}
	if c.FreezeState == "" {
		c.FreezeState = DefaultFreezeState
	}
	switch {
	case c.FreezeMax == 0:
		c.FreezeMax = DefaultFreezeMax
	case c.FreezeMax < 0:
		c.FreezeMax = 0
	}
}

// Run is guestd: it serves the hook socket and the host channel until ctx
// ends, then returns nil (or the setup error that stopped it). A round
// still preparing when ctx ends is undone; one that is READY is lost with the
// process (the applications' SYNCs fail as the hook socket closes).
func Run(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	kind, path, err := parseChannel(cfg.Channel)
	if err != nil {
		return err
	}
	// First of all: a guestd that died while processes were frozen must not
	// leave them so. Failing that is logged, not fatal: the agent is still
	// needed, and the next freeze tries again.
	fz := newFreezer(cfg)
	if err := fz.recover(); err != nil {
		cfg.Logger.Error("cannot thaw what an earlier guestd froze", "err", err)
	}
	// Whatever happens from here on, guestd does not exit leaving processes
	// frozen (a READY round is lost with the process anyway).
	defer fz.thaw("guestd stopping")
	hopts, err := hookOptionsFrom(cfg)
	if err != nil {
		return err
	}
	hooks, err := NewHookServer(cfg.HookSocket, cfg.Logger, hopts...)
	if err != nil {
		return err
	}
	defer hooks.Close()
	tt := openTaintTracker(cfg, cfg.Logger.With("component", "taint"))
	defer tt.close()
	a := newAgent(cfg, hooks)
	a.fz, a.taint = fz, tt
	a.met.addFreezer(fz)
	if tt.src != nil {
		a.met.addTaint(tt.src)
	}
	if cfg.MetricsListen != "" {
		stop, err := a.met.serve(cfg.MetricsListen, a.log)
		if err != nil {
			return err
		}
		defer stop()
	}
	a.log.Info("guestd starting", "channel", cfg.Channel, "hook_socket", cfg.HookSocket, "hook_dir", cfg.HookDir,
		"taint_tracker", tt.src != nil)
	err = a.serveChannel(ctx, kind, path)
	a.drain(30 * time.Second)
	// Before the tracker stops (deferred), while the freezer can still ask it.
	fz.thaw("guestd stopping")
	a.log.Info("guestd stopped", "err", err)
	return err
}

// agent is guestd's state: the round, across host connections.
type agent struct {
	cfg   Config
	log   *slog.Logger
	hooks *HookServer
	net   *netSys
	met   *metrics
	fz    *freezer
	taint *taintTracker
	// portWait is how the virtio-serial reader waits for a host; set by
	// serveVirtio before it serves the port.
	portWait *portWait

	wg sync.WaitGroup // round work goroutines

	mu      sync.Mutex
	round   round
	work    *roundWork    // the current round's data, nil when idle
	changed chan struct{} // closed and replaced when the round changes
	nsess   uint64
}

// roundWork is what the agent keeps about the round in flight.
type roundWork struct {
	id, op  string
	devices []guestproto.Device
	cancel  context.CancelCauseFunc // the prepare's; cause *abortCause for an ABORT
	handoff *handoff                // what the NIC hand-off changed
	freeze  bool                    // PREPARE asked to freeze the untainted processes
	hooksOK []string                // scripts whose "prepare" succeeded
	doneTo  []*session              // sessions that asked to end the round: DONE when it has
}

var (
	errNewHost      = errors.New("a new host connection took over")
	errSessionEnded = errors.New("host connection ended")
	errAborted      = errors.New("aborted by the host")
)

func newAgent(cfg Config, hooks *HookServer) *agent {
	log := cfg.Logger
	ns := newNetSys(cfg.SysRoot, log)
	if cfg.sysWrite != nil {
		ns.write = cfg.sysWrite
	}
	return &agent{
		cfg:     cfg,
		log:     log,
		hooks:   hooks,
		net:     ns,
		met:     newMetrics(hooks),
		changed: make(chan struct{}),
		// Run replaces these with the ones it started.
		fz:    newFreezer(cfg),
		taint: &taintTracker{why: "the tracker is not running"},
	}
}

func (a *agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// drain waits (bounded) for round work in progress, e.g. the undo of a
// prepare cancelled by shutdown.
func (a *agent) drain(d time.Duration) {
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		a.log.Warn("round work still running at exit")
	}
}

// session is one host connection, from its HELLO to its end (EOF, a new
// HELLO on virtio-serial, a protocol error).
type session struct {
	id  uint64
	log *slog.Logger
	ctx context.Context
	end context.CancelCauseFunc
	out chan<- outFrame
}

// outFrame is a frame for the host and the session it belongs to: a write
// that fails ends that session only, not one a HELLO started since.
type outFrame struct {
	b    []byte
	sess *session
}

// send queues m for the host without blocking (callers may hold a.mu). A
// host that does not read its replies loses the session.
func (s *session) send(m guestproto.Message) {
	if s.ctx.Err() != nil {
		s.log.Debug("reply dropped: host connection gone", "type", m.Type, "id", m.ID)
		return
	}
	f, err := guestproto.Encode(m)
	if err != nil {
		s.log.Error("cannot encode reply", "type", m.Type, "err", err)
		return
	}
	select {
	case s.out <- outFrame{f, s}:
	default:
		s.end(errors.New("host does not read its replies"))
	}
}

func (a *agent) newSession(out chan<- outFrame) *session {
	a.mu.Lock()
	a.nsess++
	id := a.nsess
	a.mu.Unlock()
	ctx, end := context.WithCancelCause(context.Background())
	a.met.sessions.Inc()
	return &session{id: id, log: a.log.With("session", id), ctx: ctx, end: end, out: out}
}

// endSession ends s under a.mu, so that a prepare of s cannot send READY
// after this (its context, derived from s.ctx, is cancelled with it).
func (a *agent) endSession(s *session, cause error) {
	a.mu.Lock()
	s.end(cause)
	a.mu.Unlock()
	s.log.Info("host session ended", "cause", cause)
}

// helloSettle bounds how long HELLO_ACK waits for round work to settle.
const helloSettle = 5 * time.Second

// hello starts a session: a new host (or the same one after a reconnect).
// A PREPARE of an earlier session is cancelled (a new host never inherits a
// half-done prepare); work in progress is given up to helloSettle to end so
// that the reported state is idle or ready. Past that the state is reported
// as it is ("preparing" or "finishing": handshake again later).
func (a *agent) hello(sess *session) {
	a.mu.Lock()
	if a.round.phase == phasePreparing && a.work != nil {
		a.work.cancel(errNewHost)
	}
	a.mu.Unlock()
	settle := time.NewTimer(helloSettle)
	defer settle.Stop()
	for {
		a.mu.Lock()
		ph := a.round.phase
		if ph == phaseIdle || ph == phaseReady {
			id, op := a.round.pending()
			sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeHelloAck, State: ph.String(), ID: id, Op: op,
				Usage: memUsage()})
			a.mu.Unlock()
			sess.log.Info("host connected", "state", ph.String(), "pending_id", id, "pending_op", op)
			return
		}
		ch := a.changed
		a.mu.Unlock()
		select {
		case <-ch:
		case <-sess.ctx.Done():
			return
		case <-settle.C:
			// Report the truth even if it is not settled.
			a.mu.Lock()
			sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeHelloAck, State: a.round.phase.String(),
				Usage: memUsage()})
			a.mu.Unlock()
			return
		}
	}
}

// handle dispatches one host message of session sess. It returns an error
// for a message a host must never send.
func (a *agent) handle(sess *session, m guestproto.Message) error {
	switch m.Type {
	case guestproto.TypePing:
		sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypePong, Seq: m.Seq})
	case guestproto.TypePong:
	case guestproto.TypePrepare:
		a.onPrepare(sess, m)
	case guestproto.TypeResume, guestproto.TypeAbort:
		a.onFinish(sess, m)
	case guestproto.TypeClone:
		a.onClone(sess, m)
	default:
		return fmt.Errorf("%w: host sent %s", guestproto.ErrUnexpected, m.Type)
	}
	return nil
}

func (a *agent) onPrepare(sess *session, m guestproto.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	act, reason := a.round.onPrepare(m.ID, m.Op)
	sess.log.Info("PREPARE", "id", m.ID, "op", m.Op, "deadline", m.Deadline(), "devices", len(m.Devices), "freeze", m.Freeze, "action", act)
	if act == actStart && m.Freeze {
		if why := a.cannotFreeze(); why != "" {
			// Refused before anything is done: the host may retry
			// without freeze, as a plain migration.
			_ = a.round.prepared(m.ID, false)
			_ = a.round.finished(m.ID, "refused")
			a.notifyLocked()
			reason = guestproto.TruncateReason(why)
			sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeRefused, ID: m.ID, Reason: reason})
			sess.log.Warn("REFUSED", "id", m.ID, "reason", reason)
			a.met.rounds.WithLabelValues(m.Op, "refused").Inc()
			return
		}
	}
	switch act {
	case actStart:
		ctx, cancel := context.WithCancelCause(sess.ctx)
		w := &roundWork{id: m.ID, op: m.Op, devices: m.Devices, freeze: m.Freeze, cancel: cancel}
		a.work = w
		a.notifyLocked()
		a.wg.Add(1)
		go a.prepare(ctx, sess, w, m.Deadline())
	case actReady:
		sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeReady, ID: m.ID})
	case actRefuse:
		sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeRefused, ID: m.ID, Reason: reason})
	}
}

// cannotFreeze says why a round with freeze cannot be done ("" if it can):
// no tracker, or no cgroup v2 freezer. Cheap (a few file operations; at
// most one mount), so it is checked before the round starts.
func (a *agent) cannotFreeze() string {
	if a.taint.src == nil {
		return a.taint.freezeUnavailable()
	}
	if err := a.fz.ready(); err != nil {
		return "dependency-aware migration needs the cgroup v2 freezer: " + err.Error()
	}
	return ""
}

func (a *agent) onFinish(sess *session, m guestproto.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var act action
	outcome := m.Outcome
	if m.Type == guestproto.TypeAbort {
		act = a.round.onAbort(m.ID)
		outcome = guestproto.OutcomeAborted
	} else {
		act = a.round.onResume(m.ID)
	}
	sess.log.Info(m.Type, "id", m.ID, "outcome", outcome, "reason", m.Reason, "phase", a.round.phase, "action", act)
	switch act {
	case actStart:
		// Before anything resumes: the applications' first reading of the
		// clock after their SYNC must be the host's time.
		a.stepClock(sess.log, m.HostTime())
		w := a.work
		w.doneTo = append(w.doneTo, sess)
		a.notifyLocked()
		a.wg.Add(1)
		go a.finish(sess, w, outcome)
	case actCancelPrp:
		a.work.doneTo = append(a.work.doneTo, sess)
		a.work.cancel(errAborted)
	case actIgnore:
		// The round is being ended (RESUME/ABORT already under way, or a
		// refusal's undo): this asker hears DONE when it is.
		if a.work != nil && a.work.id == m.ID {
			a.work.doneTo = append(a.work.doneTo, sess)
		}
	case actDone:
		if m.ID != a.round.lastID {
			sess.log.Warn("RESUME/ABORT of a round this guest is not in: nothing to do", "id", m.ID, "current", a.round.id)
		}
		sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeDone, ID: m.ID})
	}
}

// sendDone answers DONE to every session that asked to end the round (a.mu
// held). Sessions that are gone drop it.
func (w *roundWork) sendDone() {
	seen := map[*session]bool{}
	for _, s := range w.doneTo {
		if !seen[s] {
			seen[s] = true
			s.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeDone, ID: w.id})
		}
	}
}

// budget is how much of a PREPARE deadline the work may use: the rest is for
// the answer's trip and the host's bookkeeping.
func budget(d time.Duration) time.Duration {
	return d - min(d/10, time.Second)
}

func (a *agent) scripts(phase, op, id, outcome string) hookRun {
	args := []string{phase, op}
	env := []string{"SYMVIRT_PHASE=" + phase, "SYMVIRT_OP=" + op, "SYMVIRT_ID=" + id}
	if outcome != "" {
		args = append(args, outcome)
		env = append(env, "SYMVIRT_OUTCOME="+outcome)
	}
	return hookRun{dir: a.cfg.HookDir, args: args, env: env, log: a.log.With("component", "hooks"), delay: time.Second}
}

// prepare is the PREPARE work: hooks, applications, NIC hand-off, sync,
// then READY; or REFUSED and undo; or, cancelled (ABORT, host gone), undo
// and DONE to whoever aborted.
func (a *agent) prepare(ctx context.Context, sess *session, w *roundWork, deadline time.Duration) {
	defer a.wg.Done()
	start := time.Now()
	log := sess.log.With("id", w.id, "op", w.op)
	wctx, cancel := context.WithTimeout(ctx, budget(deadline))
	defer cancel()
	reason, frozen := a.prepareWork(wctx, w, log)

	// Decided under the lock: a cancellation (ABORT, host gone) that came
	// first wins over success, and READY is never sent after it.
	a.mu.Lock()
	if ctx.Err() == nil && reason == "" {
		_ = a.round.prepared(w.id, true)
		a.notifyLocked()
		tm := guestproto.ReadyTiming(a.hooks.AppsTime(w.id), time.Since(start))
		sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeReady, ID: w.id, Timing: tm})
		a.mu.Unlock()
		if w.freeze {
			log.Info("READY", "took", tm.Took(), "apps", tm.Apps(), "frozen", frozen.Frozen)
		} else {
			log.Info("READY", "took", tm.Took(), "apps", tm.Apps())
		}
		return
	}
	_ = a.round.prepared(w.id, false)
	a.notifyLocked()
	result := "refused"
	if ctx.Err() != nil {
		result = guestproto.OutcomeAborted
		log.Info("prepare cancelled", "cause", context.Cause(ctx))
	} else {
		reason = guestproto.TruncateReason(reason)
		sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeRefused, ID: w.id, Reason: reason})
		log.Warn("REFUSED", "reason", reason, "took", time.Since(start).Round(time.Millisecond))
	}
	a.mu.Unlock()

	// The answer is out; now undo, taking the time it takes.
	// Only the scripts that prepared hear of the abort (non-nil: none if
	// none did).
	a.undo(w, guestproto.OutcomeAborted, append([]string{}, w.hooksOK...))
	a.mu.Lock()
	_ = a.round.finished(w.id, result)
	a.work = nil
	a.notifyLocked()
	w.sendDone()
	a.mu.Unlock()
	a.met.rounds.WithLabelValues(w.op, result).Inc()
}

// prepareWork brings the guest to its safe point within wctx: hook
// scripts, applications, NIC hand-off, sync, then the freeze if asked. It
// returns why it could not ("" if it did).
func (a *agent) prepareWork(wctx context.Context, w *roundWork, log *slog.Logger) (string, freezeResult) {
	a.hooks.Begin(w.op, w.id)
	ok, err := a.scripts("prepare", w.op, w.id, "").prepare(wctx)
	w.hooksOK = ok
	if err != nil {
		return err.Error(), freezeResult{}
	}
	if err := a.hooks.WaitSynced(wctx); err != nil {
		if ns := (*NotSyncedError)(nil); errors.As(err, &ns) {
			return ns.Reason(), freezeResult{}
		}
		return err.Error(), freezeResult{}
	}
	h, err := a.net.detach(w.devices)
	w.handoff = h
	if err != nil {
		return "NIC hand-off: " + err.Error(), freezeResult{}
	}
	if err := syncFS(wctx); err != nil {
		return "sync() did not finish before the deadline", freezeResult{}
	}
	// Freezing comes last: nothing above waits on a frozen process (a
	// frozen FUSE server would hang sync), and the frozen stop dirtying
	// memory from here on.
	if !w.freeze {
		return "", freezeResult{}
	}
	frozen, err := a.fz.freeze(wctx, a.taint.tainted)
	if err != nil {
		return "freezing the untainted processes: " + err.Error(), frozen
	}
	log.Info("froze the untainted processes", "frozen", frozen.Frozen, "left_running", frozen.Skipped,
		"settled", frozen.Settled, "took", frozen.Took.Round(time.Millisecond))
	return "", frozen
}

// finish is the RESUME/ABORT work of a READY round, then DONE.
func (a *agent) finish(sess *session, w *roundWork, outcome string) {
	defer a.wg.Done()
	start := time.Now()
	a.undo(w, outcome, nil)
	a.mu.Lock()
	_ = a.round.finished(w.id, outcome)
	a.work = nil
	a.notifyLocked()
	w.sendDone()
	a.mu.Unlock()
	a.met.rounds.WithLabelValues(w.op, outcome).Inc()
	sess.log.Info("DONE", "id", w.id, "op", w.op, "outcome", outcome, "took", time.Since(start).Round(time.Millisecond))
}

// undo ends a round in the guest, in the order the applications need it:
// the frozen processes first (the hook scripts' services may be among
// them), then the network (they may talk as soon as they resume), then the
// hook scripts (services), then the applications' SYNCs. scripts nil means
// all.
func (a *agent) undo(w *roundWork, outcome string, scripts []string) {
	if w.freeze {
		_, _ = a.fz.thaw("round " + w.id + " " + outcome)
	}
	nctx, cancel := context.WithTimeout(context.Background(), a.cfg.NICWait)
	a.net.reattach(nctx, w.handoff)
	cancel()
	if scripts == nil || len(scripts) > 0 {
		hctx, cancel := context.WithTimeout(context.Background(), a.cfg.ResumeHookTimeout)
		a.scripts("resume", w.op, w.id, outcome).resume(hctx, scripts)
		cancel()
	}
	a.hooks.Finish(w.id, outcome)
}

// syncFS runs sync(2), which cannot be interrupted, bounded by ctx: on expiry
// it goes on in the background and we stop waiting.
func syncFS(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		unix.Sync()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// parseChannel splits a Config.Channel.
func parseChannel(ch string) (kind, path string, err error) {
	switch {
	case ch == "virtio-serial", ch == "vsock":
		return ch, "", nil
	case strings.HasPrefix(ch, "unix:") && len(ch) > len("unix:"):
		return "unix", strings.TrimPrefix(ch, "unix:"), nil
	}
	return "", "", fmt.Errorf("guestd: unknown channel %q (want virtio-serial, vsock or unix:PATH)", ch)
}
