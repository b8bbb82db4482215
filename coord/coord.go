package coord

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/names"
	"github.com/symvirt/symvirt/internal/pki"
)

// Host is a hostd the coordinator drives.
type Host struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // hostd API address (host:port, or a unix socket path)
	// MaxVMs bounds placement on restart/evacuate (0: no bound).
	MaxVMs int `json:"max_vms,omitempty"`
}

// JobVM is one VM of a job and where it runs.
type JobVM struct {
	Name string      `json:"name" yaml:"name"`
	Host string      `json:"host" yaml:"host"`
	Spec *hostd.Spec `json:"spec,omitempty" yaml:"spec,omitempty"`
}

// Job is a named set of VMs operated on together.
type Job struct {
	Name    string    `json:"name" yaml:"name"`
	VMs     []JobVM   `json:"vms" yaml:"vms"`
	Created time.Time `json:"created" yaml:"-"`
}

// Checkpoint is a job checkpoint: complete only when every VM's artifacts
// are written, synced and checksummed.
type Checkpoint struct {
	ID        string         `json:"id"`
	Job       string         `json:"job"`
	Op        string         `json:"op"`
	Status    string         `json:"status"` // in-progress | complete | failed
	CreatedAt time.Time      `json:"created_at"`
	Done      time.Time      `json:"done_at,omitzero"`
	VMs       []CheckpointVM `json:"vms"`
}

// CheckpointVM is one VM's part of a checkpoint.
type CheckpointVM struct {
	Name   string `json:"name"`
	Host   string `json:"host"` // where it ran at the cut
	Dir    string `json:"dir"`
	Digest string `json:"digest,omitempty"`
	// Pause (live): how long the VM's vCPUs stood still for its snapshot
	// point.
	Pause time.Duration `json:"pause_ns,omitempty"`
	// SnapshotAt (live): when it ran again after its snapshot point.
	SnapshotAt time.Time `json:"snapshot_at,omitzero"`
}

// OpRecord is a journaled operation.
type OpRecord struct {
	Op     *machine.Op       `json:"op"`
	Result *machine.Result   `json:"result,omitempty"`
	Hosts  map[string]string `json:"hosts"` // name -> address, frozen at start
}

// Config configures a coordinator.
type Config struct {
	StateDir string
	// CheckpointDir is where hostds write checkpoints; it must be the
	// same path on every host (shared storage) for a restart elsewhere.
	CheckpointDir string
	// Lease bounds how long a VM stays paused without the coordinator.
	Lease           time.Duration
	PrepareTimeout  time.Duration
	StepTimeout     time.Duration
	TransferTimeout time.Duration
	// HostTLS is the client configuration towards hostds (mutual TLS).
	HostTLS *tls.Config
	// Signer is the coordinator certificate's key; it signs the grants
	// that let one hostd hand a VM to another (nil without TLS).
	Signer *pki.Signer
	Logger *slog.Logger
	// CrashAt makes the coordinator exit at once when an operation enters
	// this phase (after journaling it): a deterministic kill -9 for tests.
	CrashAt string
	Exit    func(code int)
}

// Coord is the coordinator.
type Coord struct {
	cfg   Config
	store Store
	log   *slog.Logger

	mu   sync.Mutex
	busy map[string]string // job -> op id
	wg   sync.WaitGroup
}

