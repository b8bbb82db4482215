package hostd

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/hostd/migstream"
	"github.com/symvirt/symvirt/qmp"
)

// MigrateOptions control a live migration.
type MigrateOptions struct {
	// To is the destination hostd's API address (host:port or a unix path).
	To string `json:"to"`
	// MaxBandwidth caps the stream in bytes/s (0: no practical cap).
	MaxBandwidth int64 `json:"max_bandwidth,omitempty"`
	// DowntimeLimit is QEMU's target for the final stop-and-copy.
	DowntimeLimit time.Duration `json:"downtime_limit_ns,omitempty"`
	NoGuest       bool          `json:"no_guest,omitempty"`
	// DependencyAware has the guest freeze every process without a
	// dependency outside the VM while the VM migrates (they stop dirtying
	// memory, so pre-copy converges); the tainted ones keep serving.
	DependencyAware bool `json:"dependency_aware,omitempty"`
	// Capabilities are extra QEMU migration capabilities (auto-converge...).
	Capabilities map[string]bool `json:"capabilities,omitempty"`
	// Grant is the coordinator's signed permission to hand the VM to a
	// TLS destination (peerauth.go); it is passed on as it is.
	Grant *Grant `json:"grant,omitempty"`
	// CopyStorage takes the VM's disks along (mirror.go): for hosts
	// that share no disk storage.
	CopyStorage bool `json:"copy_storage,omitempty"`
}

// MigrateResult reports a finished migration, with QEMU's own figures.
type MigrateResult struct {
	Destination string        `json:"destination"`
	TotalTime   time.Duration `json:"total_ns"`
	Downtime    time.Duration `json:"downtime_ns"`
	Transferred int64         `json:"transferred"`
	Duration    time.Duration `json:"duration_ns"`
	// MultifdBytes: the part of Transferred that went over multifd's
	// channels (migchannels.go).
	MultifdBytes int64 `json:"multifd_bytes,omitempty"`
	// Pages: the guest pages QEMU sent, zero ones included (as markers)
	// and resent ones counted again.
	Pages int64  `json:"pages"`
	VM    VMInfo `json:"vm"`
}

// IncomingRequest asks a destination to prepare for a VM.
type IncomingRequest struct {
	Spec Spec `json:"spec"`
	// Absent are passthrough devices detached at the source; the
	// destination starts without them and attaches its own afterwards.
	Absent []string `json:"absent,omitempty"`
	Round  *Round   `json:"round,omitempty"`
	// Op and Lease: a coordinator's operation holds the paused copy; if
	// nobody resumes it before the lease ends, it is discarded.
	Op    string        `json:"op,omitempty"`
	Lease time.Duration `json:"lease_ns,omitempty"`
	// Grant is the coordinator's permission for the calling peer hostd
	// to hand this VM over (required from a peer over TLS).
	Grant *Grant `json:"grant,omitempty"`
	// CopyStorage: the destination creates these disks (every disk of
	// the spec, in order) and serves them for the source's mirror.
	CopyStorage []CopyDisk `json:"copy_storage,omitempty"`
	// CloneIdentity: a template clone's kept identity (template_move.go).
	CloneIdentity *guestproto.Clone `json:"clone_identity,omitempty"`
	// Channels the source can send RAM over (migchannels.go); 0: one
	// stream.
	Channels int `json:"channels,omitempty"`
}

// IncomingResponse tells the source where to send the stream.
type IncomingResponse struct {
	URI string `json:"uri"`
	// NBD and NBDToken (a storage migration): where the source connects
	// its mirrors, one connection per disk, each presenting the token.
	NBD      string `json:"nbd,omitempty"`
	NBDToken string `json:"nbd_token,omitempty"`
	// Channels the destination waits on (at most the request's); 0: one
	// stream, which an older destination answers too.
	Channels int `json:"channels,omitempty"`
}

