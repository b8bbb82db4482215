package hostd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/internal/atomicfile"
	"github.com/symvirt/symvirt/internal/pki"
)

// A checkpoint lives on storage that others may write to, so its manifest
// (which names the guest's disks, kernel and devices, and the digest of
// every file) is signed by the hostd that wrote it, and a restore uses no
// field of it before the signature verifies against the CA.
const (
	manifestSigName = "manifest.sig"
	manifestDomain  = "symvirt-manifest-v1"
)

// localPKIValidity is how long the certificate of a hostd's own CA (made
// when it has no TLS files) is valid; the CA itself is valid 10 years.
const localPKIValidity = 9 * 365 * 24 * time.Hour

// manifestKeys signs the manifests this hostd writes and verifies the ones
// it restores.
type manifestKeys struct {
	signer   *pki.Signer
	verifier *pki.Verifier
}

// loadManifestKeys loads the hostd's certificate and the CA from the
// config, or, with none configured, from a CA of this hostd's own in
// STATE_DIR/pki (made once), whose checkpoints verify on this host only.
func loadManifestKeys(cfg Config) (*manifestKeys, error) {
	cert, key, ca := cfg.TLSCert, cfg.TLSKey, cfg.TLSCA
	if cert == "" { // setDefaults saw to it that all three go together
		var err error
		if cert, key, ca, err = localPKI(filepath.Join(cfg.StateDir, "pki")); err != nil {
			return nil, err
		}
	}
	s, err := pki.LoadSigner(cert, key)
	if err != nil {
		return nil, fmt.Errorf("config: checkpoint signing key: %w", err)
	}
	if s.Role() != pki.RoleHostd {
		return nil, fmt.Errorf("config: %s is a %s certificate, want a hostd one", cert, s.Role())
	}
	v, err := pki.LoadVerifier(ca)
	if err != nil {
		return nil, fmt.Errorf("config: checkpoint verification: %w", err)
	}
	// A certificate the CA does not vouch for would sign checkpoints no
	// host can restore: say so now, not at the first restore.
	probe := []byte("probe")
	sig, err := s.Sign(manifestDomain, probe)
	if err == nil {
		_, _, err = v.Verify(manifestDomain, probe, sig, pki.RoleHostd)
	}
	if err != nil {
		return nil, fmt.Errorf("config: %s does not verify against %s: %w", cert, ca, err)
	}
	return &manifestKeys{signer: s, verifier: v}, nil
}

// localPKI makes (once) a CA and a hostd certificate "local" in dir.
func localPKI(dir string) (cert, key, ca string, err error) {
	ca = filepath.Join(dir, pki.CACertFile)
	cert, key = pki.CertPaths(dir, pki.RoleHostd, "local")
	if _, err := os.Stat(ca); errors.Is(err, fs.ErrNotExist) {
		if err := pki.Init(dir, pki.InitOptions{}); err != nil {
			return "", "", "", fmt.Errorf("local checkpoint CA: %w", err)
		}
	}
	if _, err := os.Stat(cert); errors.Is(err, fs.ErrNotExist) {
		if _, _, err := pki.Issue(dir, pki.RoleHostd, "local", nil, localPKIValidity); err != nil {
			return "", "", "", fmt.Errorf("local checkpoint certificate: %w", err)
		}
	}
	return cert, key, ca, nil
}

// writeManifest signs m and writes its signature, then the manifest itself
// (last: a directory without one is incomplete). The signature is over the
// very bytes of manifest.json.
func (h *Host) writeManifest(dir string, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	sig, err := h.keys.signer.Sign(manifestDomain, data)
	if err != nil {
		return err
	}
	sigData, err := json.Marshal(sig)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, manifestSigName), sigData, 0o600); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, manifestName), data, 0o600)
}

// verifiedManifest reads a checkpoint's manifest and returns it only if
// its signature verifies against the CA (by a hostd or the coordinator)
// and every file it names is a plain name in dir.
func (h *Host) verifiedManifest(dir string) (Manifest, error) {
	data, err := manifest.ReadInDir(dir, manifestName)
	if errors.Is(err, fs.ErrNotExist) {
		return Manifest{}, fmt.Errorf("checkpoint %s: no manifest (incomplete or not a checkpoint): %w", dir, ErrNotFound)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	var sig pki.Signature
	sigData, err := manifest.ReadInDir(dir, manifestSigName)
	if err == nil {
		err = json.Unmarshal(sigData, &sig)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("checkpoint %s: manifest is not signed (%v): %w: %w", dir, err, ErrUnauthorized, pki.ErrSignature)
	}
	role, name, err := h.keys.verifier.Verify(manifestDomain, data, sig, pki.RoleHostd, pki.RoleCoord)
	if err != nil {
		return Manifest{}, fmt.Errorf("checkpoint %s: manifest refused: %w: %w", dir, ErrUnauthorized, err)
	}
	m, err := manifest.Parse(dir, data)
	if err != nil {
		return m, err
	}
	h.log.Info("checkpoint manifest verified", "dir", dir, "signer", string(role)+"/"+name)
	return m, nil
}