// New opens the store and resumes unfinished operations (they finish or
// roll back).
func New(cfg Config) (*Coord, error) {
	if cfg.StateDir == "" || cfg.CheckpointDir == "" {
		return nil, fmt.Errorf("coord: state dir and checkpoint dir are required: %w", ErrInvalid)
	}
	if cfg.Lease == 0 {
		cfg.Lease = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	st, err := OpenBolt(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	c := &Coord{cfg: cfg, store: st, log: cfg.Logger, busy: map[string]string{}}
	recs, err := listAll[OpRecord](st, bucketOps)
	if err != nil {
		return nil, err
	}
	for _, rec := range recs {
		if rec.Result == nil && rec.Op != nil {
			c.recover(&rec)
		}
	}
	return c, nil
}

// recover drives an operation a previous coordinator left unfinished to
// its end (it finishes or rolls back); its job is busy until then.
func (c *Coord) recover(rec *OpRecord) {
	c.log.Warn("resuming an operation left by a previous coordinator", "op", rec.Op.ID, "kind", rec.Op.Kind,
		"job", rec.Op.Job, "phase", rec.Op.Phase)
	c.busy[rec.Op.Job] = rec.Op.ID
	acts := rec.Op.Recover(time.Now())
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.drive(context.Background(), rec, acts, nil)
	}()
}

// Wait waits for background operations (recovered ones) to end.
func (c *Coord) Wait() { c.wg.Wait() }

// Close closes the store.
func (c *Coord) Close() error { return c.store.Close() }

func newID(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + "-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// AddHost registers (or updates) a hostd.
func (c *Coord) AddHost(h Host) error {
	if h.Name == "" || h.Addr == "" {
		return fmt.Errorf("host: name and addr are required: %w", ErrInvalid)
	}
	return c.store.Put(bucketHosts, h.Name, h)
}

// Hosts lists the hosts.
func (c *Coord) Hosts() ([]Host, error) { return listAll[Host](c.store, bucketHosts) }

func (c *Coord) host(name string) (Host, error) {
	var h Host
	err := c.store.Get(bucketHosts, name, &h)
	return h, err
}

func (c *Coord) client(addr string) *hostd.Client { return hostd.NewClientTLS(addr, c.cfg.HostTLS) }

// CreateJob records a job; VMs with a spec are created and started on
// their hosts first (all or nothing).
func (c *Coord) CreateJob(ctx context.Context, j Job) (Job, error) {
	if err := validateJob(j); err != nil {
		return j, err
	}
	var old Job
	if err := c.store.Get(bucketJobs, j.Name, &old); err == nil {
		return j, fmt.Errorf("job %q: %w", j.Name, ErrExists)
	}
	seen := map[string]bool{}
	for _, vm := range j.VMs {
		if seen[vm.Name] {
			return j, fmt.Errorf("job %q: vm %q listed twice: %w", j.Name, vm.Name, ErrInvalid)
		}
		seen[vm.Name] = true
		if _, err := c.host(vm.Host); err != nil {
			return j, fmt.Errorf("job %q vm %q: host: %w", j.Name, vm.Name, err)
		}
		if other, err := c.jobOf(vm.Name); err == nil {
			return j, fmt.Errorf("vm %q is already in job %q: %w", vm.Name, other.Name, ErrExists)
		}
	}
	var created []JobVM
	undo := func() {
		for _, done := range created {
			dh, _ := c.host(done.Host)
			cl := c.client(dh.Addr)
			cl.Stop(ctx, done.Name, time.Second)
			cl.Delete(ctx, done.Name)
		}
	}
	for _, vm := range j.VMs {
		if vm.Spec == nil {
			continue
		}
		h, _ := c.host(vm.Host)
		spec := *vm.Spec
		spec.Name = vm.Name
		if _, err := c.client(h.Addr).Create(ctx, spec, true); err != nil {
			undo()
			return j, fmt.Errorf("job %q: create vm %q on %s: %w", j.Name, vm.Name, vm.Host, err)
		}
		created = append(created, vm)
	}
	j.Created = time.Now().UTC()
	if err := c.store.Put(bucketJobs, j.Name, j); err != nil {
		undo() // VMs of a job the coordinator does not know would run unmanaged
		return j, fmt.Errorf("job %q: journal write failed: %w", j.Name, err)
	}
	return j, nil
}

// validateJob checks the names a job brings: they become directories under
// the checkpoint root and on the hosts.
func validateJob(j Job) error {
	if err := names.Check("name", j.Name); err != nil {
		return fmt.Errorf("job: %w: %v", ErrInvalid, err)
	}
	if len(j.VMs) == 0 {
		return fmt.Errorf("job %q: field vms: at least one vm is required: %w", j.Name, ErrInvalid)
	}
	for i, vm := range j.VMs {
		if err := names.Check(fmt.Sprintf("vms[%d].name", i), vm.Name); err != nil {
			return fmt.Errorf("job %q: %w: %v", j.Name, ErrInvalid, err)
		}
	}
	return nil
}

// Jobs lists the jobs.
func (c *Coord) Jobs() ([]Job, error) { return listAll[Job](c.store, bucketJobs) }

// Job returns one job.
func (c *Coord) Job(name string) (Job, error) {
	var j Job
	err := c.store.Get(bucketJobs, name, &j)
	return j, err
}

func (c *Coord) jobOf(vm string) (Job, error) {
	jobs, err := c.Jobs()
	if err != nil {
		return Job{}, err
	}
	for _, j := range jobs {
		for _, v := range j.VMs {
			if v.Name == vm {
				return j, nil
			}
		}
	}
	return Job{}, fmt.Errorf("vm %q is in no job: %w", vm, ErrNotFound)
}

// Checkpoints lists checkpoints, newest first.
func (c *Coord) Checkpoints() ([]Checkpoint, error) {
	cks, err := listAll[Checkpoint](c.store, bucketCheckpoints)
	sort.Slice(cks, func(i, j int) bool { return cks[i].CreatedAt.After(cks[j].CreatedAt) })
	return cks, err
}

// CheckpointByID returns one checkpoint.
func (c *Coord) CheckpointByID(id string) (Checkpoint, error) {
	var ck Checkpoint
	err := c.store.Get(bucketCheckpoints, id, &ck)
	return ck, err
}

// RemoveCheckpoint deletes a checkpoint's files (through the hostds that
// wrote them) and its record.
func (c *Coord) RemoveCheckpoint(ctx context.Context, id string) error {
	ck, err := c.CheckpointByID(id)
	if err != nil {
		return err
	}
	if ck.Status == "in-progress" {
		return fmt.Errorf("checkpoint %s is being written: %w", id, ErrBusy)
	}
	for _, v := range ck.VMs {
		h, err := c.host(v.Host)
		if err != nil {
			return err
		}
		res, err := c.client(h.Addr).Step(ctx, hostd.StepRequest{ID: "rm/" + id + "/" + v.Name, Op: "rm-" + id,
			Kind: hostd.StepDeleteArtifacts, VM: v.Name, Save: &hostd.SaveArgs{Dir: v.Dir}})
		if err != nil {
			return err
		}
		if !res.OK {
			return fmt.Errorf("checkpoint %s: remove %s on %s: %s", id, v.Name, v.Host, res.Reason)
		}
	}
	return c.store.Delete(bucketCheckpoints, id)
}

// Ops lists journaled operations.
func (c *Coord) Ops() ([]OpRecord, error) { return listAll[OpRecord](c.store, bucketOps) }

// claim marks a job busy with an operation.
func (c *Coord) claim(job, op string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.busy[job]; ok {
		return fmt.Errorf("job %q: operation %s: %w", job, cur, ErrBusy)
	}
	c.busy[job] = op
	return nil
}

func (c *Coord) release(job string) {
	c.mu.Lock()
	delete(c.busy, job)
	c.mu.Unlock()
}

// options are an operation's options with the coordinator's timeouts.
func (c *Coord) options(o machine.Options) machine.Options {
	o.PrepareTimeout, o.StepTimeout, o.TransferTimeout = c.cfg.PrepareTimeout, c.cfg.StepTimeout, c.cfg.TransferTimeout
	return o
}

func (c *Coord) hostMap() (map[string]string, error) {
	hosts, err := c.Hosts()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, h := range hosts {
		m[h.Name] = h.Addr
	}
	return m, nil
}

// run starts an operation and drives it to the end.
func (c *Coord) run(ctx context.Context, kind machine.Kind, job Job, vms []machine.VM, opts machine.Options, progress ProgressFunc) (machine.Result, error) {
	id := newID("op")
	if err := c.claim(job.Name, id); err != nil {
		return machine.Result{}, err
	}
	rec, acts, err := c.begin(id, kind, job.Name, vms, c.options(opts))
	if err != nil {
		c.release(job.Name)
		return machine.Result{}, err
	}
	c.log.Info("operation starts", "op", id, "kind", kind, "job", job.Name, "vms", len(vms))
	res, err := c.drive(ctx, rec, acts, progress)
	switch {
	case err != nil && res.Done:
		return res, fmt.Errorf("%s of job %q: %w: it ended %s, but %w (a restarted coordinator repeats its closing steps)",
			kind, job.Name, ErrFailed, res.Outcome, err)
	case err != nil:
		return res, fmt.Errorf("%s of job %q: %w: %w", kind, job.Name, ErrFailed, err)
	case res.Outcome == machine.OutcomeAborted || res.Outcome == "":
		return res, fmt.Errorf("%s of job %q: %w: %s", kind, job.Name, ErrFailed, res.Reason)
	case kind == machine.KindCheckpoint && res.Checkpoint != machine.CheckpointComplete:
		return res, fmt.Errorf("%s of job %q: %w: checkpoint %s: %s (the job runs on)", kind, job.Name, ErrFailed, res.Checkpoint, res.Reason)
	}
	return res, nil
}

// begin makes an operation and its journal record; a checkpoint's
// catalog entry is written first, in progress.
func (c *Coord) begin(id string, kind machine.Kind, job string, vms []machine.VM, opts machine.Options) (*OpRecord, []machine.Action, error) {
	hosts, err := c.hostMap()
	if err != nil {
		return nil, nil, err
	}
	op, acts, err := machine.New(id, kind, job, vms, opts, time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	rec := &OpRecord{Op: op, Hosts: hosts}
	if kind != machine.KindCheckpoint {
		return rec, acts, nil
	}
	ck := Checkpoint{ID: opts.CheckpointID, Job: job, Op: id, Status: "in-progress", CreatedAt: time.Now().UTC()}
	for _, v := range vms {
		dir, err := c.ckDir(opts.CheckpointID, v.Name)
		if err != nil {
			return nil, nil, err
		}
		ck.VMs = append(ck.VMs, CheckpointVM{Name: v.Name, Host: v.Host, Dir: dir})
	}
	if err := c.store.Put(bucketCheckpoints, ck.ID, ck); err != nil {
		c.log.Error("journal write failed: operation refused", "op", id, "job", job, "err", err)
		return nil, nil, fmt.Errorf("%s of job %q: %w: journal write failed: %v", kind, job, ErrFailed, err)
	}
	return rec, acts, nil
}

// ckDir is where a VM's part of a checkpoint goes; built from names, it is
// checked to lie inside the checkpoint root.
func (c *Coord) ckDir(ck, vm string) (string, error) {
	dir, err := names.Join(c.cfg.CheckpointDir, ck, vm)
	if err != nil {
		return "", fmt.Errorf("checkpoint %s vm %q: %w: %v", ck, vm, ErrInvalid, err)
	}
	return dir, nil
}

// afterOp records where the job's VMs are now.
func (c *Coord) afterOp(rec *OpRecord, res machine.Result) {
	j, err := c.Job(res.Job)
	if err != nil {
		return
	}
	changed := false
	for _, r := range res.VMs {
		if r.Host == "" || r.Outcome == machine.OutcomeLost {
			continue
		}
		for i := range j.VMs {
			if j.VMs[i].Name == r.Name && j.VMs[i].Host != r.Host {
				j.VMs[i].Host = r.Host
				changed = true
			}
		}
	}
	if changed {
		if err := c.store.Put(bucketJobs, j.Name, j); err != nil {
			c.log.Error("journal write failed: the job's placement is not recorded", "job", j.Name, "err", err)
		}
	}
}

// CheckpointOptions control a job checkpoint.
type CheckpointOptions struct {
	// Live copies each VM while it runs and pauses it only for its
	// snapshot point (hostd's live.go); the checkpoint is complete once
	// every stream is written.
	Live bool `json:"live"`
	// Bandwidth caps each live stream (bytes/s; 0: none).
	Bandwidth int64 `json:"bandwidth,omitempty"`
}

// Checkpoint checkpoints every VM of a job together (a consistent cut).
func (c *Coord) Checkpoint(ctx context.Context, job string, o CheckpointOptions, progress ProgressFunc) (machine.Result, error) {
	j, err := c.Job(job)
	if err != nil {
		return machine.Result{}, err
	}
	var vms []machine.VM
	for _, v := range j.VMs {
		vms = append(vms, machine.VM{Name: v.Name, Host: v.Host})
	}
	return c.run(ctx, machine.KindCheckpoint, j, vms, machine.Options{CheckpointID: newID(job), Live: o.Live, Bandwidth: o.Bandwidth}, progress)
}

// RestartOptions control Restart.
type RestartOptions struct {
	Checkpoint   string   `json:"checkpoint,omitempty"` // default: the job's newest complete one
	ExcludeHosts []string `json:"exclude_hosts,omitempty"`
}

// Restart restores every VM of a job from a checkpoint, on its host or,
// when that host is excluded, on another host with room.
func (c *Coord) Restart(ctx context.Context, job string, opts RestartOptions, progress ProgressFunc) (machine.Result, error) {
	j, err := c.Job(job)
	if err != nil {
		return machine.Result{}, err
	}
	var ck Checkpoint
	if opts.Checkpoint != "" {
		if ck, err = c.CheckpointByID(opts.Checkpoint); err != nil {
			return machine.Result{}, err
		}
		if ck.Job != job {
			return machine.Result{}, fmt.Errorf("checkpoint %s belongs to job %q, not %q: %w", ck.ID, ck.Job, job, ErrInvalid)
		}
	} else {
		cks, _ := c.Checkpoints()
		for _, x := range cks {
			if x.Job == job && x.Status == "complete" {
				ck = x
				break
			}
		}
		if ck.ID == "" {
			return machine.Result{}, fmt.Errorf("job %q has no complete checkpoint: %w", job, ErrNotFound)
		}
	}
	if ck.Status != "complete" {
		return machine.Result{}, fmt.Errorf("checkpoint %s is %s, not complete: %w", ck.ID, ck.Status, ErrInvalid)
	}
	// Nothing of the job may still run: two copies must never run.
	for _, v := range j.VMs {
		h, err := c.host(v.Host)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.client(h.Addr).Status(sctx, v.Name)
		cancel()
		if err == nil && st.State != "stopped" {
			return machine.Result{}, fmt.Errorf("vm %q still runs on %s (%s): stop the job first: %w", v.Name, v.Host, st.State, ErrBusy)
		}
	}
	load, err := c.placement(ctx, opts.ExcludeHosts)
	if err != nil {
		return machine.Result{}, err
	}
	var vms []machine.VM
	for _, v := range ck.VMs {
		m := machine.VM{Name: v.Name, Host: v.Host}
		if slices.Contains(opts.ExcludeHosts, v.Host) || load[v.Host] == nil {
			dest, err := pick(load, v.Host)
			if err != nil {
				return machine.Result{}, fmt.Errorf("vm %q: %w", v.Name, err)
			}
			m.Dest = dest
		}
		vms = append(vms, m)
	}
	return c.run(ctx, machine.KindRestart, j, vms, machine.Options{CheckpointID: ck.ID}, progress)
}

// hostLoad is a candidate host and how many VMs it runs.
type hostLoad struct {
	name  string
	vms   int
	limit int
}

// placement lists reachable hosts (not excluded) with their load.
func (c *Coord) placement(ctx context.Context, exclude []string) (map[string]*hostLoad, error) {
	hosts, err := c.Hosts()
	if err != nil {
		return nil, err
	}
	out := map[string]*hostLoad{}
	for _, h := range hosts {
		if slices.Contains(exclude, h.Name) {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		vms, err := c.client(h.Addr).List(lctx)
		cancel()
		if err != nil {
			continue // unreachable: not a candidate
		}
		n := 0
		for _, v := range vms {
			if v.State != "stopped" {
				n++
			}
		}
		out[h.Name] = &hostLoad{name: h.Name, vms: n, limit: h.MaxVMs}
	}
	return out, nil
}

// pick chooses the least loaded host with room other than not.
func pick(load map[string]*hostLoad, not string) (string, error) {
	var best *hostLoad
	for _, l := range load {
		if l.name == not || (l.limit > 0 && l.vms >= l.limit) {
			continue
		}
		if best == nil || l.vms < best.vms || l.vms == best.vms && l.name < best.name {
			best = l
		}
	}
	if best == nil {
		return "", ErrNoCapacity
	}
	best.vms++
	return best.name, nil
}

// MigrateOptions control Migrate.
type MigrateOptions struct {
	To   []string `json:"to"`
	Live bool     `json:"live,omitempty"`
	// DependencyAware freezes each guest's untainted processes while it
	// migrates (implies Live).
	DependencyAware bool `json:"dependency_aware,omitempty"`
}

// Migrate moves a job (or one VM of it) to the given hosts, round-robin.
func (c *Coord) Migrate(ctx context.Context, target string, opts MigrateOptions, progress ProgressFunc) (machine.Result, error) {
	if len(opts.To) == 0 {
		return machine.Result{}, fmt.Errorf("migrate: --to is missing: %w", ErrInvalid)
	}
	for _, h := range opts.To {
		if _, err := c.host(h); err != nil {
			return machine.Result{}, fmt.Errorf("migrate to %s: %w", h, err)
		}
	}
	j, err := c.Job(target)
	only := ""
	if err != nil {
		if j, err = c.jobOf(target); err != nil {
			return machine.Result{}, fmt.Errorf("%q is neither a job nor a vm of one: %w", target, ErrNotFound)
		}
		only = target
	}
	var vms []machine.VM
	i := 0
	for _, v := range j.VMs {
		if only != "" && v.Name != only {
			continue
		}
		dest := opts.To[i%len(opts.To)]
		i++
		if dest == v.Host {
			dest = ""
		}
		vms = append(vms, machine.VM{Name: v.Name, Host: v.Host, Dest: dest})
	}
	return c.run(ctx, machine.KindMigrate, j, vms, machine.Options{Live: opts.Live || opts.DependencyAware,
		Freeze: opts.DependencyAware}, progress)
}

// Evacuate moves every VM off a host; a job spanning the host is moved as
// a job (its other VMs pause with it for a consistent cut).
func (c *Coord) Evacuate(ctx context.Context, host string, live bool, progress ProgressFunc) ([]machine.Result, error) {
	if _, err := c.host(host); err != nil {
		return nil, err
	}
	jobs, err := c.Jobs()
	if err != nil {
		return nil, err
	}
	load, err := c.placement(ctx, []string{host})
	if err != nil {
		return nil, err
	}
	var results []machine.Result
	var firstErr error
	for _, j := range jobs {
		var vms []machine.VM
		moving := false
		for _, v := range j.VMs {
			m := machine.VM{Name: v.Name, Host: v.Host}
			if v.Host == host {
				dest, err := pick(load, host)
				if err != nil {
					return results, fmt.Errorf("evacuate %s: vm %q: %w", host, v.Name, err)
				}
				m.Dest, moving = dest, true
			}
			vms = append(vms, m)
		}
		if !moving {
			continue
		}
		res, err := c.run(ctx, machine.KindEvacuate, j, vms, machine.Options{Live: live}, progress)
		results = append(results, res)
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return results, firstErr
}

// Status is the cluster as the hostds report it.
type Status struct {
	Hosts []HostStatus `json:"hosts"`
	Jobs  []JobStatus  `json:"jobs"`
}

// HostStatus is one host's reachability.
type HostStatus struct {
	Host
	Up    bool   `json:"up"`
	Error string `json:"error,omitempty"`
	VMs   int    `json:"vms"`
}

// JobStatus is one job's VMs and their state.
type JobStatus struct {
	Name      string            `json:"name"`
	Operation string            `json:"operation,omitempty"`
	VMs       map[string]string `json:"vms"` // vm -> "host: state"
}

// Status queries every hostd.
func (c *Coord) Status(ctx context.Context) (Status, error) {
	var st Status
	hosts, err := c.Hosts()
	if err != nil {
		return st, err
	}
	states := map[string]string{}
	for _, h := range hosts {
		hs := HostStatus{Host: h}
		lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		vms, err := c.client(h.Addr).List(lctx)
		cancel()
		if err != nil {
			hs.Error = err.Error()
		} else {
			hs.Up = true
			for _, v := range vms {
				if v.State != "stopped" {
					hs.VMs++
				}
				states[h.Name+"/"+v.Name] = v.State
			}
		}
		st.Hosts = append(st.Hosts, hs)
	}
	jobs, err := c.Jobs()
	if err != nil {
		return st, err
	}
	c.mu.Lock()
	busy := maps(c.busy)
	c.mu.Unlock()
	for _, j := range jobs {
		js := JobStatus{Name: j.Name, Operation: busy[j.Name], VMs: map[string]string{}}
		for _, v := range j.VMs {
			s, ok := states[v.Host+"/"+v.Name]
			if !ok {
				s = "unknown"
			}
			js.VMs[v.Name] = v.Host + ": " + s
		}
		st.Jobs = append(st.Jobs, js)
	}
	return st, nil
}

func maps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ProgressFunc receives an operation's progress; it must not block.
type ProgressFunc func(Progress)

// Progress is one update of a running operation.
type Progress struct {
	Op    string `json:"op"`
	Phase string `json:"phase"`
	Done  int    `json:"done"`  // VMs finished with the phase's action
	Total int    `json:"total"` // VMs of the operation
}
