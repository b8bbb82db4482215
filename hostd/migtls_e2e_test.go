package hostd_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
	"github.com/symvirt/symvirt/qmp"
)

// ramMarker is what the guest keeps in RAM for the capture to look for.
const ramMarker = "symvirt-ram-marker-5f3a9c1e7b2d4086"

// markerRC writes the marker thousands of times into a file of the
// initramfs root (RAM), so guest memory holds it in many pages.
const markerRC = `#!/bin/sh
( i=0; while [ $i -lt 4000 ]; do echo "` + ramMarker + ` $i"; i=$((i+1)); done > /marker
  echo symvirt-marker-ready ) >/dev/console 2>&1 &
`

// TestMigrationStreamTLS captures a migration stream between two hostds
// in network namespaces: with the hostds' certificates the stream is TLS
// (hostd's own tunnel) and the guest's RAM marker never shows on the
// wire; the same hostds with migration TLS turned off (the control) send
// it in the clear. Against a TLS destination waiting for a VM that hostd
// a was granted to hand over, a rogue QEMU streaming with another CA's
// hostd certificate, the cluster CA's client or coordinator certificate,
// another hostd's certificate, or no TLS, cannot feed the waiting QEMU;
// with hostd a's certificate the same stream is taken (so the refusals
// came from the certificates). Without TLS (the control) a rogue's plain
// stream is taken.
func TestMigrationStreamTLS(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("tcpdump not found: run make deps")
	}
	bin := testenv.Binary(t)
	certs, rogueCA := t.TempDir(), t.TempDir()
	run := func(args ...string) {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("symvirt %v: %v\n%s", args, err, out)
		}
	}
	run("certs", "init", "--dir", certs)
	run("certs", "init", "--dir", rogueCA)
	run("certs", "issue", "--dir", certs, "--role", "client", "--name", "admin")
	run("certs", "issue", "--dir", certs, "--role", "coord", "--name", "coord")
	run("certs", "issue", "--dir", certs, "--role", "hostd", "--name", "c", "--host", "10.77.1.1")
	run("certs", "issue", "--dir", rogueCA, "--role", "hostd", "--name", "b", "--host", "10.77.1.1")
	a, b := testenv.NewNetNS(t, "a"), testenv.NewNetNS(t, "b")
	testenv.Link(t, a, b, "10.77.1.1/24", "10.77.1.2/24")
	start := func(name string, ns *testenv.NetNS, ip, mac string) *testenv.Hostd {
		run("certs", "issue", "--dir", certs, "--role", "hostd", "--name", name, "--host", ip)
		return testenv.StartHostd(t, name, ns, ip+":7070", "pools:\n  nic:\n    - {mac: \""+mac+"\"}\n",
			"--tls-cert", filepath.Join(certs, "hostd-"+name+".crt"),
			"--tls-key", filepath.Join(certs, "hostd-"+name+".key"), "--tls-ca", filepath.Join(certs, "ca.crt"))
	}
	src, dst := start("a", a, "10.77.1.1", "52:54:00:aa:00:01"), start("b", b, "10.77.1.2", "52:54:00:bb:00:01")
	ctx := ctxT(t, 8*time.Minute)
	kernel, _ := testguest.Paths(t)
	spec := guestSpec(t, "mt1", "nic")
	spec.Initrd = testguest.Initrd(t, map[string]testguest.File{"/etc/symvirt/rc.d/30-marker": {Mode: 0o755, Data: []byte(markerRC)}})
	if _, err := src.Client().Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	waitLog(t, serialLog(src, "mt1"), regexp.MustCompile(`symvirt-marker-ready`), 120*time.Second)

	wire, res := captureMigration(t, ctx, src, dst, "mt1")
	t.Logf("with TLS: %d bytes captured, stream %d bytes, marker %d times", len(wire), res.Transferred, bytes.Count(wire, []byte(ramMarker)))
	if n := bytes.Count(wire, []byte(ramMarker)); n != 0 || int64(len(wire)) < res.Transferred/2 {
		t.Fatalf("with TLS: the marker is %d times in %d captured bytes (stream %d bytes); want 0 in a full capture", n, len(wire), res.Transferred)
	}
	waitCounter(t, serialLog(dst, "mt1"), 1, 60*time.Second)
	assertRunningWith(t, dst.Client(), "mt1", "pt0", serialLog(dst, "mt1"))
	// The TLS credentials do not outlive the migration: QEMU would wrap a
	// checkpoint's stream in TLS too.
	if _, err := dst.Client().Checkpoint(ctx, "mt1", hostd.CheckpointOptions{Dir: filepath.Join(t.TempDir(), "ck")}, nil); err != nil {
		t.Fatalf("checkpoint after a TLS migration: %v", err)
	}

	// A rogue QEMU in the source's namespace streams a real VM to the port
	// the destination (a TLS hostd) waits on for rg1, which hostd a was
	// granted to hand over.
	inc := peerIncoming(t, a, certs, "a", "b", rogueSpec("rg1", kernel))
	rogue := startRogue(t, ctx, dst, a, "rg1", inc)
	for _, c := range []struct{ what, dir, cert string }{
		{"another CA's hostd certificate", rogueCA, "hostd-b"},
		{"the CA's client certificate", certs, "client-admin"},
		{"the CA's coordinator certificate", certs, "coord-coord"},
		{"another hostd's certificate than the granted source", certs, "hostd-c"},
	} {
		status := rogue.tryTLS(t, ctx, filepath.Join(c.dir, "ca.crt"), filepath.Join(c.dir, c.cert+".crt"), filepath.Join(c.dir, c.cert+".key"))
		t.Logf("rogue with %s: %q", c.what, status)
		if status == "completed" {
			t.Fatalf("a rogue with %s completed its migration", c.what)
		}
		if st := mustStatus(t, dst.Client(), "rg1"); st.State != "incoming" {
			t.Fatalf("a rogue with %s fed the destination: %s", c.what, st.State)
		}
	}
	t.Logf("plain rogue against TLS: %q", rogue.tryPlain(t, ctx))
	time.Sleep(2 * time.Second) // let the destination read what the rogue sent
	if st := mustStatus(t, dst.Client(), "rg1"); st.State != "incoming" {
		t.Fatalf("a rogue without TLS fed the destination: %s", st.State)
	}
	// The same stream with the granted source's certificate is taken: the
	// refusals above came from the certificates, and left the wait intact.
	if status := rogue.tryTLS(t, ctx, filepath.Join(certs, "ca.crt"), filepath.Join(certs, "hostd-a.crt"), filepath.Join(certs, "hostd-a.key")); status != "completed" {
		t.Fatalf("the granted source's certificate: stream ended %q, want completed", status)
	}
	for deadline := time.Now().Add(30 * time.Second); mustStatus(t, dst.Client(), "rg1").State == "incoming"; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the granted source's stream completed but the destination still waits")
		}
	}
	if st := mustStatus(t, dst.Client(), "rg1"); st.State == "stopped" {
		t.Fatalf("the granted source's stream did not load: %s", st.State)
	}
	if err := dst.Client().AbortIncoming(ctx, "rg1"); err != nil {
		t.Fatal(err)
	}

	// The control: the same hostds with migration TLS off.
	for _, h := range []*testenv.Hostd{src, dst} {
		h.Kill()
		h.Args = append(h.Args, "--no-migration-tls")
		h.Start()
	}
	wire, res = captureMigration(t, ctx, dst, src, "mt1")
	t.Logf("without TLS: %d bytes captured, stream %d bytes, marker %d times", len(wire), res.Transferred, bytes.Count(wire, []byte(ramMarker)))
	if n := bytes.Count(wire, []byte(ramMarker)); n == 0 {
		t.Fatalf("without TLS the marker is not in %d captured bytes (stream %d bytes): the capture proves nothing", len(wire), res.Transferred)
	}
	inc2, err := dst.Client().Incoming(ctx, hostd.IncomingRequest{Spec: rogueSpec("rg2", kernel)})
	if err != nil {
		t.Fatal(err)
	}
	rogue = startRogue(t, ctx, dst, a, "rg2", inc2.URI)
	if status := rogue.tryPlain(t, ctx); status != "completed" {
		t.Fatalf("without TLS a rogue's stream ended %q, want completed (the control)", status)
	}
	if st := mustStatus(t, dst.Client(), "rg2"); st.State == "incoming" {
		t.Fatalf("without TLS the destination still waits after the rogue's stream")
	}
}

