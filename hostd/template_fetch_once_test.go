package hostd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// TestTemplateFetchCoalesces: two fetches of one template (same id) sent
// to a host at the same moment, as two boots would. The second waits for
// the first (its source held mid-fetch until hostd says the second is
// waiting) and both get the template; the source is asked for the
// template's manifest once. A fetch of another template under the same
// name is refused, naming both ids, while the first is under way and
// after. The host keeps the RAM once (in its RAM file, no image cache
// copy under the state directory), serves a child from it, and after a
// restart serves it as a seed.
func TestTemplateFetchCoalesces(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	f := newFakeTemplate(t, "tc")
	other := newFakeTemplate(t, "tc")
	other.manifest = bytes.Replace(other.manifest, []byte("panic=-1"), []byte("panic=-3"), 1)
	sum := sha256.Sum256(other.manifest)
	other.id = hex.EncodeToString(sum[:])
	gate, chunkAsked := make(chan struct{}), make(chan struct{})
	var manifests, chunks atomic.Int32
	src := f.serve(t, "tc", func(i int, b []byte) []byte {
		if i == -1 {
			manifests.Add(1)
			return b
		}
		if chunks.Add(1) == 1 {
			close(chunkAsked)
		}
		<-gate
		return b
	})
	victim := testenv.StartHostd(t, "victim", nil, "", "")
	cl := victim.Client()
	type result struct {
		t   hostd.Template
		err error
	}
	res := make(chan result, 2)
	fetch := func() {
		tm, err := cl.FetchTemplate(ctx, "tc", hostd.FetchTemplateRequest{ID: f.id, Sources: []string{src}})
		res <- result{tm, err}
	}
	go fetch()
	<-chunkAsked
	go fetch()
	waitHostdLog(t, victim, "template fetch: waiting for the one under way")
	_, err := cl.FetchTemplate(ctx, "tc", hostd.FetchTemplateRequest{ID: other.id, Sources: []string{src}})
	if !errors.Is(err, hostd.ErrExists) || !strings.Contains(err.Error(), f.id) || !strings.Contains(err.Error(), other.id) {
		t.Fatalf("another template under the same name during the fetch: %v (want exists, naming %s and %s)", err, f.id, other.id)
	}
	t.Logf("during the fetch: %v", err)
	close(gate)
	for range 2 {
		r := <-res
		if r.err != nil || r.t.ID != f.id {
			t.Fatalf("concurrent fetch: %v %+v", r.err, r.t)
		}
	}
	if n := manifests.Load(); n != 1 {
		t.Errorf("the source was asked for the template's manifest %d times, want 1 (the second fetch waits for the first)", n)
	}
	if _, err := cl.FetchTemplate(ctx, "tc", hostd.FetchTemplateRequest{ID: other.id, Sources: []string{src}}); !errors.Is(err, hostd.ErrExists) ||
		!strings.Contains(err.Error(), f.id) || !strings.Contains(err.Error(), other.id) {
		t.Fatalf("another template under the same name after the fetch: %v", err)
	}
	checkFetchedOnce(t, victim, f, "tc")
}

// checkFetchedOnce: the victim holds the template's RAM in its RAM file
// only, serves a child from it, and serves it as a seed once restarted.
func checkFetchedOnce(t *testing.T, victim *testenv.Hostd, f *fakeTemplate, name string) {
	ctx := context.Background()
	ramFile := filepath.Join(victim.Layout().RAMDirs()[0], name+".template")
	ramImg, _ := hostd.TemplateImages(name)
	imgDir := filepath.Join(victim.StateDir, "images", ramImg)
	ram, _ := os.ReadFile(ramFile)
	if !bytes.Equal(ram, f.ram) {
		t.Fatal("the fetched RAM file is not the published one")
	}
	info := imageOn(t, victim, ramImg)
	if _, err := os.Stat(filepath.Join(imgDir, "data")); !errors.Is(err, os.ErrNotExist) || info.Held != info.Chunks {
		t.Fatalf("RAM image: a data file under the state directory (%v), or chunks missing: %+v", err, info)
	}
	t.Logf("RAM kept once: RAM file %d bytes allocated, the image's directory %d (manifest, bitmap); an image cache's own copy would be %d bytes more",
		allocated(t, ramFile), allocated(t, imgDir), info.Data)

	child := testenv.StartHostd(t, "child", nil, "", "")
	if _, err := child.Client().FetchTemplate(ctx, name, hostd.FetchTemplateRequest{ID: f.id, Sources: []string{victim.Socket()}}); err != nil {
		t.Fatalf("child fetching from the victim's one copy: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(child.Layout().RAMDirs()[0], name+".template")); !bytes.Equal(got, f.ram) {
		t.Fatal("the child's RAM file is not the published one")
	}
	victim.Kill()
	victim.Start()
	if info := imageOn(t, victim, ramImg); !info.Seed || info.Held != info.Chunks {
		t.Fatalf("restarted: the RAM image is not served from the RAM file: %+v", info)
	}
}

// allocated is the bytes the file, or the files under the directory,
// take on their file system.
func allocated(t *testing.T, path string) int64 {
	var n int64
	filepath.Walk(path, func(_ string, fi os.FileInfo, err error) error {
		if err == nil {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}

// waitHostdLog waits until the hostd has logged msg.
func waitHostdLog(t *testing.T, h *testenv.Hostd, msg string) {
	for deadline := time.Now().Add(time.Minute); !strings.Contains(h.Logs(), msg); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("hostd never logged %q:\n%s", msg, h.Logs())
		}
	}
}
