package step

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
)

// GrantDomain separates migration grants from every other signed payload.
const GrantDomain = "symvirt migration grant v1"

// MigrationGrant is the coordinator's permission for one hostd to hand one
// VM over to another. Hosts are named by their certificates' names (a
// coordinator registers each host under its certificate's name).
type MigrationGrant struct {
	Op      string    `json:"op"`
	VM      string    `json:"vm"`
	Source  string    `json:"source"`
	Dest    string    `json:"dest"`
	Expires time.Time `json:"expires"`
}

// Grant is a signed MigrationGrant: the payload is verified as sent, then
// decoded.
type Grant struct {
	Payload []byte        `json:"payload"`
	Sig     pki.Signature `json:"sig"`
}

// SignGrant signs g with the coordinator's key.
func SignGrant(s *pki.Signer, g MigrationGrant) (*Grant, error) {
	payload, err := json.Marshal(g)
	if err != nil {
		return nil, fmt.Errorf("migration grant: %w", err)
	}
	sig, err := s.Sign(GrantDomain, payload)
	if err != nil {
		return nil, fmt.Errorf("migration grant: %w", err)
	}
	return &Grant{Payload: payload, Sig: sig}, nil
}

// OpenGrant checks that a coordinator's key signed g and decodes its
// payload; whether the grant fits the migration at hand (its host names,
// VM, operation, expiry) is the receiver's to judge.
func OpenGrant(ca *pki.Verifier, g *Grant) (MigrationGrant, error) {
	if _, _, err := ca.Verify(GrantDomain, g.Payload, g.Sig, pki.RoleCoord); err != nil {
		return MigrationGrant{}, err
	}
	var mg MigrationGrant
	dec := json.NewDecoder(bytes.NewReader(g.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&mg); err != nil {
		return MigrationGrant{}, err
	}
	return mg, nil
}
