package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
	"github.com/urfave/cli/v3"
)

// certsCommand manages the CA and the mutual-TLS certificates (internal/pki).
func certsCommand() *cli.Command {
	dirFlag := func() cli.Flag {
		return &cli.StringFlag{Name: "dir", Required: true, Usage: "PKI directory: the CA and the issued certificates"}
	}
	return &cli.Command{
		Name:  "certs",
		Usage: "manage the CA and the mutual-TLS certificates of coord, hostd and the CLI",
		Commands: []*cli.Command{
			{
				Name:  "init",
				Usage: "create the CA (ca.crt, ca.key; ECDSA P-256, 10 years)",
				Flags: []cli.Flag{
					dirFlag(),
					&cli.BoolFlag{Name: "force", Usage: "replace an existing CA: every certificate it issued stops being trusted"},
				},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					if cmd.Args().Len() != 0 {
						return fmt.Errorf("certs init: unexpected arguments %q", cmd.Args().Slice())
					}
					dir := cmd.String("dir")
					if err := pki.Init(dir, pki.InitOptions{Force: cmd.Bool("force")}); err != nil {
						return err
					}
					cert := filepath.Join(dir, pki.CACertFile)
					until := ""
					if data, err := os.ReadFile(cert); err == nil {
						if certs, err := pki.ParseCertsPEM(data); err == nil {
							until = " (valid until " + certs[0].NotAfter.Format(time.DateOnly) + ")"
						}
					}
					fmt.Printf("created CA %s%s\nits key %s signs every certificate: keep it on this machine only\n",
						cert, until, filepath.Join(dir, pki.CAKeyFile))
					return nil
				},
			},
			{
				Name:  "issue",
				Usage: "issue a key and certificate for coord, a hostd or the operator CLI",
				Flags: []cli.Flag{
					dirFlag(),
					&cli.StringFlag{Name: "role", Required: true, Usage: "coord, hostd, client (the operator CLI) or monitor (reads /metrics only)"},
					&cli.StringFlag{Name: "name", Required: true, Usage: "name of the holder (CommonName), e.g. the host name"},
					&cli.StringSliceFlag{Name: "host", Usage: "DNS name or IP address the server is reached at (repeatable; coord and hostd only; localhost, 127.0.0.1 and ::1 are always included)"},
					&cli.IntFlag{Name: "days", Value: 365, Usage: "validity in days"},
				},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					if cmd.Args().Len() != 0 {
						return fmt.Errorf("certs issue: unexpected arguments %q", cmd.Args().Slice())
					}
					role, err := pki.ParseRole(cmd.String("role"))
					if err != nil {
						return fmt.Errorf("--role: %w", err)
					}
					days := cmd.Int("days")
					if days <= 0 || days > 100*366 {
						return fmt.Errorf("--days %d: want 1 to %d", days, 100*366)
					}
					certPath, keyPath, err := pki.Issue(cmd.String("dir"), role, cmd.String("name"), cmd.StringSlice("host"),
						time.Duration(days)*24*time.Hour)
					if err != nil {
						return err
					}
					fmt.Printf("issued %s/%s: %s, key %s\n", role, cmd.String("name"), certPath, keyPath)
					return nil
				},
			},
			{
				Name:      "show",
				Usage:     "describe a certificate file: subject, role, SANs, validity",
				ArgsUsage: "FILE",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "text or json"},
				},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					if cmd.Args().Len() != 1 {
						return fmt.Errorf("certs show: want exactly one FILE argument, got %d", cmd.Args().Len())
					}
					out, err := output(cmd)
					if err != nil {
						return err
					}
					file := cmd.Args().First()
					data, err := os.ReadFile(file)
					if err != nil {
						return err
					}
					certs, err := pki.ParseCertsPEM(data)
					if err != nil {
						return fmt.Errorf("%s: %w", file, err)
					}
					infos := make([]certInfo, len(certs))
					for i, c := range certs {
						infos[i] = describeCert(c, time.Now())
					}
					return out.Print(infos, func(w io.Writer) {
						for i, ci := range infos {
							if i > 0 {
								fmt.Fprintln(w)
							}
							ci.print(w)
						}
					})
				},
			},
		},
	}
}

// certInfo is what "certs show" reports of one certificate.
type certInfo struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	Role      string    `json:"role"` // coord, hostd, client, ca, or "" if none
	Name      string    `json:"name,omitempty"`
	RoleError string    `json:"role_error,omitempty"`
	Usage     []string  `json:"usage,omitempty"`
	DNSNames  []string  `json:"dns_names,omitempty"`
	IPs       []string  `json:"ips,omitempty"`
	URIs      []string  `json:"uris,omitempty"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Status    string    `json:"status"` // valid, expired, not yet valid
	SHA256    string    `json:"sha256"`
}

func describeCert(c *x509.Certificate, now time.Time) certInfo {
	sum := sha256.Sum256(c.Raw)
	ci := certInfo{
		Subject:   c.Subject.String(),
		Issuer:    c.Issuer.String(),
		DNSNames:  c.DNSNames,
		Serial:    hex.EncodeToString(c.SerialNumber.Bytes()),
		NotBefore: c.NotBefore,
		NotAfter:  c.NotAfter,
		SHA256:    hex.EncodeToString(sum[:]),
	}
	if c.IsCA {
		ci.Role = "ca"
	} else if role, name, err := pki.RoleOf(c); err != nil {
		ci.RoleError = err.Error()
	} else {
		ci.Role, ci.Name = string(role), name
	}
	for _, u := range c.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageServerAuth:
			ci.Usage = append(ci.Usage, "server")
		case x509.ExtKeyUsageClientAuth:
			ci.Usage = append(ci.Usage, "client")
		default:
			ci.Usage = append(ci.Usage, fmt.Sprintf("eku-%d", u))
		}
	}
	if c.IsCA {
		ci.Usage = append(ci.Usage, "ca")
	}
	for _, ip := range c.IPAddresses {
		ci.IPs = append(ci.IPs, ip.String())
	}
	for _, u := range c.URIs {
		ci.URIs = append(ci.URIs, u.String())
	}
	switch {
	case now.After(c.NotAfter):
		ci.Status = "expired"
	case now.Before(c.NotBefore):
		ci.Status = "not yet valid"
	default:
		ci.Status = "valid"
	}
	return ci
}

func (ci certInfo) print(w io.Writer) {
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-9s %s\n", k+":", v)
		}
	}
	row("subject", ci.Subject)
	row("issuer", ci.Issuer)
	switch {
	case ci.Role == "ca":
		row("role", "CA")
	case ci.Role != "":
		row("role", ci.Role+" (name "+ci.Name+")")
	default:
		row("role", "none: "+ci.RoleError)
	}
	row("usage", strings.Join(ci.Usage, ", "))
	row("DNS", strings.Join(ci.DNSNames, ", "))
	row("IP", strings.Join(ci.IPs, ", "))
	row("URI", strings.Join(ci.URIs, ", "))
	row("serial", ci.Serial)
	status := ci.Status
	switch ci.Status {
	case "valid":
		status = fmt.Sprintf("valid, expires in %d days", int(time.Until(ci.NotAfter).Hours()/24))
	case "expired":
		status = "EXPIRED"
	case "not yet valid":
		status = "NOT YET VALID"
	}
	row("validity", fmt.Sprintf("%s to %s (%s)", ci.NotBefore.UTC().Format(time.RFC3339), ci.NotAfter.UTC().Format(time.RFC3339), status))
	row("sha256", ci.SHA256)
}