// Migrate live-migrates the VM to another hostd, a one-VM operation of the
// coordinator's machine: cooperation round, detach passthrough devices,
// pre-copy to a QEMU the destination started and keeps paused; then (the
// commit point) the destination attaches devices from its pool and
// resumes, and the source copy is killed. Before the commit point any
// failure cancels the destination's copy and resumes the source with its
// devices; after it the source is never resumed.
func (vm *VM) Migrate(ctx context.Context, opts MigrateOptions, progress ProgressFunc) (res MigrateResult, err error) {
	start := timeNow()
	defer func() { vm.h.metrics.observe("migrate", resultLabel(err), start) }()
	if opts.To == "" {
		return res, fmt.Errorf("migrate: destination is missing: %w", ErrInvalidSpec)
	}
	if opts.DependencyAware && (opts.NoGuest || vm.Spec().Guest.Type == "none") {
		return res, fmt.Errorf("vm %q: a dependency-aware migration needs the guest's cooperation: %w", vm.name, ErrInvalidState)
	}
	o := vm.h.opOptions("")
	o.Live, o.Freeze, o.CopyStorage = true, opts.DependencyAware, opts.CopyStorage
	d, acts, err := vm.h.newDirect(machine.KindMigrate, machine.VM{Name: vm.name, Dest: opts.To}, o)
	if err != nil {
		return res, err
	}
	d.To, d.Grant, d.NoGuest, d.progress = opts.To, opts.Grant, opts.NoGuest, progress
	d.MaxBandwidth, d.DowntimeLimit, d.Capabilities = opts.MaxBandwidth, opts.DowntimeLimit, opts.Capabilities
	if _, err := vm.h.runDirect(d, acts); err != nil {
		return res, err
	}
	res = MigrateResult{Destination: opts.To, TotalTime: time.Duration(d.mig.TotalTime) * time.Millisecond,
		Downtime: time.Duration(d.mig.Downtime) * time.Millisecond, Transferred: d.mig.RAM.Transferred,
		MultifdBytes: d.mig.RAM.MultifdBytes, Pages: d.mig.RAM.Normal + d.mig.RAM.Duplicate, VM: d.destVM, Duration: timeNow().Sub(start)}
	vm.log.Info("migrated", "to", opts.To, "total", res.TotalTime, "downtime", res.Downtime, "bytes", res.Transferred, "pages", res.Pages)
	return res, nil
}

// Incoming starts a QEMU waiting for a migration stream.
func (h *Host) Incoming(ctx context.Context, req IncomingRequest) (IncomingResponse, error) {
	from, err := h.admitIncoming(ctx, req)
	if err != nil {
		return IncomingResponse{}, err
	}
	if req.Op != "" && h.isClosed(req.Spec.Name, req.Op) {
		// Its CancelMigrate ran here: a late Launch or Migrate of it.
		return IncomingResponse{}, fmt.Errorf("incoming %q: operation %s is closed here (its copy was cancelled): %w", req.Spec.Name, req.Op, ErrInvalidState)
	}
	vm, err := h.createIncoming(req)
	if err != nil {
		return IncomingResponse{}, err
	}
	spec := vm.Spec()
	if err := vm.lock("incoming"); err != nil {
		return IncomingResponse{}, err
	}
	defer vm.unlock()
	ok := false
	defer func() {
		if !ok {
			vm.kill()
			h.forget(vm)
		}
	}()
	if err := vm.launchIncoming(ctx, req); err != nil {
		return IncomingResponse{}, err
	}
	mon, err := vm.monitor()
	if err != nil {
		return IncomingResponse{}, err
	}
	var resp IncomingResponse
	if resp.Channels, err = vm.prepareIncomingRAM(ctx, mon, req.Channels); err != nil {
		return IncomingResponse{}, err
	}
	wait := migstream.ConnectWait
	if req.Lease > 0 {
		wait = 2 * req.Lease
	}
	if len(req.CopyStorage) > 0 {
		if resp.NBD, resp.NBDToken, err = vm.exportDisks(ctx, mon, from, wait); err != nil {
			return IncomingResponse{}, err
		}
	}
	// QEMU's MIGRATION events here end a Resume's wait for the stream
	// at once (the VM is paused at both ends until it runs here).
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		return IncomingResponse{}, err
	}
	if resp.URI, err = vm.incomingStream(ctx, mon, from, wait); err != nil {
		return IncomingResponse{}, err
	}
	vm.mu.Lock()
	vm.rt.Round = req.Round
	vm.rt.From = from
	vm.saveRuntime()
	vm.mu.Unlock()
	if req.Op != "" {
		h.setLease(spec.Name, req.Op, 2*req.Lease, "")
	}
	ok = true
	vm.log.Info("waiting for incoming migration", "uri", resp.URI, "disks", len(req.CopyStorage), "channels", resp.Channels)
	return resp, nil
}

