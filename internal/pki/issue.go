package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/symvirt/symvirt/internal/atomicfile"
)

// File names in a PKI directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// CAValidity is how long a CA made by Init is valid.
const CAValidity = 10 * 365 * 24 * time.Hour

// clockSkew backdates NotBefore so that a peer whose clock is slightly behind
// accepts a certificate issued just now.
const clockSkew = 5 * time.Minute

// InitOptions tune Init.
type InitOptions struct {
	// Force replaces an existing CA. Every certificate the old CA issued
	// stops being trusted.
	Force bool
}

// CertPaths returns the certificate and key paths of role/name in dir.
func CertPaths(dir string, role Role, name string) (certPath, keyPath string) {
	base := filepath.Join(dir, string(role)+"-"+name)
	return base + ".crt", base + ".key"
}

// Init creates a CA (ECDSA P-256, valid 10 years) in dir/ca.crt and
// dir/ca.key, creating dir (0700) if needed. It refuses, with an error
// wrapping ErrCAExists, if either file exists, unless opts.Force.
func Init(dir string, opts InitOptions) error {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if !opts.Force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("pki: %s exists; refusing to replace the CA (certs init --force replaces it and invalidates every certificate it issued): %w", p, ErrCAExists)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("pki: %w", err)
			}
		}
	}
	if err := ensureDir(dir); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// A per-CA suffix tells CAs apart in "certs show" and in logs.
		Subject:               pkix.Name{CommonName: "symvirt CA " + hex.EncodeToString(serial.Bytes()[:4]), Organization: []string{"symvirt"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // signs leaves only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("pki: create CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	// Key first: a crash in between leaves a key without a certificate,
	// which the next Init (or Issue) reports, never a certificate whose key
	// is lost. Without Force the key is linked into place, so that of two
	// concurrent Inits only one wins.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600, !opts.Force); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("pki: %s exists; refusing to replace the CA (certs init --force replaces it): %w", keyPath, ErrCAExists)
		}
		return err
	}
	return writeFileAtomic(certPath, pemBlock("CERTIFICATE", der), 0o644, false)
}

// Issue creates a key and a certificate for role/name signed by the CA in
// dir, valid from now for validity, and writes them to dir/<role>-<name>.crt
// and .key (replacing an earlier pair). Server roles get hosts (DNS names or IP
// addresses) plus localhost, 127.0.0.1 and ::1 as SANs; client certificates
// take no hosts. The validity must end before the CA expires.
func Issue(dir string, role Role, name string, hosts []string, validity time.Duration) (certPath, keyPath string, err error) {
	if validity <= 0 {
		return "", "", fmt.Errorf("pki: issue %s/%s: validity %s: want a positive duration", role, name, validity)
	}
	now := time.Now()
	return issue(dir, role, name, hosts, now.Add(-clockSkew), now.Add(validity))
}

