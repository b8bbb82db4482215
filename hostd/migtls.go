package hostd

import "fmt"

// migrationDefaults fills and checks the migration stream settings.
func (c *Config) migrationDefaults() error {
	if c.MigrationPorts == "" {
		c.MigrationPorts = defaultMigrationPorts
	}
	if _, err := parsePortRange(c.MigrationPorts); err != nil {
		return err
	}
	if set, all := c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "", c.TLSCert != "" && c.TLSKey != "" && c.TLSCA != ""; set && !all {
		return fmt.Errorf("config: tls_cert, tls_key and tls_ca go together (have %q, %q, %q)", c.TLSCert, c.TLSKey, c.TLSCA)
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

func (c *Config) migrationPorts() portRange {
	r, _ := parsePortRange(c.MigrationPorts)
	return r
}

func (c *Config) migrationTLS() bool { return c.MigrationTLS != nil && *c.MigrationTLS }
