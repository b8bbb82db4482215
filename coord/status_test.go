package coord

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
)

// A host that does not answer is reported by its cause, not by the
// internal request: "unreachable: ..." and no URL.
func TestHostErrorNamesTheCause(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "hostd.sock") // never created
	_, err := hostd.NewClient(sock).List(ctx)
	if err == nil {
		t.Fatal("listing VMs of a hostd that does not exist succeeded")
	}
	got := hostError(err)
	if !strings.HasPrefix(got, "unreachable: ") || strings.Contains(got, "http") || strings.Contains(got, "/v1/") {
		t.Fatalf("hostError(%q) = %q: want the cause without the request", err, got)
	}
}
