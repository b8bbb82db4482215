package hostd

import (
	"bytes"
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
	"go.yaml.in/yaml/v3"
)

// Config is one host's configuration.
type Config struct {
	// StateDir holds one directory per VM; it survives hostd restarts,
	// which is how a restarted hostd re-adopts running VMs.
	StateDir string `yaml:"state_dir"`
	// QEMU is the emulator binary: by default $SYMVIRT_QEMU (how a test
	// suite or demo picks another QEMU for every hostd it starts), else
	// qemu-system-x86_64.
	QEMU string `yaml:"qemu"`
	// Accel is kvm, tcg, or auto (kvm when /dev/kvm opens, else tcg). The
	// default is tcg: a /dev/kvm that opens is not proof that KVM can run
	// guests (nested or restricted hosts), and kvm and tcg guests cannot
	// migrate to each other, so production sets kvm explicitly.
	Accel string `yaml:"accel"`
	// MigrationAddress is the address of this host that migration sources
	// connect to; incoming QEMUs listen on it.
	MigrationAddress string `yaml:"migration_address"`
	// MigrationPorts is the range ("LOW-HIGH") incoming QEMUs listen in;
	// a source refuses a destination's stream address outside its own.
	MigrationPorts string `yaml:"migration_ports"`
	// TLSCert, TLSKey and TLSCA are this hostd's certificate (symvirt
	// certs issue --role hostd), its key and the cluster CA. With them
	// the TCP API is mutual TLS and so, by default, is the migration
	// stream; checkpoint manifests are signed with the key and verified
	// against the CA. Without them hostd makes a CA of its own in
	// STATE_DIR/pki, so its checkpoints verify on this host only.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	TLSCA   string `yaml:"tls_ca"`
	// MigrationTLS turns TLS on the migration stream off ("false", for a
	// bench) or on; unset, it is on whenever TLSCert is set.
	MigrationTLS *bool `yaml:"migration_tls"`
	// MigrationKeepFrames false stops a migrating source from passing on
	// the frames its taps get while the VM is paused (frames_forward.go):
	// for a side-by-side measurement.
	MigrationKeepFrames *bool `yaml:"migration_keep_frames"`
	// MigrationIdleThread runs a migrating source's QEMU migration thread
	// under SCHED_IDLE until the last round (migprio.go); default true.
	MigrationIdleThread *bool `yaml:"migration_idle_thread"`
	// MigrationResumeBoost is how long a VM just moved here runs its QEMU
	// at a higher priority (moveboost.go); default 2s, 0: not at all.
	MigrationResumeBoost *time.Duration `yaml:"migration_resume_boost"`
	// MigrationResumeRealtime is how long, within the boost, a VM just
	// moved here runs its QEMU threads under SCHED_RR (moveboost.go); 0:
	// not at all.
	MigrationResumeRealtime time.Duration `yaml:"migration_resume_realtime"`
	// MigrationDowntime is the downtime-limit a live migration asks QEMU
	// for when its caller sets none (QEMU's own is 300 ms, a service's
	// whole pause budget); a step's DowntimeLimit overrides it. Zero: 50 ms
	// under KVM; under TCG, QEMU's own: a lower limit pre-copies longer,
	// and QEMU 7.2's TCG precopy misses guest writes (see LiveMode; a
	// guest panicked after a 50 ms migration).
	MigrationDowntime time.Duration `yaml:"migration_downtime_limit"`
	// MigrationChannels is how many connections a live migration's RAM
	// goes over (QEMU's multifd) when this host and its peer both run
	// QEMU 9 or later and migration TLS is off (migchannels.go): 0 is
	// the default (2), 1 one stream.
	MigrationChannels int `yaml:"migration_channels"`
	// Pools are this host's passthrough devices, by pool name; each entry
	// is a set of device properties (a VF's host address; a MAC in tests).
	Pools map[string][]map[string]string `yaml:"pools"`
	// StopTimeout bounds a graceful stop before QEMU is killed.
	StopTimeout time.Duration `yaml:"stop_timeout"`
	// GuestTimeout bounds a cooperation round with a guest.
	GuestTimeout time.Duration `yaml:"guest_timeout"`
	// DetachTimeout bounds the wait for the guest to eject a device.
	DetachTimeout time.Duration `yaml:"detach_timeout"`
	// LiveMode is how a live checkpoint copies a running VM: "precopy"
	// (copied while it runs, paused for its last pages), "snapshot"
	// (QEMU's background-snapshot), or "auto" (the default): precopy
	// under KVM, and under TCG with QEMU 10.0 or later; snapshot under
	// TCG with older ones, where QEMU 7.2's precopy loses guest writes
	// (TestPrecopyImageExactWhereAutoTakesIt; qemuversion.go).
	LiveMode string `yaml:"live_mode"`
	// LivePointRealtime runs a VM's QEMU threads under SCHED_RR (the
	// lowest priority) from the start of a precopy's snapshot point until
	// the VM runs again, at most 100 ms (snapshot.PointRealtime); default
	// false, for hosts with cores to spare.
	LivePointRealtime *bool `yaml:"live_point_realtime"`
	// liveAuto: LiveMode was auto, so the QEMU version may change it.
	liveAuto bool
	// RAMPopulate is when hostd allocates every page of a VM's RAM file
	// on /dev/shm (ramfill.go): "start" (the default: beside each new
	// QEMU, at the lowest priority; the file then takes all of guest RAM
	// from the start, and a checkpoint reads the zero pages it would
	// skip as holes: measured 0.1–0.25 s a 1–2 GiB save more, against
	// 0.4–2.4 s less a migration), "operation" (only when a migration or
	// a live checkpoint reads every page, paying for it then: denser hosts
	// of idle VMs), or "never".
	RAMPopulate string `yaml:"ram_populate"`
	// RAMPool is how much of the shared RAM of VMs that left this host
	// hostd keeps, zeroed, for VMs that arrive (rampool.go): a size ("4G",
	// the default), or "0" / "off".
	RAMPool string `yaml:"ram_pool"`
	// RAMPoolReserve is how much of it hostd fills with RAM files of its
	// own, zeroed, from its start and after each VM that arrives, so that the
	// first VMs to arrive on an idle host find one too: a size (at most
	// ram_pool), default none. That memory stays taken while the host has
	// room for it.
	RAMPoolReserve string `yaml:"ram_pool_reserve"`
	// ShmDir is the tmpfs that holds shared guest RAM files (hostd's own
	// 0700 directory in it): /dev/shm by default. On a tmpfs mounted with
	// huge=within_size (or always) the files are made of 2 MiB pages, and
	// hostd's passes over them (population, a checkpoint's copy, the pool's
	// clearing) walk 512 times fewer pages.
	ShmDir string `yaml:"shm_dir"`
	// ramPoolBytes and ramPoolReserve are RAMPool and RAMPoolReserve parsed.
	ramPoolBytes, ramPoolReserve int64
	// OpStepTimeout and OpTransferTimeout bound each step of a direct
	// (single-VM) operation; a transfer (save, migrate, restore) gets the
	// latter. Zero: 2 minutes and 30 minutes.
	OpStepTimeout     time.Duration `yaml:"op_step_timeout"`
	OpTransferTimeout time.Duration `yaml:"op_transfer_timeout"`
	// LocalDisks says this host's disk directories are not shared with
	// other hosts: a VM migrating away (migrate, evacuate) takes its
	// disks along, as with --copy-storage (mirror.go).
	LocalDisks bool `yaml:"local_disks"`
	// Policy confines the files and host devices a VM spec may use.
	Policy Policy `yaml:"policy"`
	// QEMUUser, when set, is the unprivileged user QEMU runs as after it
	// opened what it needs as root (-runas). Hot-plugging host devices
	// then needs them opened to that user (e.g. /dev/vfio/N).
	QEMUUser string `yaml:"qemu_user"`
	// MetricsAddress serves /metrics alone (metrics.go): plain HTTP on a
	// loopback address, or TLS for monitor certificates with TLSCert.
	MetricsAddress string `yaml:"metrics_address"`
	// Capacity is what this host offers its VMs (default: nproc and
	// MemTotal); UsageWindow is the span VM usage is averaged over,
	// sampled every UsageInterval, the guest asked for its memory every
	// UsageGuestInterval (usage.go).
	Capacity           Capacity      `yaml:"capacity"`
	UsageWindow        time.Duration `yaml:"usage_window"`
	UsageInterval      time.Duration `yaml:"usage_interval"`
	UsageGuestInterval time.Duration `yaml:"usage_guest_interval"`

	Logger *slog.Logger `yaml:"-"`
}