// issue is Issue with an explicit validity window; tests use it to make
// certificates that have already expired.
func issue(dir string, role Role, name string, hosts []string, notBefore, notAfter time.Time) (certPath, keyPath string, err error) {
	if !role.Valid() {
		return "", "", fmt.Errorf("pki: issue: unknown role %q: want coord, hostd, client or monitor", role)
	}
	if err := checkName(name); err != nil {
		return "", "", fmt.Errorf("pki: issue %s: %w", role, err)
	}
	what := string(role) + "/" + name
	if !notAfter.After(notBefore) {
		return "", "", fmt.Errorf("pki: issue %s: empty validity window", what)
	}
	tmpl := &x509.Certificate{
		Subject: pkix.Name{
			CommonName:         name,
			Organization:       []string{"symvirt"},
			OrganizationalUnit: []string{role.OU()},
		},
		URIs:                  []*url.URL{role.URI(name)},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	if role.IsServer() {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames, tmpl.IPAddresses, err = parseHosts(append([]string{"localhost", "127.0.0.1", "::1"}, hosts...))
		if err != nil {
			return "", "", fmt.Errorf("pki: issue %s: %w", what, err)
		}
	} else {
		if len(hosts) > 0 {
			return "", "", fmt.Errorf("pki: issue %s: a %s certificate cannot serve TLS and takes no hosts (got %s)", what, role, strings.Join(hosts, ", "))
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}

	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return "", "", fmt.Errorf("pki: issue %s: %w", what, err)
	}
	if now := time.Now(); now.After(caCert.NotAfter) {
		return "", "", fmt.Errorf("pki: issue %s: the CA in %s expired on %s", what, dir, caCert.NotAfter.Format(time.DateOnly))
	}
	if notAfter.After(caCert.NotAfter) {
		return "", "", fmt.Errorf("pki: issue %s: validity until %s outlasts the CA, which expires on %s",
			what, notAfter.Format(time.DateOnly), caCert.NotAfter.Format(time.DateOnly))
	}
	if tmpl.SerialNumber, err = randomSerial(); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("pki: issue %s: generate key: %w", what, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", fmt.Errorf("pki: issue %s: sign: %w", what, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return "", "", err
	}
	certPath, keyPath = CertPaths(dir, role, name)
	// Key first: after a crash in between, the pair mismatches and
	// tls.LoadX509KeyPair says so; issuing again repairs it.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600, false); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(certPath, pemBlock("CERTIFICATE", der), 0o644, false); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// parseHosts splits SAN hosts into DNS names and IPs, dropping duplicates.
func parseHosts(hosts []string) (dns []string, ips []net.IP, err error) {
	seen := map[string]bool{}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); ip != nil {
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if err := checkDNSName(h); err != nil {
			return nil, nil, err
		}
		if !seen[h] {
			seen[h] = true
			dns = append(dns, h)
		}
	}
	return dns, ips, nil
}

func checkDNSName(h string) error {
	if h == "" {
		return errors.New("empty host name")
	}
	if len(h) > 253 {
		return fmt.Errorf("host %q: longer than 253 characters", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %q: want a DNS name or an IP address (no port, no scheme, no wildcard)", h)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host %q: want a DNS name or an IP address (no port, no scheme, no wildcard)", h)
			}
		}
	}
	return nil
}

// loadCA reads and checks the CA of dir; missing files wrap ErrNoCA.
func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certs, err := readCerts(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w in %s (run \"symvirt certs init\"): %w", ErrNoCA, dir, err)
		}
		return nil, nil, err
	}
	key, err := decodeKey(keyPath, keyPEM)
	if err != nil {
		return nil, nil, err
	}
	ca := certs[0]
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("%s: not a CA certificate", certPath)
	}
	if !key.PublicKey.Equal(ca.PublicKey) {
		return nil, nil, fmt.Errorf("%s does not belong to %s", keyPath, certPath)
	}
	return ca, key, nil
}

// readCerts reads the PEM certificates of a file; a missing file wraps ErrNoCA
// as well as fs.ErrNotExist (it is only ever a CA file here).
func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w (run \"symvirt certs init\")", ErrNoCA, err)
		}
		return nil, err
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// ParseCertsPEM parses every CERTIFICATE block of PEM data; there must be one.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func decodeKey(path string, data []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: no PEM PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", path)
	}
	return ek, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func randomSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return s.Add(s, big.NewInt(1<<32)), nil // positive, and at least 5 bytes for the CA name suffix
}

// ensureDir creates dir with mode 0700 if it does not exist. An existing
// directory is left as it is (it may be shared, such as /etc).
func ensureDir(dir string) error {
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("pki: %s: not a directory", dir)
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to path with mode durably (atomicfile); with
// noClobber it fails with fs.ErrExist if path exists.
func writeFileAtomic(path string, data []byte, mode fs.FileMode, noClobber bool) error {
	if err := ensureDir(filepath.Dir(path)); err != nil {
		return err
	}
	write := atomicfile.WriteFile
	if noClobber {
		write = atomicfile.WriteFileNew
	}
	if err := write(path, data, mode); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}
