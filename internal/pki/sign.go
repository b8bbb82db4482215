package pki

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// ErrSignature: a signature is missing, malformed, made by a certificate the
// CA did not sign or whose role is not allowed, or does not match the data.
var ErrSignature = errors.New("bad signature")

// Signature is a detached signature over a payload, made with the key of a
// role certificate, carrying that certificate so that anyone holding the CA
// can check it without having the signer's files.
type Signature struct {
	// Chain is the signer's certificate (DER), then any intermediates.
	Chain [][]byte `json:"chain"`
	// Sig is an ASN.1 ECDSA signature over sha256(domain, 0, payload).
	Sig []byte `json:"sig"`
}

// Signer signs with the key of a role certificate.
type Signer struct {
	key   *ecdsa.PrivateKey
	chain [][]byte
	role  Role
	name  string
}

// LoadSigner loads a certificate and its key as written by Issue.
func LoadSigner(certFile, keyFile string) (*Signer, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("pki: signer: %w", err)
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("pki: signer %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: signer: %w", err)
	}
	key, err := decodeKey(keyFile, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: signer: %w", err)
	}
	if !key.PublicKey.Equal(certs[0].PublicKey) {
		return nil, fmt.Errorf("pki: signer: %s does not belong to %s", keyFile, certFile)
	}
	role, name, err := RoleOf(certs[0])
	if err != nil {
		return nil, fmt.Errorf("pki: signer %s: %w", certFile, err)
	}
	s := &Signer{key: key, role: role, name: name}
	for _, c := range certs {
		s.chain = append(s.chain, c.Raw)
	}
	return s, nil
}

// Role and Name are those of the signing certificate.
func (s *Signer) Role() Role     { return s.role }
func (s *Signer) Name() string   { return s.name }
func (s *Signer) String() string { return string(s.role) + "/" + s.name }

// Sign signs payload for a purpose named by domain; a signature made for one
// domain never verifies for another, so a signed manifest cannot be replayed
// as, say, a migration grant.
func (s *Signer) Sign(domain string, payload []byte) (Signature, error) {
	sum := signedDigest(domain, payload)
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, sum[:])
	if err != nil {
		return Signature{}, fmt.Errorf("pki: sign: %w", err)
	}
	return Signature{Chain: slices.Clone(s.chain), Sig: sig}, nil
}

// Verifier checks signatures against a CA.
type Verifier struct {
	roots *x509.CertPool
}

// LoadVerifier reads the CA certificate(s) of caFile.
func LoadVerifier(caFile string) (*Verifier, error) {
	cas, err := readCerts(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: verifier: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return &Verifier{roots: pool}, nil
}

// Verify checks that sig is a signature over payload for domain by a
// certificate that chains to the CA, is valid now and has one of the allowed
// roles; it returns that certificate's role and name. Every failure wraps
// ErrSignature.
func (v *Verifier) Verify(domain string, payload []byte, sig Signature, allow ...Role) (Role, string, error) {
	if len(sig.Chain) == 0 || len(sig.Sig) == 0 {
		return "", "", fmt.Errorf("pki: unsigned: %w", ErrSignature)
	}
	leaf, err := x509.ParseCertificate(sig.Chain[0])
	if err != nil {
		return "", "", fmt.Errorf("pki: signer certificate: %v: %w", err, ErrSignature)
	}
	inter := x509.NewCertPool()
	for _, der := range sig.Chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return "", "", fmt.Errorf("pki: signer chain: %v: %w", err, ErrSignature)
		}
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: v.roots, Intermediates: inter, CurrentTime: time.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if _, err := leaf.Verify(opts); err != nil {
		return "", "", fmt.Errorf("pki: signer %q not trusted: %v: %w", leaf.Subject.CommonName, err, ErrSignature)
	}
	role, name, err := RoleOf(leaf)
	if err != nil {
		return "", "", fmt.Errorf("pki: signer: %v: %w", err, ErrSignature)
	}
	if !slices.Contains(allow, role) {
		return "", "", fmt.Errorf("pki: signer %s/%s: role %s may not sign this (want %s): %w",
			role, name, role, joinRoles(allow), ErrSignature)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	sum := signedDigest(domain, payload)
	if !ok || !ecdsa.VerifyASN1(pub, sum[:], sig.Sig) {
		return "", "", fmt.Errorf("pki: signature by %s/%s does not match the data: %w", role, name, ErrSignature)
	}
	return role, name, nil
}

func signedDigest(domain string, payload []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(domain))
	h.Write([]byte{0})
	h.Write(payload)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}
