// Package pki is symvirt's small private PKI and its mutual-TLS plumbing.
//
// # Trust model
//
// One CA (ECDSA P-256, valid 10 years) signs every certificate of a symvirt
// installation. A peer is trusted when, and only when, its certificate chains
// to that CA; the CA's private key (ca.key) therefore is the keys to the
// kingdom and should live only on the machine that issues certificates.
// Replacing the CA (Init with Force) invalidates every certificate it issued.
//
// Every certificate issued by Issue names exactly one role and one name:
//
//   - RoleCoord  ("coord"):  the coordinator; a TLS server and a TLS client.
//   - RoleHostd  ("hostd"):  a host daemon; a TLS server (called by coord and,
//     for live migration, by other hostds) and a TLS client (towards the
//     destination hostd of a migration).
//   - RoleClient ("client"): the operator CLI; a TLS client only.
//   - RoleMonitor ("monitor"): a metrics scraper; a TLS client only, accepted
//     on the daemons' metrics addresses and nowhere else.
//
// The role is recorded twice, and both must agree for the certificate to be
// accepted: as the subject's OrganizationalUnit "symvirt-<role>" and as a URI
// SAN "symvirt://<role>/<name>". The name is the subject's CommonName as well.
// Names are 1..63 characters of [A-Za-z0-9._-], starting with a letter or
// digit, so they are safe in file names and URIs.
//
// Server roles carry the ServerAuth and ClientAuth extended key usages and the
// DNS names / IP addresses given to Issue as SANs, plus always "localhost",
// 127.0.0.1 and ::1. Client certificates carry ClientAuth only and no host
// names, so a client certificate can never serve TLS.
//
// # Files
//
// Everything lives in one directory:
//
//	ca.crt, ca.key                  the CA (Init)
//	<role>-<name>.crt, .key         one issued certificate (Issue)
//
// Keys are PKCS#8 PEM, mode 0600; certificates are PEM, mode 0644; a directory
// that the package creates is mode 0700 (an existing directory's mode is left
// alone). Every file is written atomically (temporary file, fsync, rename), so
// a reader sees the old file or the new one, never a torn one. Issue replaces
// an existing certificate of the same role and name (renewal); Init refuses to
// replace an existing CA unless InitOptions.Force is set.
//
// # Mutual TLS
//
// ServerConfig and ClientConfig build tls.Configs that require TLS 1.3, verify
// the peer's certificate chain against the CA (the server requires a client
// certificate), and then accept the peer only if its role is one of those
// listed; a refused role fails the handshake with an error wrapping ErrRole
// that names the peer ("hostd/h1"). The client side also verifies the server's
// host name against its SANs as usual: the caller sets ServerName when the
// dialled address is not one of them. Handlers authorise per route with
// PeerRole on the request's verified connection state, e.g. hostd lets coord
// call everything and another hostd only the incoming-migration routes.
//
// Errors wrap ErrNoCA (the CA files are missing), ErrCAExists (Init would
// replace a CA) and ErrRole (a certificate has no valid symvirt role, or a
// refused one); test them with errors.Is.
package pki
