package hostd

import (
	"context"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testqmp"
	"github.com/symvirt/symvirt/qmp"
)

// scriptedQEMU answers a monitor's commands like a QEMU whose
// multifd capability is multifd and whose failed multifd migration is
// still being cleaned up for the first cleanupPolls query-yank calls.
func scriptedQEMU(t *testing.T, multifd bool, cleanupPolls int) (*qmp.Client, *testqmp.Monitor) {
	return scriptedQEMUVersion(t, 10, multifd, cleanupPolls)
}

func scriptedQEMUVersion(t *testing.T, major int, multifd bool, cleanupPolls int) (*qmp.Client, *testqmp.Monitor) {
	t.Helper()
	return testqmp.Start(t, major, func(r testqmp.Request) testqmp.Reply {
		switch r.Execute {
		case "query-migrate-capabilities":
			return testqmp.Reply{Return: []map[string]any{{"capability": "multifd", "state": multifd}, {"capability": "events", "state": true}}}
		case "query-yank":
			ret := []map[string]any{{"type": "chardev", "id": "serial0"}}
			if cleanupPolls > 0 {
				cleanupPolls--
				ret = append(ret, map[string]any{"type": "migration"})
			}
			return testqmp.Reply{Return: ret}
		case "migrate-set-capabilities":
			// QEMU 10.0.2 aborts here (yank.c:107) once its cleanup
			// finds multifd off.
			return testqmp.Reply{Hangup: cleanupPolls > 0}
		}
		return testqmp.Reply{}
	})
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
	<-seen.Done()
	want := []string{"qmp_capabilities", "query-migrate-capabilities", "query-yank", "query-yank", "query-yank", "query-yank", "migrate-set-capabilities"}
	if got := seen.Commands(); len(got) != len(want) || got[len(got)-1] != want[len(want)-1] || got[len(got)-2] != "query-yank" {
		t.Fatalf("commands %v, want %v", got, want)
	}

	mon, seen = scriptedQEMU(t, false, 3)
	if waited, err := settleMultifd(ctx, mon); err != nil || waited {
		t.Fatalf("settle with multifd off: waited %v, err %v", waited, err)
	}
	mon.Close()
	<-seen.Done()
	if got := seen.Commands(); len(got) != 2 {
		t.Fatalf("commands with multifd off %v, want only its query", got)
	}
}

// TestChannelsAgreed: a side offers or accepts channels only with QEMU 9
// or later, migration TLS off and more than one channel configured; a
// source refuses an answer of more channels than it can send.
func TestChannelsAgreed(t *testing.T) {
	on, off := true, false
	cases := []struct {
		major, setting int
		tls            *bool
		want           int
	}{
		{10, 2, &off, 2}, {9, 4, &off, 4}, {10, 1, &off, 1}, {7, 2, &off, 1}, {8, 2, &off, 1}, {10, 2, &on, 1},
	}
	for _, c := range cases {
		mon, _ := scriptedQEMUVersion(t, c.major, false, 0)
		h := &Host{cfg: Config{MigrationChannels: c.setting, MigrationTLS: c.tls}}
		if got := h.channelsHere(mon); got != c.want {
			t.Errorf("QEMU %d, migration_channels %d, tls %v: %d channels, want %d", c.major, c.setting, *c.tls, got, c.want)
		}
		vm := &VM{name: "v", h: h}
		// 0 (one stream) always; the count offered only if over one;
		// 1, or more than offered, never.
		answers := map[int]bool{0: true, 1: false, c.want + 1: false}
		if c.want > 1 {
			answers[c.want] = true
		}
		for answer, ok := range answers {
			if err := vm.checkChannels(mon, answer); (err == nil) != ok {
				t.Errorf("QEMU %d, %d channels here: an answer of %d: %v", c.major, c.want, answer, err)
			}
		}
		mon.Close()
	}
}
