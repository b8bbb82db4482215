package hostd

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
)

func unitHost(t *testing.T, cfg Config) *Host {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// sampleManifest is a well-formed manifest with one disk, written (with its
// files) into a new directory by h.
func sampleManifest(t *testing.T, h *Host) (string, Manifest) {
	t.Helper()
	dir := t.TempDir()
	m := Manifest{Version: 1, VM: "v1", CreatedAt: time.Now().UTC(),
		Spec: Spec{Name: "v1", Memory: 64, Kernel: "/boot/vmlinuz",
			Disks: []Disk{{ID: "d0", Path: "disk-d0.raw", Format: "raw"}}},
		Files: []FileDigest{
			{Name: stateName, Role: "state", Size: 1, SHA256: strings.Repeat("0", 64)},
			{Name: "disk-d0.raw", Role: "disk", ID: "d0", Size: 1, SHA256: strings.Repeat("1", 64)},
		}}
	if err := h.writeManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	return dir, m
}

// A hostd without TLS files makes a CA of its own once, root-only, and
// signs with it; a checkpoint it wrote verifies on it and on no other host.
func TestLocalPKISignsAndVerifies(t *testing.T) {
	state := t.TempDir()
	h := unitHost(t, Config{StateDir: state})
	for path, want := range map[string]os.FileMode{
		filepath.Join(state, "pki"):                    0o700,
		filepath.Join(state, "pki", pki.CAKeyFile):     0o600,
		filepath.Join(state, "pki", "hostd-local.key"): 0o600,
	} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want mode %v", path, st, err, want)
		}
	}
	dir, m := sampleManifest(t, h)
	got, err := h.verifiedManifest(dir)
	if err != nil || got.VM != m.VM || len(got.Files) != 2 {
		t.Fatalf("own manifest: %+v %v", got, err)
	}
	// The same state dir again: the same CA (made once).
	h.Close()
	if _, err := unitHost(t, Config{StateDir: state}).verifiedManifest(dir); err != nil {
		t.Fatalf("after a restart of hostd: %v", err)
	}
	other := unitHost(t, Config{})
	if _, err := other.verifiedManifest(dir); !errors.Is(err, ErrUnauthorized) || !errors.Is(err, pki.ErrSignature) {
		t.Fatalf("another host's local CA: %v, want ErrUnauthorized", err)
	}
}

// clusterPKI is a CA with hostd certificates a and b, a coordinator's and a
// client's.
func clusterPKI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		role pki.Role
		name string
	}{{pki.RoleHostd, "a"}, {pki.RoleHostd, "b"}, {pki.RoleCoord, "coord"}, {pki.RoleClient, "admin"}} {
		if _, _, err := pki.Issue(dir, c.role, c.name, nil, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func tlsConfig(dir, name string) Config {
	cert, key := pki.CertPaths(dir, pki.RoleHostd, name)
	return Config{TLSCert: cert, TLSKey: key, TLSCA: filepath.Join(dir, pki.CACertFile)}
}

// resign replaces dir's signature with one by role/name of the PKI in pkiDir.
func resign(t *testing.T, dir, pkiDir string, role pki.Role, name string) {
	t.Helper()
	s, err := pki.LoadSigner(pki.CertPaths(pkiDir, role, name))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.Sign(manifestDomain, data)
	if err != nil {
		t.Fatal(err)
	}
	sigData, _ := json.Marshal(sig)
	if err := os.WriteFile(filepath.Join(dir, manifestSigName), sigData, 0o600); err != nil {
		t.Fatal(err)
	}
}

// With one cluster CA, host b verifies what host a signed, and what the
// coordinator signs; not a manifest changed after signing, an unsigned one,
// one signed by a client certificate or by another CA's hostd.
func TestManifestSignatureAcrossHosts(t *testing.T) {
	ca := clusterPKI(t)
	a, b := unitHost(t, tlsConfig(ca, "a")), unitHost(t, tlsConfig(ca, "b"))
	dir, _ := sampleManifest(t, a)
	if _, err := b.verifiedManifest(dir); err != nil {
		t.Fatalf("b verifies a's manifest: %v", err)
	}
	resign(t, dir, ca, pki.RoleCoord, "coord")
	if _, err := b.verifiedManifest(dir); err != nil {
		t.Fatalf("signed by the coordinator: %v", err)
	}
	refused := func(what string) {
		t.Helper()
		_, err := b.verifiedManifest(dir)
		if !errors.Is(err, ErrUnauthorized) || !errors.Is(err, pki.ErrSignature) {
			t.Fatalf("%s: %v, want ErrUnauthorized", what, err)
		}
		t.Logf("%s: %v", what, err)
	}
	resign(t, dir, ca, pki.RoleClient, "admin")
	refused("signed by a client certificate")
	other := clusterPKI(t)
	resign(t, dir, other, pki.RoleHostd, "a")
	refused("signed by another CA's hostd a")
	resign(t, dir, ca, pki.RoleHostd, "a")
	path := filepath.Join(dir, manifestName)
	data, _ := os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(data), "disk-d0.raw", "../../etc/shadow", -1)), 0o600)
	refused("disk path changed after signing")
	os.WriteFile(path, data, 0o600)
	os.Remove(filepath.Join(dir, manifestSigName))
	refused("unsigned")
}

// A hostd's certificate and CA go together, and must agree.
func TestManifestKeysConfig(t *testing.T) {
	ca := clusterPKI(t)
	cfg := tlsConfig(ca, "a")
	cfg.TLSCA, cfg.StateDir, cfg.Logger = "", t.TempDir(), slog.New(slog.DiscardHandler)
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Fatalf("cert without CA: %v", err)
	}
	cfg.TLSCA = filepath.Join(clusterPKI(t), pki.CACertFile)
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("cert of another CA: %v", err)
	}
	cfg = tlsConfig(ca, "a")
	cfg.TLSCert, cfg.TLSKey = pki.CertPaths(ca, pki.RoleClient, "admin")
	cfg.StateDir, cfg.Logger = t.TempDir(), slog.New(slog.DiscardHandler)
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "want a hostd one") {
		t.Fatalf("client cert: %v", err)
	}
}
