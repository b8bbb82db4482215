package hostd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/hostd/imagecache"
	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/internal/testenv"
)

// fakeTemplate is a published template's files as its host would serve
// them: a RAM file (some chunks zero), a device state, their images'
// manifests and the template's manifest, whose sha256 is its id.
type fakeTemplate struct {
	ram, state   []byte
	ramM, stateM *imagecache.Manifest
	manifest     []byte
	id           string
}

func newFakeTemplate(t *testing.T, name string) *fakeTemplate {
	dir := t.TempDir()
	f := &fakeTemplate{ram: make([]byte, 1<<20), state: bytes.Repeat([]byte("device state\n"), 100)}
	for i := 0; i < len(f.ram); i += 3 << 16 { // chunks 0, 3, 6, ... of 64 KiB hold data
		copy(f.ram[i:i+1<<16], bytes.Repeat([]byte("guest page "+strconv.Itoa(i)+"\n"), 1<<12))
	}
	padded := make([]byte, (len(f.state)+511)&^511)
	copy(padded, f.state)
	ramImg, stateImg := hostd.TemplateImages(name)
	build := func(img string, data []byte) (*imagecache.Manifest, string) {
		p := filepath.Join(dir, img)
		os.WriteFile(p, data, 0o600)
		m, err := imagecache.Build(img, p, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		_, id := m.Encode()
		return m, id
	}
	var ramID, stateID string
	f.ramM, ramID = build(ramImg, f.ram)
	f.stateM, stateID = build(stateImg, padded)
	spec := templateGuest(t, "template-"+name)
	spec.SharedMemory = new(bool)
	*spec.SharedMemory = true
	spec.NICs[0].MAC = "52:54:5a:00:00:01"
	f.manifest, _ = json.Marshal(hostd.TemplateManifest{Name: name, Spec: spec,
		State:   manifest.FileDigest{Name: "state", Role: "state", Size: int64(len(f.state)), SHA256: imagecache.DigestOf(f.state)},
		RAMSize: int64(len(f.ram)), RAMSHA256: imagecache.DigestOf(f.ram), RAMImage: ramID, StateImage: stateID})
	sum := sha256.Sum256(f.manifest)
	f.id = hex.EncodeToString(sum[:])
	return f
}

// serve serves the template's peer routes on a unix socket like its
// hostd would; forged (if not nil) rewrites what is sent: the manifest
// (chunk -1) or a chunk of the RAM image.
func (f *fakeTemplate) serve(t *testing.T, name string, forged func(chunk int, b []byte) []byte) string {
	if forged == nil {
		forged = func(_ int, b []byte) []byte { return b }
	}
	ramImg, stateImg := hostd.TemplateImages(name)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/templates/"+name+"/manifest", func(w http.ResponseWriter, _ *http.Request) {
		w.Write(forged(-1, bytes.Clone(f.manifest)))
	})
	for img, src := range map[string]struct {
		m    *imagecache.Manifest
		data []byte
	}{ramImg: {f.ramM, f.ram}, stateImg: {f.stateM, append(bytes.Clone(f.state), make([]byte, 512)...)}} {
		mux.HandleFunc("GET /v1/images/"+img+"/manifest", func(w http.ResponseWriter, _ *http.Request) {
			b, _ := src.m.Encode()
			w.Write(b)
		})
		mux.HandleFunc("GET /v1/images/"+img+"/chunks/{i}", func(w http.ResponseWriter, r *http.Request) {
			i, _ := strconv.Atoi(r.PathValue("i"))
			off, n := src.m.Span(i)
			b := bytes.Clone(src.data[off : off+int64(n)])
			if img == ramImg {
				b = forged(i, b)
			}
			w.Write(b)
		})
	}
	return servePeer(t, mux)
}

// Attack: a peer in the fan-out tree serves a template whose manifest is
// not the one the coordinator named (its spec changed), then one whose
// RAM chunk 3 is forged. The host refuses both: no template is recorded,
// no RAM file made, a clone of it is refused as unknown. With an honest
// source next in its list, it re-parents past the liar and the template
// it records is byte for byte the published one.
func TestTemplateFetchRefusesForgedChunk(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	f := newFakeTemplate(t, "tf")
	victim := testenv.StartHostd(t, "victim", nil, "", "")
	cl := victim.Client()
	ramFile := filepath.Join(victim.Layout().RAMDirs()[0], "tf.template")

	badManifest := f.serve(t, "tf", func(i int, b []byte) []byte {
		if i == -1 {
			return bytes.Replace(b, []byte("panic=-1"), []byte("panic=-2"), 1)
		}
		return b
	})
	if _, err := cl.FetchTemplate(ctx, "tf", hostd.FetchTemplateRequest{ID: f.id, Sources: []string{badManifest}}); err == nil {
		t.Fatal("a template manifest that does not hash to the template's id was accepted")
	} else {
		t.Logf("forged manifest refused: %v", err)
	}
	liar := f.serve(t, "tf", func(i int, b []byte) []byte {
		if i == 3 {
			b[100] ^= 0xff
		}
		return b
	})
	_, err := cl.FetchTemplate(ctx, "tf", hostd.FetchTemplateRequest{ID: f.id, Sources: []string{liar}})
	if err == nil {
		t.Fatal("a template with a forged RAM chunk was accepted")
	}
	t.Logf("forged chunk refused: %v", err)
	ts, _ := cl.Templates(ctx)
	if len(ts) != 0 {
		t.Fatalf("templates recorded after a refused fetch: %+v", ts)
	}
	if _, err := os.Stat(ramFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("RAM file %s left after a refused fetch: %v", ramFile, err)
	}
	if _, err := cl.Clone(ctx, hostd.CloneRequest{Template: "tf", Name: "c0"}); !errors.Is(err, hostd.ErrNotFound) {
		t.Fatalf("clone of a refused template: %v", err)
	}
	honest := f.serve(t, "tf", nil)
	got, err := cl.FetchTemplate(ctx, "tf", hostd.FetchTemplateRequest{ID: f.id, Sources: []string{liar, honest}})
	if err != nil {
		t.Fatalf("fetch with an honest source after the liar: %v", err)
	}
	ram, _ := os.ReadFile(ramFile)
	if got.ID != f.id || !bytes.Equal(ram, f.ram) {
		t.Fatalf("fetched template %+v: RAM file equal to the published one: %v", got, bytes.Equal(ram, f.ram))
	}
	state, _ := os.ReadFile(filepath.Join(victim.StateDir, "templates", "tf", "state"))
	if !bytes.Equal(state, f.state) {
		t.Fatal("fetched device state differs from the published one")
	}
	ramImg, _ := hostd.TemplateImages("tf")
	info := imageOn(t, victim, ramImg)
	if info.Rejected == 0 {
		t.Fatalf("the liar's forged chunk was not counted as rejected: %+v", info)
	}
	t.Logf("re-parented past the liar: %d chunks rejected, %d failovers, %d bytes fetched for %d of RAM", info.Rejected, info.Failovers, info.Fetched, len(f.ram))
}