// captureMigration migrates vm from one hostd to the other while tcpdump
// records the destination namespace's traffic on the migration ports.
func captureMigration(t *testing.T, ctx context.Context, from, to *testenv.Hostd, vm string) ([]byte, hostd.MigrateResult) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "mig.pcap")
	cmd := exec.Command("ip", "netns", "exec", to.NS.Name, "tcpdump", "-i", "any", "-U", "-s", "0", "-w", file,
		"tcp portrange 49152-49407")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var seen strings.Builder
		for sc.Scan() {
			seen.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "listening on") {
				ready <- ""
				return
			}
		}
		ready <- seen.String()
	}()
	if msg := <-ready; msg != "" {
		t.Fatalf("tcpdump: %s", msg)
	}
	res, err := from.Client().Migrate(ctx, vm, hostd.MigrateOptions{To: to.Addr(),
		Grant: coordGrant(t, filepath.Dir(from.Args[1]), vm, hostdName(from), hostdName(to))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	wire, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if st := mustStatus(t, to.Client(), vm); st.State != "running" {
		t.Fatalf("after migration: %s at the destination", st.State)
	}
	return wire, res
}

// rogue is a QEMU outside any hostd with the very machine a destination
// waits for (its command line, copied), so only the channel decides
// whether its stream is taken.
type rogue struct {
	mon *qmp.Client
	uri string
}

func startRogue(t *testing.T, ctx context.Context, dst *testenv.Hostd, ns *testenv.NetNS, name, uri string) *rogue {
	t.Helper()
	st := mustStatus(t, dst.Client(), name)
	argv, err := os.ReadFile("/proc/" + strconv.Itoa(st.PID) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	vmDir, dir := dst.Layout().VM(name), t.TempDir()
	args := []string{"netns", "exec", ns.Name}
	for _, a := range strings.Split(strings.TrimRight(string(argv), "\x00"), "\x00") {
		if a == "-incoming" || a == "defer" {
			continue
		}
		args = append(args, strings.ReplaceAll(a, vmDir, dir))
	}
	// ip netns exec execs QEMU: the process is QEMU.
	cmd := exec.Command("ip", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("rogue qemu output:\n%s", out.String())
		}
	})
	var mon *qmp.Client
	sock := ""
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		m, _ := filepath.Glob(filepath.Join(dir, "qmp*.sock"))
		if len(m) == 0 {
			continue
		}
		sock = m[0]
		if mon, err = qmp.Dial(ctx, "unix", sock); err == nil {
			break
		}
	}
	if mon == nil {
		t.Fatalf("rogue qemu: no QMP at %s: %v", sock, err)
	}
	t.Cleanup(func() { mon.Close() })
	return &rogue{mon: mon, uri: uri}
}