// LoadConfig reads a YAML host configuration.
func LoadConfig(path string) (Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func (c *Config) setDefaults() error {
	if c.StateDir == "" {
		return fmt.Errorf("config: state_dir is missing")
	}
	c.QEMU = cmp.Or(c.QEMU, os.Getenv("SYMVIRT_QEMU"), "qemu-system-x86_64")
	switch c.Accel {
	case "":
		c.Accel = "tcg"
	case "auto":
		c.Accel = "tcg"
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
			f.Close()
			c.Accel = "kvm"
		}
	case "kvm", "tcg":
	default:
		return fmt.Errorf("config: accel %q: want kvm, tcg or auto", c.Accel)
	}
	switch c.LiveMode {
	case "", "auto":
		c.LiveMode, c.liveAuto = "snapshot", true
		if c.Accel == "kvm" {
			c.LiveMode = "precopy"
		}
	case "precopy", "snapshot":
	default:
		return fmt.Errorf("config: live_mode %q: want precopy, snapshot or auto", c.LiveMode)
	}
	switch c.RAMPopulate = cmp.Or(c.RAMPopulate, populateAtStart); c.RAMPopulate {
	case populateAtStart, populateOnOperation, populateNever:
	default:
		return fmt.Errorf("config: ram_populate %q: want start, operation or never", c.RAMPopulate)
	}
	var err error
	if c.ramPoolBytes, c.ramPoolReserve, err = parseRAMPool(c.RAMPool, c.RAMPoolReserve); err != nil {
		return err
	}
	if c.ShmDir, err = qemu.CheckShmDir(cmp.Or(c.ShmDir, qemu.DefaultShmDir)); err != nil {
		return fmt.Errorf("config: shm_dir: %w", err)
	}
	c.MigrationAddress = cmp.Or(c.MigrationAddress, "127.0.0.1")
	c.moveDefaults()
	if c.LivePointRealtime == nil {
		rt := defaultLivePointRealtime
		c.LivePointRealtime = &rt
	}
	if err := c.migrationDefaults(); err != nil {
		return err
	}
	c.StopTimeout = cmp.Or(c.StopTimeout, 30*time.Second)
	c.GuestTimeout = cmp.Or(c.GuestTimeout, 30*time.Second)
	c.DetachTimeout = cmp.Or(c.DetachTimeout, 10*time.Second)
	if err := c.Policy.SetDefaults(c.StateDir); err != nil {
		return err
	}
	if c.QEMUUser != "" {
		if _, err := user.Lookup(c.QEMUUser); err != nil {
			return fmt.Errorf("config: qemu_user %q: %w", c.QEMUUser, err)
		}
	}
	if err := c.metricsConfig().Check(); err != nil {
		return fmt.Errorf("config: metrics_address: %w", err)
	}
	if err := c.usageDefaults(); err != nil {
		return err
	}
	c.Logger = cmp.Or(c.Logger, slog.Default())
	return nil
}
