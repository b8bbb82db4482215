package coord_test

import (
	"context"
	"syscall"
	"testing"
	"time"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func syscallKill(pid int) { syscall.Kill(pid, syscall.SIGKILL) }
