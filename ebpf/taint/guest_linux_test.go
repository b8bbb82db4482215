//go:build linux && amd64

package taint

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testguest"
)

const inGuestEnv = "SYMVIRT_TAINT_IN_GUEST"

// TestGuestKernel boots the test guest (Debian's cloud kernel, 6.1) under
// QEMU and runs TestInGuest there, with this package's test binary built
// static: the BPF programs must load, attach and track on the guest kernel.
func TestGuestKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	if os.Getenv(inGuestEnv) != "" {
		t.Skip("inside the guest")
	}
	kernel, _ := testguest.Paths(t)
	bin := filepath.Join(t.TempDir(), "taint.test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/taint.test": {Src: bin, Mode: 0o755},
		"/etc/symvirt/rc.d/50-taint": {Mode: 0o755, Data: []byte("#!/bin/sh\n" +
			"echo \"taint-guest-kernel $(uname -r)\"\n" +
			"cd /tmp && " + inGuestEnv + "=1 /taint.test -test.run '^TestInGuest$' -test.v -test.count=1 2>&1\n" +
			"echo \"taint-guest-exit=$?\"\n")},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testguest.Qemu, "-M", "q35", "-accel", "tcg", "-m", "768",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 symvirt.name=taint",
		"-serial", "stdio")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var console []string
	exit := -1
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		console = append(console, line)
		if rest, ok := strings.CutPrefix(line, "taint-guest-exit="); ok {
			exit, _ = strconv.Atoi(rest)
			break
		}
	}
	text := strings.Join(console, "\n")
	if exit != 0 || !strings.Contains(text, "--- PASS: TestInGuest") {
		t.Fatalf("in-guest test failed (exit %d, %v); console:\n%s", exit, ctx.Err(), text)
	}
	for _, l := range console {
		if strings.HasPrefix(l, "taint-guest-kernel") || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "=== ") {
			t.Log(l)
		}
	}
}

// TestInGuest runs inside the test guest (see TestGuestKernel). The guest has
// no network interface, so an outside exchange is a UDP send to a
// documentation address that fails with ENETUNREACH: the attempt taints, and
// no packet leaves.
func TestInGuest(t *testing.T) {
	if os.Getenv(inGuestEnv) != "1" {
		t.Skip("runs inside the test guest only (TestGuestKernel)")
	}
	tr, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	src := startAgent(t, "tainted", "", pw)
	pipeReader := startAgent(t, "pipe reader", "", pr)
	pr.Close()
	pw.Close()
	src.do("udp-try 192.0.2.1:9")
	checkTaint(t, "tainted", waitTainted(t, tr, "tainted", src.pid), KindUDP, "", 0)

	child, err := strconv.Atoi(src.do("fork"))
	if err != nil {
		t.Fatal(err)
	}
	checkTaint(t, "child", waitTainted(t, tr, "child", child), KindInherit, "", src.pid)

	r := startAgent(t, "unix reader", "")
	path := filepath.Join(t.TempDir(), "s.sock")
	r.do("listen unix " + path)
	r.send("accept-read")
	src.do("send unix " + path)
	r.wait()
	checkTaint(t, "unix reader", waitTainted(t, tr, "unix reader", r.pid), KindIPC, ChannelUnix, src.pid)

	pipeReader.send("pipe-read")
	src.do("pipe-write")
	pipeReader.wait()
	checkTaint(t, "pipe reader", waitTainted(t, tr, "pipe reader", pipeReader.pid), KindIPC, ChannelPipe, src.pid)

	tcp := startAgent(t, "tcp reader", "")
	addr := tcp.do("listen tcp 127.0.0.1:0")
	tcp.send("accept-read")
	src.do("send tcp " + addr)
	tcp.wait()
	checkTaint(t, "tcp reader", waitTainted(t, tr, "tcp reader", tcp.pid), KindIPC, ChannelLoopback, src.pid)

	clean := startAgent(t, "loopback only", "")
	clean.do("udp-try 127.0.0.1:9")
	addr = clean.do("tcp-serve 127.0.0.1:0")
	clean.do("connect " + addr)
	assertClean(t, tr, "loopback only", clean.pid)

	src.do("thread-exit")
	if _, ok := tr.IsTainted(src.pid); !ok {
		t.Fatal("a thread's exit untainted its process")
	}
	src.send("exit")
	waitUntainted(t, tr, "exited", src.pid)
	if err := tr.Reset(0); err != nil {
		t.Fatal(err)
	}
	waitUntainted(t, tr, "reset child", child)
}