// launchIncoming starts the destination's QEMU, paused, with the devices
// the source has detached absent and this host's own slots for them.
func (vm *VM) launchIncoming(ctx context.Context, req IncomingRequest) error {
	spec := vm.Spec()
	absent := map[string]bool{}
	for _, id := range req.Absent {
		if !slices.Contains(spec.PassthroughIDs(), id) {
			return fmt.Errorf("incoming %q: absent device %q is not a passthrough device: %w", spec.Name, id, ErrInvalidSpec)
		}
		absent[id] = true
	}
	if err := vm.allocateSlots(req.Absent); err != nil {
		return err
	}
	if len(req.CopyStorage) > 0 {
		if err := vm.createCopyImages(ctx, req.CopyStorage); err != nil {
			return err
		}
	}
	start := timeNow()
	if err := vm.launch(ctx, launch{incoming: true, absent: absent, pooledRAM: true}); err != nil {
		return err
	}
	vm.logPhase("dest_launch", timeNow().Sub(start))
	return nil
}

// createIncoming registers the VM an incoming migration brings, its
// spec checked against this host's policy; a storage migration's disks
// become new images in the VM's directory (mirror_incoming.go).
func (h *Host) createIncoming(req IncomingRequest) (*VM, error) {
	spec := req.Spec
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	check := h.cfg.Policy.Check
	if len(req.CopyStorage) > 0 {
		var err error
		if spec, err = h.copyStorageSpec(spec, req.CopyStorage); err != nil {
			return nil, err
		}
		check = func(s Spec, _ map[string][]map[string]string) error { return h.checkCopyStorage(s) }
	}
	if err := check(spec, h.cfg.Pools); err != nil {
		return nil, err
	}
	if old, err := h.Get(spec.Name); err == nil {
		if old.alive() {
			return nil, fmt.Errorf("vm %q already runs here: %w", spec.Name, ErrExists)
		}
		h.forget(old)
	}
	return h.createKeeping(spec, req.CloneIdentity)
}

