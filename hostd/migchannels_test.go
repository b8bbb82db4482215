package hostd

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// scriptedQEMU answers a monitor's commands over a pipe like a QEMU whose
// failed multifd migration is still being cleaned up for the first
// cleanupPolls query-yank calls; it records every command.
func scriptedQEMU(t *testing.T, multifd bool, cleanupPolls int) (*qmp.Client, <-chan []string) {
	t.Helper()
	srv, cli := net.Pipe()
	t.Cleanup(func() { srv.Close(); cli.Close() })
	seen := make(chan []string, 1)
	go func() {
		var cmds []string
		defer func() { srv.Close(); seen <- cmds }()
		w := json.NewEncoder(srv)
		w.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{"qemu": map[string]int{"major": 10, "minor": 0, "micro": 2}}, "capabilities": []string{}}})
		r := bufio.NewReader(srv)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			json.Unmarshal(line, &req)
			cmds = append(cmds, req.Execute)
			var ret any = map[string]any{}
			switch req.Execute {
			case "query-migrate-capabilities":
				ret = []map[string]any{{"capability": "multifd", "state": multifd}, {"capability": "events", "state": true}}
			case "query-yank":
				ret = []map[string]any{{"type": "chardev", "id": "serial0"}}
				if cleanupPolls > 0 {
					cleanupPolls--
					ret = append(ret.([]map[string]any), map[string]any{"type": "migration"})
				}
			case "migrate-set-capabilities":
				if cleanupPolls > 0 {
					// QEMU 10.0.2 aborts here (yank.c:107) once its
					// cleanup finds multifd off.
					return
				}
			}
			w.Encode(map[string]any{"return": ret, "id": req.ID})
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.New(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	return mon, seen
}

// TestMultifdOffOnlyAfterTeardown: multifd is turned off only after QEMU's
// cleanup of the failed migration ended (its yank instance gone), and not
// touched at all when it is off.
func TestMultifdOffOnlyAfterTeardown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	mon, seen := scriptedQEMU(t, true, 3)
	waited, err := settleMultifd(ctx, mon)
	if err != nil || !waited {
		t.Fatalf("settle: waited %v, err %v", waited, err)
	}
	mon.Close()
	want := []string{"qmp_capabilities", "query-migrate-capabilities", "query-yank", "query-yank", "query-yank", "query-yank", "migrate-set-capabilities"}
	if got := <-seen; len(got) != len(want) || got[len(got)-1] != want[len(want)-1] || got[len(got)-2] != "query-yank" {
		t.Fatalf("commands %v, want %v", got, want)
	}

	mon, seen = scriptedQEMU(t, false, 3)
	if waited, err := settleMultifd(ctx, mon); err != nil || waited {
		t.Fatalf("settle with multifd off: waited %v, err %v", waited, err)
	}
	mon.Close()
	if got := <-seen; len(got) != 2 {
		t.Fatalf("commands with multifd off %v, want only its query", got)
	}
}
