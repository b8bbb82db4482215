package hostd_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/hostd/imagecache"
	"github.com/symvirt/symvirt/internal/testenv"
)

// lyingPeer serves an image's peer routes on a unix socket like a hostd
// would, but every chunk with one byte flipped; with forge it also
// serves a manifest rewritten to match its bad chunks.
func lyingPeer(t *testing.T, file string, m *imagecache.Manifest, forge bool) string {
	data, _ := os.ReadFile(file)
	corrupt := func(i int) []byte {
		off, n := m.Span(i)
		b := bytes.Clone(data[off : off+int64(n)])
		b[0] ^= 0xff
		return b
	}
	fm := *m
	if forge {
		fm.Digests = append([]string(nil), m.Digests...)
		for i := range fm.Digests {
			fm.Digests[i] = imagecache.DigestOf(corrupt(i))
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/images/img/manifest", func(w http.ResponseWriter, _ *http.Request) {
		b, _ := fm.Encode()
		w.Write(b)
	})
	mux.HandleFunc("GET /v1/images/img/chunks/{i}", func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(r.PathValue("i"))
		w.Write(corrupt(i))
	})
	return servePeer(t, mux)
}

// Attack: a peer serves image chunks that are not the image's (and, in
// a second try, a manifest forged to match them). The host refuses the
// forged manifest, never keeps or passes on a bad chunk (a VM's read
// fails rather than see it), counts it, and reads the right bytes once
// an honest source (a real seed hostd) is next in its list.
func TestImageRefusesCorruptedChunks(t *testing.T) {
	testenv.RequireRoot(t)
	file := filepath.Join(t.TempDir(), "base.raw")
	img := bytes.Repeat([]byte("symvirt image attack test block\n"), 1<<15) // 1 MiB
	os.WriteFile(file, img, 0o600)
	m, err := imagecache.Build("img", file, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	_, id := m.Encode()
	ctx := context.Background()
	victim := testenv.StartHostd(t, "victim", nil, "", "")
	seed := testenv.StartHostd(t, "seed", nil, "", "")

	forged := lyingPeer(t, file, m, true)
	if _, err := victim.Client().AttachImage(ctx, "img", hostd.AttachImageRequest{ID: id, Sources: []string{forged}}); err == nil {
		t.Fatal("a manifest whose sha256 is not the image's id was accepted")
	}
	liar := lyingPeer(t, file, m, false)
	info, err := victim.Client().AttachImage(ctx, "img", hostd.AttachImageRequest{ID: id, Sources: []string{liar}})
	if err != nil {
		t.Fatal(err)
	}
	export := "nbd+unix:///img?socket=" + filepath.Join(victim.StateDir, "images", "img", "nbd.sock")
	out, err := exec.Command("qemu-io", "-r", "-f", "raw", "-c", "read 0 4096", export).CombinedOutput()
	info = imageOn(t, victim, "img")
	if err == nil && !bytes.Contains(out, []byte("error")) || info.Rejected == 0 || info.Held != 0 {
		t.Fatalf("a read through a lying peer: %v %s; %+v", err, out, info)
	}
	t.Logf("lying peer: read refused (%s), %d chunks rejected", bytes.TrimSpace(out), info.Rejected)

	if _, err := seed.Client().RegisterImage(ctx, hostd.RegisterImageRequest{Name: "img", Path: file, Chunk: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Client().AttachImage(ctx, "img", hostd.AttachImageRequest{ID: id, Sources: []string{liar, seed.Socket()}}); err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(t.TempDir(), "got.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", export, got).CombinedOutput(); err != nil {
		t.Fatalf("read through the honest seed: %v %s", err, out)
	}
	if b, _ := os.ReadFile(got); !bytes.Equal(b, img) {
		t.Fatal("the image read through the cache differs from the seed's file")
	}
	info = imageOn(t, victim, "img")
	if info.Held != info.Chunks || info.Rejected < 2 {
		t.Fatalf("after fail-over to the seed: %+v", info)
	}
	if _, err := victim.Client().AttachImage(ctx, "img", hostd.AttachImageRequest{ID: "00" + id[2:], Sources: []string{seed.Socket()}}); !errors.Is(err, hostd.ErrExists) {
		t.Fatalf("attach with another id over a held image: %v", err)
	}
}

func imageOn(t *testing.T, h *testenv.Hostd, name string) hostd.ImageInfo {
	t.Helper()
	imgs, err := h.Client().Images(context.Background())
	for _, i := range imgs {
		if i.Name == name {
			return i
		}
	}
	t.Fatalf("no image %s: %v %+v", name, err, imgs)
	return hostd.ImageInfo{}
}

// A restarted hostd opens its images again: the cache keeps the chunks
// it held (its bitmap), nothing is fetched twice, and the export serves.
func TestImageCacheSurvivesHostdRestart(t *testing.T) {
	testenv.RequireRoot(t)
	file := filepath.Join(t.TempDir(), "base.raw")
	img := bytes.Repeat([]byte("symvirt image restart test block\n"), 1<<15)
	os.WriteFile(file, img[:1<<20], 0o600)
	ctx := context.Background()
	seed := testenv.StartHostd(t, "seed", nil, "", "")
	host := testenv.StartHostd(t, "host", nil, "", "")
	reg, err := seed.Client().RegisterImage(ctx, hostd.RegisterImageRequest{Name: "img", Path: file, Chunk: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.Client().AttachImage(ctx, "img", hostd.AttachImageRequest{ID: reg.ID, Sources: []string{seed.Socket()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Client().PrefetchImage(ctx, "img"); err != nil {
		t.Fatal(err)
	}
	before := imageOn(t, host, "img")
	host.Kill()
	host.Start()
	seed.Kill() // what the host holds must not need it
	after := imageOn(t, host, "img")
	if after.Held != before.Held || after.Held != after.Chunks || after.Fetched != 0 {
		t.Fatalf("after a restart: %+v (before: %+v)", after, before)
	}
	got := filepath.Join(t.TempDir(), "got.raw")
	export := "nbd+unix:///img?socket=" + filepath.Join(host.StateDir, "images", "img", "nbd.sock")
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", export, got).CombinedOutput(); err != nil {
		t.Fatalf("read after restart: %v %s", err, out)
	}
	if b, _ := os.ReadFile(got); !bytes.Equal(b, img[:1<<20]) {
		t.Fatal("the image read after a restart differs")
	}
}

// servePeer serves mux, a fake peer hostd, on a unix socket for the
// test's life and returns the socket's path.
func servePeer(t *testing.T, mux *http.ServeMux) string {
	sock := filepath.Join(t.TempDir(), "peer.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}
