package hostd

import (
	"fmt"
	"time"

	"github.com/symvirt/symvirt/hostd/migstream"
)

// defaultMigrationDowntime (KVM) leaves a service that asks every 100 ms
// room for the switch to its destination after QEMU's own pause.
const defaultMigrationDowntime = 50 * time.Millisecond

// migrationDefaults fills and checks the migration stream settings.
func (c *Config) migrationDefaults() error {
	if c.MigrationPorts == "" {
		c.MigrationPorts = migstream.DefaultPorts
	}
	if _, err := migstream.ParsePortRange(c.MigrationPorts); err != nil {
		return fmt.Errorf("config: migration_ports %w", err)
	}
	if set, all := c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "", c.TLSCert != "" && c.TLSKey != "" && c.TLSCA != ""; set && !all {
		return fmt.Errorf("config: tls_cert, tls_key and tls_ca go together (have %q, %q, %q)", c.TLSCert, c.TLSKey, c.TLSCA)
	}
	if c.MigrationDowntime < 0 {
		return fmt.Errorf("config: migration_downtime_limit %v is negative", c.MigrationDowntime)
	}
	if c.MigrationDowntime == 0 && c.Accel == "kvm" {
		c.MigrationDowntime = defaultMigrationDowntime
	}
	if c.MigrationChannels < 0 || c.MigrationChannels > maxMigrationChannels {
		return fmt.Errorf("config: migration_channels %d is not between 0 and %d", c.MigrationChannels, maxMigrationChannels)
	}
	if c.MigrationChannels == 0 {
		c.MigrationChannels = defaultMigrationChannels
	}
	if c.MigrationTLS == nil {
		on := c.TLSCert != ""
		c.MigrationTLS = &on
	}
	if *c.MigrationTLS && (c.TLSCert == "" || c.TLSKey == "" || c.TLSCA == "") {
		return fmt.Errorf("config: migration_tls needs tls_cert, tls_key and tls_ca (--tls-cert, --tls-key, --tls-ca)")
	}
	return nil
}

func (c *Config) migrationPorts() migstream.PortRange {
	r, _ := migstream.ParsePortRange(c.MigrationPorts)
	return r
}

func (c *Config) migrationTLS() bool { return c.MigrationTLS != nil && *c.MigrationTLS }
