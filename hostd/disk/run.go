package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ErrQemuImg: qemu-img failed (its output says why).
var ErrQemuImg = errors.New("qemu-img failed")

// QemuImg is the qemu-img binary.
var QemuImg = "qemu-img"

// command is qemu-img with args; it dies with hostd (a copy no hostd
// follows writes for nobody).
func command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, QemuImg, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func run(ctx context.Context, args ...string) error {
	out, err := command(ctx, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %s: %v: %s: %w", args[0], err, strings.TrimSpace(string(out)), ErrQemuImg)
	}
	return nil
}

func output(ctx context.Context, args ...string) ([]byte, error) {
	var stderr strings.Builder
	cmd := command(ctx, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("qemu-img %s: %v: %s: %w", args[0], err, strings.TrimSpace(stderr.String()), ErrQemuImg)
	}
	return out, nil
}

func removeQuiet(path string) { _ = os.Remove(path) }

// cleanupQMP runs an undo with its own short deadline (the caller's may
// be what failed).
func cleanupQMP(fn func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = fn(ctx)
}
