package testguest

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBootAppendedInitrd boots the test guest with an rc.d script appended
// by Initrd and waits for its marker, then for symvirt-guest-ready.
func TestBootAppendedInitrd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	kernel, _ := Paths(t)
	initrd := Initrd(t, map[string]File{
		"/etc/symvirt/rc.d/50-marker": {Mode: 0o755, Data: []byte(
			"#!/bin/sh\necho \"testguest-marker $(hostname) $(cat /etc/extra.txt)\"\n")},
		"/etc/extra.txt": {Data: []byte("extra-ok")},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, Qemu, "-M", "q35", "-accel", "tcg", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 symvirt.name=tg1",
		"-serial", "stdio")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	want := []string{"testguest-marker tg1 extra-ok", "symvirt-guest-ready"}
	var console []string
	sc := bufio.NewScanner(out)
	for len(want) > 0 && sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		console = append(console, line)
		if line == want[0] {
			want = want[1:]
		}
	}
	if len(want) > 0 {
		t.Fatalf("console never showed %q (%v); console:\n%s", want[0], ctx.Err(), strings.Join(console, "\n"))
	}
}
