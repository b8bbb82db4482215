package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
)

// ServerConfig returns a TLS 1.3 server configuration that presents
// certFile/keyFile (a coord or hostd certificate), requires a client
// certificate signed by the CA in caFile, and accepts only clients whose role
// is one of allow. A refused client fails the handshake with an error
// wrapping ErrRole that names it (the server sees it, e.g. in http.Server's
// ErrorLog; the client sees a bad-certificate alert).
func ServerConfig(certFile, keyFile, caFile string, allow ...Role) (*tls.Config, error) {
	if err := checkRoles("allow", allow, false); err != nil {
		return nil, err
	}
	pair, pool, err := loadPair(certFile, keyFile, caFile, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkPeer("client", cs, allow)
		},
	}, nil
}

// ClientConfig returns a TLS 1.3 client configuration that presents
// certFile/keyFile (any role), verifies the server against the CA in caFile
// (and its host name against the SANs, as usual: set ServerName if the dialled
// address is not one of them), and accepts only servers whose role is one of
// expect (coord or hostd). A refused server fails the handshake with an error
// wrapping ErrRole.
func ClientConfig(certFile, keyFile, caFile string, expect ...Role) (*tls.Config, error) {
	if err := checkRoles("expect", expect, true); err != nil {
		return nil, err
	}
	pair, pool, err := loadPair(certFile, keyFile, caFile, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkPeer("server", cs, expect)
		},
	}, nil
}

// PeerRole returns the role and name of the peer of a connection, read from
// its verified certificate chain (so only ever from a certificate signed by
// the CA); ok is false if there is none or it records no valid role. In an
// HTTP handler: pki.PeerRole(*r.TLS) (r.TLS is nil on plain HTTP).
func PeerRole(state tls.ConnectionState) (role Role, name string, ok bool) {
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return "", "", false
	}
	role, name, err := RoleOf(state.VerifiedChains[0][0])
	return role, name, err == nil
}

// checkPeer is the VerifyConnection of both sides: the chain has been
// verified by crypto/tls (or the handshake would have failed already); the
// peer's role must be one of allowed.
func checkPeer(side string, cs tls.ConnectionState, allowed []Role) error {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		// Only reachable if a caller loosened the config (ClientAuth,
		// InsecureSkipVerify): fail closed.
		return fmt.Errorf("pki: %s presented no verified certificate: %w", side, ErrRole)
	}
	role, name, err := RoleOf(cs.VerifiedChains[0][0])
	if err != nil {
		return fmt.Errorf("pki: %s refused: %w", side, err)
	}
	if !slices.Contains(allowed, role) {
		return fmt.Errorf("pki: %s %s/%s refused: role %s is not allowed here (want %s): %w",
			side, role, name, role, joinRoles(allowed), ErrRole)
	}
	return nil
}

func checkRoles(what string, roles []Role, serversOnly bool) error {
	if len(roles) == 0 {
		return fmt.Errorf("pki: no %s roles given: want at least one of coord, hostd, client, monitor", what)
	}
	for _, r := range roles {
		if !r.Valid() {
			return fmt.Errorf("pki: %s role %q: want coord, hostd, client or monitor", what, r)
		}
		if serversOnly && !r.IsServer() {
			return fmt.Errorf("pki: %s role %s: a %s certificate cannot serve TLS", what, r, r)
		}
	}
	return nil
}

func joinRoles(roles []Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, " or ")
}

// loadPair loads our own certificate and key and the CA pool, and checks that
// our certificate chains to the CA, is valid now, carries a valid role and
// may be used for usage: a misconfiguration is reported here, at start-up,
// rather than as a bad-certificate alert on the peer.
func loadPair(certFile, keyFile, caFile string, usage x509.ExtKeyUsage) (tls.Certificate, *x509.CertPool, error) {
	cas, err := readCerts(caFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("pki: CA: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("pki: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("pki: %s: %w", certFile, err)
		}
		pair.Leaf = leaf
	}
	role, name, err := RoleOf(leaf)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("pki: %s: %w", certFile, err)
	}
	if usage == x509.ExtKeyUsageServerAuth && !role.IsServer() {
		return tls.Certificate{}, nil, fmt.Errorf("pki: %s: %s/%s cannot serve TLS (a coord or hostd certificate can): %w", certFile, role, name, ErrRole)
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("pki: %s (%s/%s) against CA %s: %w", certFile, role, name, caFile, err)
	}
	return pair, pool, nil
}
