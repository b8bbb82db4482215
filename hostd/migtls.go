package hostd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/qmp"
)

// migTLSObject is the QOM id of the TLS credentials a migrating QEMU
// uses; migAuthzObject that of the rule a destination checks its source's
// certificate with.
const (
	migTLSObject   = "symvirt-migtls"
	migAuthzObject = "symvirt-migauthz"
)

// hostdDNs match, in QEMU's glob syntax, the subject of a hostd
// certificate as gnutls prints it (legacy order, as QEMU 7.2's gnutls
// 3.7 does, and RFC 4514 order): a coordinator's or a client's
// certificate, signed by the same CA, cannot feed a destination.
var hostdDNs = []string{"O=symvirt,OU=" + pki.RoleHostd.OU() + ",CN=*", "CN=*,OU=" + pki.RoleHostd.OU() + ",O=symvirt"}

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

// migrationTLSDir lays out this hostd's certificate, key and CA the way
// QEMU's tls-creds-x509 reads them (one directory, fixed names; the same
// pair serves both endpoints: hostd certificates allow server and client
// auth). It is rewritten at every migration, so renewed files take effect.
func (h *Host) migrationTLSDir() (string, error) {
	dir := filepath.Join(h.cfg.StateDir, "migration-tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", err
	}
	var cert, key, ca []byte
	for _, f := range []struct {
		path string
		dst  *[]byte
	}{{h.cfg.TLSCert, &cert}, {h.cfg.TLSKey, &key}, {h.cfg.TLSCA, &ca}} {
		data, err := os.ReadFile(f.path)
		if err != nil {
			return "", fmt.Errorf("migration tls: %w", err)
		}
		*f.dst = data
	}
	files := map[string][]byte{"ca-cert.pem": ca, "server-cert.pem": cert, "server-key.pem": key,
		"client-cert.pem": cert, "client-key.pem": key}
	for name, data := range files {
		if err := writePrivate(filepath.Join(dir, name), data); err != nil {
			return "", fmt.Errorf("migration tls: %w", err)
		}
	}
	return dir, nil
}

// writePrivate replaces path with data, mode 0600, atomically (a
// concurrent migration may be reading it).
func writePrivate(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// setMigrationTLS makes the next migration stream of mon mutual TLS with
// the cluster CA: endpoint "server" on a destination (only a CA-signed
// source may feed it), "client" on a source, which checks the
// destination's certificate against hostname. A no-op when the config
// turns migration TLS off.
func (vm *VM) setMigrationTLS(ctx context.Context, mon *qmp.Client, endpoint, hostname string) error {
	if !vm.h.cfg.migrationTLS() {
		return nil
	}
	dir, err := vm.h.migrationTLSDir()
	if err != nil {
		return err
	}
	// Left by an earlier migration of this QEMU that failed.
	mon.Execute(ctx, "object-del", map[string]any{"id": migTLSObject}, nil)
	mon.Execute(ctx, "object-del", map[string]any{"id": migAuthzObject}, nil)
	if err := mon.Execute(ctx, "object-add", map[string]any{"qom-type": "tls-creds-x509", "id": migTLSObject,
		"dir": dir, "endpoint": endpoint, "verify-peer": true}, nil); err != nil {
		return fmt.Errorf("migration tls credentials (%s): %w", dir, err)
	}
	params := map[string]any{"tls-creds": migTLSObject}
	if endpoint == "server" {
		var rules []map[string]any
		for _, dn := range hostdDNs {
			rules = append(rules, map[string]any{"match": dn, "policy": "allow", "format": "glob"})
		}
		if err := mon.Execute(ctx, "object-add", map[string]any{"qom-type": "authz-list", "id": migAuthzObject,
			"policy": "deny", "rules": rules}, nil); err != nil {
			return fmt.Errorf("migration tls authorization: %w", err)
		}
		params["tls-authz"] = migAuthzObject
	}
	if hostname != "" {
		params["tls-hostname"] = hostname
	}
	if err := mon.MigrateSetParameters(ctx, params); err != nil {
		return fmt.Errorf("migration tls: %w", err)
	}
	return nil
}

// clearMigrationTLS drops the credentials once a migration is over: QEMU
// 7.2 would wrap every later stream in TLS, checkpoints to a file too.
func (vm *VM) clearMigrationTLS(ctx context.Context, mon *qmp.Client) {
	if !vm.h.cfg.migrationTLS() {
		return
	}
	if err := mon.MigrateSetParameters(ctx, map[string]any{"tls-creds": "", "tls-hostname": "", "tls-authz": ""}); err != nil {
		vm.log.Debug("clear migration tls", "err", err)
		return
	}
	mon.Execute(ctx, "object-del", map[string]any{"id": migTLSObject}, nil)
	mon.Execute(ctx, "object-del", map[string]any{"id": migAuthzObject}, nil)
}