// tryTLS migrates with credentials of the rogue's own CA; it does not
// check the destination's certificate (it wants in, whoever that is).
func (r *rogue) tryTLS(t *testing.T, ctx context.Context, ca, cert, key string) string {
	t.Helper()
	dir := t.TempDir()
	for from, to := range map[string]string{ca: "ca-cert.pem", key: "client-key.pem"} {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, to), data, 0o600)
	}
	os.WriteFile(filepath.Join(dir, "client-cert.pem"), qemuUsableCert(t, filepath.Dir(ca), cert), 0o600)
	r.mon.Execute(ctx, "object-del", map[string]any{"id": "rogue"}, nil)
	if err := r.mon.Execute(ctx, "object-add", map[string]any{"qom-type": "tls-creds-x509", "id": "rogue",
		"dir": dir, "endpoint": "client", "verify-peer": false}, nil); err != nil {
		t.Fatal(err)
	}
	if err := r.mon.MigrateSetParameters(ctx, map[string]any{"tls-creds": "rogue", "tls-hostname": "10.77.1.2"}); err != nil {
		t.Fatal(err)
	}
	status := r.migrate(t, ctx)
	r.mon.MigrateSetParameters(ctx, map[string]any{"tls-creds": "", "tls-hostname": ""})
	return status
}

