package pki

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestSignVerify(t *testing.T) {
	f := newFixture(t)
	load := func(dir string, role Role, name string) *Signer {
		t.Helper()
		s, err := LoadSigner(CertPaths(dir, role, name))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	v, err := LoadVerifier(filepath.Join(f.dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	h1 := load(f.dir, RoleHostd, "h1")
	payload := []byte(`{"vm":"vm1"}`)
	sig, err := h1.Sign("test-v1", payload)
	if err != nil {
		t.Fatal(err)
	}
	role, name, err := v.Verify("test-v1", payload, sig, RoleHostd, RoleCoord)
	if err != nil || role != RoleHostd || name != "h1" {
		t.Fatalf("Verify = %s/%s, %v; want hostd/h1", role, name, err)
	}
	foreign, err := load(f.otherDir, RoleCoord, "c1").Sign("test-v1", payload)
	if err != nil {
		t.Fatal(err)
	}
	client, err := load(f.dir, RoleClient, "op").Sign("test-v1", payload)
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name    string
		domain  string
		payload []byte
		sig     Signature
	}{
		{"tampered payload", "test-v1", []byte(`{"vm":"vm2"}`), sig},
		{"other domain", "other-v1", payload, sig},
		{"other CA", "test-v1", payload, foreign},
		{"role not allowed", "test-v1", payload, client},
		{"unsigned", "test-v1", payload, Signature{}},
		{"garbage chain", "test-v1", payload, Signature{Chain: [][]byte{[]byte("x")}, Sig: sig.Sig}},
		{"signature of another cert", "test-v1", payload, Signature{Chain: foreign.Chain, Sig: sig.Sig}},
	}
	for _, c := range bad {
		if _, _, err := v.Verify(c.domain, c.payload, c.sig, RoleHostd, RoleCoord); !errors.Is(err, ErrSignature) {
			t.Errorf("%s: Verify err = %v, want ErrSignature", c.name, err)
		}
	}
}
