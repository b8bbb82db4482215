package qemu

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// Alive tells a running process from one that is gone or a zombie.
func TestAlive(t *testing.T) {
	if !Alive(os.Getpid()) || Alive(0) || Alive(-1) {
		t.Fatal("Alive is wrong about this process, 0 or -1")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); Alive(cmd.Process.Pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("an exited, unreaped process (a zombie) is alive")
		}
	}
	cmd.Wait()
	if Alive(cmd.Process.Pid) {
		t.Fatal("a reaped process is alive")
	}
}