func (r *rogue) tryPlain(t *testing.T, ctx context.Context) string {
	t.Helper()
	return r.migrate(t, ctx)
}

// migrate streams the rogue to the destination's URI and returns how its
// migration ended ("completed", "failed"; "" if it never ended).
func (r *rogue) migrate(t *testing.T, ctx context.Context) string {
	t.Helper()
	if err := r.mon.Migrate(ctx, r.uri); err != nil {
		t.Fatalf("rogue migrate: %v", err)
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		mi, err := r.mon.QueryMigrate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if mi.Status == "completed" || mi.Status == "failed" {
			return mi.Status
		}
	}
	r.mon.MigrateCancel(ctx)
	return ""
}

// coordGrant signs, with the coordinator certificate "coord" of the PKI in
// certs, a grant for a direct migration of vm from source to dest (hosts by
// their certificates' names): what the coordinator gives a migrate step.
func coordGrant(t *testing.T, certs, vm, source, dest string) *hostd.Grant {
	t.Helper()
	s, err := pki.LoadSigner(pki.CertPaths(certs, pki.RoleCoord, "coord"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := hostd.SignGrant(s, hostd.MigrationGrant{VM: vm, Source: source, Dest: dest, Expires: time.Now().Add(5 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// hostdName is the certificate name of a test hostd started with
// --tls-cert DIR/hostd-NAME.crt.
func hostdName(h *testenv.Hostd) string {
	return strings.TrimSuffix(strings.TrimPrefix(filepath.Base(h.Args[1]), "hostd-"), ".crt")
}

func rogueSpec(name, kernel string) hostd.Spec {
	return hostd.Spec{Name: name, Memory: 64, VCPUs: 1, Kernel: kernel, Append: "console=ttyS0 quiet", Guest: hostd.Channel{Type: "none"}}
}

// peerIncoming asks the destination (at 10.77.1.2) for an incoming
// migration as hostd "from" would, over mutual TLS from namespace ns with
// the coordinator's grant naming it the source; it returns the URI.
func peerIncoming(t *testing.T, ns *testenv.NetNS, certs, from, to string, spec hostd.Spec) string {
	t.Helper()
	cfg, err := pki.ClientConfig(filepath.Join(certs, "hostd-"+from+".crt"), filepath.Join(certs, "hostd-"+from+".key"),
		filepath.Join(certs, "ca.crt"), pki.RoleHostd)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(hostd.IncomingRequest{Spec: spec, Grant: coordGrant(t, certs, spec.Name, from, to)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := testenv.HTTPClientIn(ns, cfg).Post("https://10.77.1.2:7070/v1/incoming", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var inc hostd.IncomingResponse
	if err := json.NewDecoder(resp.Body).Decode(&inc); err != nil || resp.StatusCode != 200 || inc.URI == "" {
		t.Fatalf("incoming as peer %s: %s %+v %v", from, resp.Status, inc, err)
	}
	return inc.URI
}

// qemuUsableCert is the certificate at path re-issued by the same CA (in
// caDir) with key encipherment added to its key usage, which QEMU 10's
// TLS credentials require of a client certificate (7.2 did not check):
// the same identity, key and role, so a refusal still comes from them.
func qemuUsableCert(t *testing.T, caDir, path string) []byte {
	t.Helper()
	load := func(p string) *pem.Block {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		if b == nil {
			t.Fatalf("%s: no PEM", p)
		}
		return b
	}
	ca, err := x509.ParseCertificate(load(filepath.Join(caDir, pki.CACertFile)).Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(load(filepath.Join(caDir, pki.CAKeyFile)).Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(load(path).Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leaf.KeyUsage |= x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, leaf.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
