package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Role is what a certificate's holder is in a symvirt installation.
type Role string

// The roles; see the package documentation.
const (
	RoleCoord  Role = "coord"
	RoleHostd  Role = "hostd"
	RoleClient Role = "client"
	// RoleMonitor may only read the daemons' metrics, on their metrics
	// address; every API refuses it.
	RoleMonitor Role = "monitor"
)

// Roles lists every role, servers first.
var Roles = []Role{RoleCoord, RoleHostd, RoleClient, RoleMonitor}

var (
	// ErrNoCA: the CA certificate or key is missing.
	ErrNoCA = errors.New("no symvirt CA")
	// ErrCAExists: Init would replace an existing CA.
	ErrCAExists = errors.New("symvirt CA already exists")
	// ErrRole: a certificate carries no valid symvirt role, or a role that is
	// not allowed where it was presented.
	ErrRole = errors.New("symvirt role refused")
)

const (
	ouPrefix  = "symvirt-"
	uriScheme = "symvirt"
)

// ParseRole parses "coord", "hostd", "client" or "monitor".
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !r.Valid() {
		return "", fmt.Errorf("unknown role %q: want coord, hostd, client or monitor", s)
	}
	return r, nil
}

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool {
	return r == RoleCoord || r == RoleHostd || r == RoleClient || r == RoleMonitor
}

// IsServer reports whether certificates of this role may serve TLS.
func (r Role) IsServer() bool { return r == RoleCoord || r == RoleHostd }

func (r Role) String() string { return string(r) }

// OU is the subject OrganizationalUnit recording the role.
func (r Role) OU() string { return ouPrefix + string(r) }

// URI is the URI SAN recording the role and name: symvirt://role/name.
func (r Role) URI(name string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: string(r), Path: "/" + name}
}

// checkName validates a certificate name: 1..63 of [A-Za-z0-9._-], starting
// with a letter or a digit (safe in file names and URIs).
func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 63 {
		return fmt.Errorf("name %q: longer than 63 characters", name)
	}
	for i, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return fmt.Errorf("name %q: want letters, digits, '.', '_' or '-', starting with a letter or digit", name)
		}
	}
	return nil
}

// RoleOf returns the role and name a certificate records. It does not verify
// the certificate: use it on verified chains only (PeerRole does), or to
// describe a file. Both records (OU and URI SAN) must be present, unique and
// agree, and the name must be the CommonName; otherwise the error wraps ErrRole.
func RoleOf(cert *x509.Certificate) (Role, string, error) {
	var ouRole Role
	n := 0
	for _, ou := range cert.Subject.OrganizationalUnit {
		if s, ok := strings.CutPrefix(ou, ouPrefix); ok {
			ouRole = Role(s)
			n++
		}
	}
	if n != 1 {
		return "", "", fmt.Errorf("certificate %q: %d symvirt role OUs, want exactly one: %w", cert.Subject.CommonName, n, ErrRole)
	}
	var uri *url.URL
	n = 0
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme {
			uri = u
			n++
		}
	}
	if n != 1 {
		return "", "", fmt.Errorf("certificate %q: %d symvirt role URIs, want exactly one: %w", cert.Subject.CommonName, n, ErrRole)
	}
	uriRole, name := Role(uri.Host), strings.TrimPrefix(uri.Path, "/")
	switch {
	case !ouRole.Valid():
		return "", "", fmt.Errorf("certificate %q: unknown role %q: %w", cert.Subject.CommonName, ouRole, ErrRole)
	case uriRole != ouRole:
		return "", "", fmt.Errorf("certificate %q: role OU %q disagrees with URI %s: %w", cert.Subject.CommonName, ouRole, uri, ErrRole)
	case name != cert.Subject.CommonName || checkName(name) != nil || uri.User != nil || uri.RawQuery != "" || uri.Fragment != "":
		return "", "", fmt.Errorf("certificate %q: malformed role URI %s: %w", cert.Subject.CommonName, uri, ErrRole)
	}
	return ouRole, name, nil
}