// FinishIncoming completes a migration on the destination: wait for the
// stream, attach this host's devices, resume, tell the guest.
func (vm *VM) FinishIncoming(ctx context.Context) (VMInfo, error) {
	if err := vm.lock("finish-incoming"); err != nil {
		return VMInfo{}, err
	}
	defer vm.unlock()
	vm.mu.Lock()
	incoming := vm.rt.Incoming
	vm.mu.Unlock()
	if !incoming {
		return VMInfo{}, fmt.Errorf("vm %q is not waiting for a migration: %w", vm.name, ErrInvalidState)
	}
	mon, err := vm.monitor()
	if err != nil {
		return VMInfo{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	start := timeNow()
	defer func() { vm.logPhase("dest_finish", timeNow().Sub(start)) }()
	if _, err := mon.WaitMigration(wctx, 50*time.Millisecond, nil); err != nil {
		return VMInfo{}, fmt.Errorf("vm %q: incoming: %w", vm.name, err)
	}
	vm.logPhase("dest_finish_stream", timeNow().Sub(start))
	if err := vm.stopExports(ctx, mon); err != nil {
		return VMInfo{}, err
	}
	vm.mu.Lock()
	vm.rt.Incoming = false
	vm.saveRuntime()
	vm.mu.Unlock()
	// Run first, then hot-plug this host's device: a running guest sees
	// the hot-add reliably.
	if err := mon.Cont(ctx); err != nil {
		return VMInfo{}, err
	}
	crashPoint("finish-incoming", vm.log)
	t := timeNow()
	if err := vm.attachAll(ctx); err != nil {
		return VMInfo{}, err
	}
	vm.logPhase("dest_finish_attach", timeNow().Sub(t))
	if err := vm.settleChannels(ctx, mon); err != nil {
		vm.log.Error("after an incoming migration over channels", "err", err)
	}
	// Channels leave the zero pages they never sent as holes: filled now,
	// beside the running VM, as at a boot (a move out of a sparse file
	// pays tmpfs's allocation: QEMU's part 0.94 against 0.44 s at 2 GiB). A file one
	// stream filled is skipped.
	vm.populateAfterStart()
	t = timeNow()
	vm.finishRound(ctx, "migrated")
	vm.logPhase("dest_finish_guest", timeNow().Sub(t))
	return vm.Info(ctx), nil
}

// AbortIncoming kills a destination QEMU that must not run.
func (vm *VM) AbortIncoming(ctx context.Context) error {
	vm.mu.Lock()
	incoming := vm.rt.Incoming
	vm.mu.Unlock()
	if !incoming {
		// A peer may discard only a copy that never ran here.
		if vm.alive() || callerFrom(ctx).peer() {
			return fmt.Errorf("vm %q runs here and is not an incoming migration: %w", vm.name, ErrInvalidState)
		}
	}
	vm.kill()
	vm.h.forget(vm)
	vm.log.Info("incoming migration aborted")
	return nil
}

// migrateStep streams the VM to a destination that keeps it paused; the
// source stays paused too until the operation resumes one of them (a
// failed stream is cancelled here, with the storage migration's mirrors;
// the destination's copy is the operation's to cancel).
func (vm *VM) migrateStep(ctx context.Context, req StepRequest) error {
	args := req.Migrate
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	defer vm.populateRAMBeside(ctx, "source", false)()
	inc, ireq, err := vm.destination(ctx, mon, req)
	if err != nil {
		return err
	}
	var m *mirror
	if len(ireq.CopyStorage) > 0 {
		if m, err = vm.startMirror(ctx, mon, inc, args.Dest, ireq.CopyStorage); err == nil {
			err = m.waitReady(ctx)
		}
	}
	var tun *migstream.Out
	var info qmp.MigrationInfo
	taps := vm.captureFrames()
	stops, unsubscribe := mon.Subscribe("STOP")
	defer unsubscribe()
	defer vm.idleMigrationThread(mon)()
	if err == nil {
		tun, info, err = vm.migrateRAM(ctx, mon, args, inc)
	}
	if err == nil && m != nil {
		err = m.complete(ctx)
	}
	if err != nil {
		bg := context.WithoutCancel(ctx)
		mon.MigrateCancel(bg)
		if serr := vm.settleChannels(bg, mon); serr != nil {
			vm.log.Error("after a failed migration over channels", "err", serr)
		}
		err = migstream.WithStreamErr(err, tun.Abort(bg, mon))
		m.abort(bg)
		closeTaps(taps)
		return fmt.Errorf("vm %q: %w: %w", vm.name, ErrMigration, err)
	}
	vm.forwardFrames(taps, args.Dest, pausedAt(stops, time.Duration(info.Downtime)*time.Millisecond))
	if args.Progress != nil {
		args.Progress(info)
	}
	vm.logPhase("qemu_setup", time.Duration(info.SetupTime)*time.Millisecond)
	vm.logPhase("qemu_downtime", time.Duration(info.Downtime)*time.Millisecond)
	vm.log.Info("migration stream complete", "to", args.Dest, "channels", inc.Channels, "dirty_syncs", info.RAM.DirtySyncCount, "total_ms", info.TotalTime,
		"downtime_ms", info.Downtime, "setup_ms", info.SetupTime, "bytes", info.RAM.Transferred)
	vm.h.setLease(vm.name, req.Op, req.Lease, args.Dest)
	return nil
}

// destination is the incoming QEMU the stream goes to: the one this
// operation's Launch started, else one the destination starts now.
func (vm *VM) destination(ctx context.Context, mon *qmp.Client, req StepRequest) (IncomingResponse, IncomingRequest, error) {
	if inc, ok := vm.takeLaunched(req.Op, req.Migrate.Dest); ok {
		return inc, IncomingRequest{}, nil
	}
	ireq, err := vm.incomingRequest(ctx, mon, req)
	if err != nil {
		return IncomingResponse{}, ireq, err
	}
	start := timeNow()
	inc, err := vm.h.peer(req.Migrate.Dest).Incoming(ctx, ireq)
	if err != nil {
		return inc, ireq, fmt.Errorf("vm %q: destination %s: %w", vm.name, req.Migrate.Dest, err)
	}
	vm.logPhase("migrate_incoming", timeNow().Sub(start))
	return inc, ireq, nil
}

// incomingBase is what the destination is asked to prepare, without a
// storage migration's disks.
func (vm *VM) incomingBase(req StepRequest) (IncomingRequest, error) {
	spec := vm.Spec()
	vm.mu.Lock()
	round := vm.rt.Round
	vm.mu.Unlock()
	ireq := IncomingRequest{Spec: spec, Absent: spec.PassthroughIDs(), Round: round, Lease: req.Lease, Grant: req.Migrate.Grant,
		Channels: vm.offerChannels()}
	var err error
	if ireq.CloneIdentity, err = vm.movingCloneIdentity(); err != nil {
		return ireq, err
	}
	if req.Lease > 0 {
		// Held under the operation's lease there (a direct operation
		// holds none: its driver, this host, cancels the copy itself).
		ireq.Op = req.Op
	}
	return ireq, nil
}

// incomingRequest is what the destination is asked to prepare.
func (vm *VM) incomingRequest(ctx context.Context, mon *qmp.Client, req StepRequest) (IncomingRequest, error) {
	ireq, err := vm.incomingBase(req)
	if err != nil {
		return ireq, err
	}
	if vm.copiesStorage(req.Migrate.CopyStorage) {
		if err := vm.waitDiskJobs(ctx); err != nil {
			return ireq, err
		}
		disks, err := vm.copyDisks(ctx, mon)
		if err != nil {
			return ireq, err
		}
		ireq.CopyStorage = disks
	}
	return ireq, nil
}

// prepareIncomingRAM sets up the channels the destination waits on (at
// most offered; 0: one stream) and, for one stream, populates its RAM
// file beside it: one stream sends every zero page, which QEMU checks
// here page by page (each read of a hole allocates it); multifd's are
// never sent and stay holes.
func (vm *VM) prepareIncomingRAM(ctx context.Context, mon *qmp.Client, offered int) (int, error) {
	channels, err := vm.acceptChannels(ctx, mon, offered)
	if err != nil || channels > 0 {
		return channels, err
	}
	stopPopulate := vm.populateRAMBeside(context.WithoutCancel(ctx), "dest", false)
	time.AfterFunc(migstream.ConnectWait, stopPopulate)
	return 0, nil
}

// migrateRAM pre-copies the VM's state to the destination inc and waits
// for QEMU to complete the migration (the source is paused then). The
// tunnel, if any, is returned for the caller to abort on failure.
func (vm *VM) migrateRAM(ctx context.Context, mon *qmp.Client, args *MigrateArgs, inc IncomingResponse) (*migstream.Out, qmp.MigrationInfo, error) {
	var info qmp.MigrationInfo
	params := vm.h.migrateParams(args)
	var tun *migstream.Out
	qemuURI := ""
	host, err := checkMigrationURI(inc.URI, args.Dest, vm.h.cfg.migrationPorts())
	if err == nil {
		err = vm.checkChannels(mon, inc.Channels)
	}
	if err == nil {
		// An earlier multifd migration's cleanup must end first.
		err = vm.settleChannels(ctx, mon)
	}
	if err == nil {
		tun, qemuURI, err = vm.streamTo(ctx, mon, inc.URI, host)
	}
	if err == nil {
		err = mon.MigrateSetCapabilities(ctx, migrateCapabilities(args.Capabilities, inc.Channels))
	}
	if err == nil && inc.Channels > 0 {
		params["multifd-channels"] = inc.Channels
	}
	if err == nil {
		err = mon.MigrateSetParameters(ctx, params)
	}
	start := timeNow()
	if err == nil {
		err = mon.Migrate(ctx, qemuURI)
	}
	if err == nil {
		info, err = mon.WaitMigration(ctx, migratePoll, args.Progress)
	}
	vm.logPhase("migrate_qemu", timeNow().Sub(start))
	start = timeNow()
	if err == nil {
		info, err = completedFigures(ctx, mon, info)
	}
	vm.logPhase("migrate_figures", timeNow().Sub(start))
	start = timeNow()
	if err == nil {
		err = tun.Finish()
	}
	vm.logPhase("migrate_tunnel_finish", timeNow().Sub(start))
	return tun, info, err
}

// migratePoll is how often a migration's source asks QEMU how far it got
// (its MIGRATION events wake it too): the VM is paused at both ends from
// QEMU's completion until the step's answer starts its switch.
const migratePoll = 10 * time.Millisecond

// migrateParams are QEMU's migration parameters for a step: the caller's
// bandwidth cap and downtime target, or this host's defaults (no
// downtime-limit: QEMU's own).
func (h *Host) migrateParams(args *MigrateArgs) map[string]any {
	params := map[string]any{"max-bandwidth": int64(64) << 30}
	if args.MaxBandwidth > 0 {
		params["max-bandwidth"] = args.MaxBandwidth
	}
	d := cmp.Or(args.DowntimeLimit, h.cfg.MigrationDowntime)
	if d > 0 {
		params["downtime-limit"] = d.Milliseconds()
	}
	return params
}

// migrateCapabilities are the caller's capabilities with QEMU's MIGRATION
// events on, which end the wait for the stream at once, x-ignore-shared
// off unless asked for (a save that a crash of hostd cut short may have
// left it on in this QEMU, and a migration to another host must carry
// RAM), and multifd as the destination agreed (channels > 0), whatever
// the caller asked.
func migrateCapabilities(extra map[string]bool, channels int) map[string]bool {
	caps := map[string]bool{"events": true, "x-ignore-shared": false}
	for k, v := range extra {
		caps[k] = v
	}
	caps["multifd"] = channels > 0
	return caps
}

// completedFigures waits, woken by the MIGRATION event, until QEMU has
// filled in a completed migration's figures (total-time, downtime): it
// does so a moment after the state changed, in the same step that marks
// the source postmigrate, after which a Resume there is not undone.
func completedFigures(ctx context.Context, mon *qmp.Client, info qmp.MigrationInfo) (qmp.MigrationInfo, error) {
	for end := timeNow().Add(time.Second); info.TotalTime == 0 && timeNow().Before(end); {
		time.Sleep(time.Millisecond)
		next, err := mon.QueryMigrate(ctx)
		if err != nil {
			return info, err
		}
		info = next
	}
	return info, nil
}
