package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// serveError answers every request with the wire error code (as a plain
// reply, or as a stream's last line for a POST).
func serveError(t *testing.T, code *string) string {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		line, _ := json.Marshal(map[string]any{"error": map[string]string{"code": *code, "message": "told " + *code}})
		if r.Method == "GET" {
			w.WriteHeader(http.StatusConflict)
		}
		w.Write(append(line, '\n'))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// Each wire code a coordinator or hostd sends comes back to the CLI as its
// sentinel (errors.Is) and leaves as the exit code of the table, with the
// same code in the JSON error.
func TestWireCodesMapToExitCodes(t *testing.T) {
	var code string
	sock := serveError(t, &code)
	for _, tc := range []struct {
		code string
		exit int
		args []string
	}{
		{"guest_refused", exitGuest, []string{"checkpoint", "j1", "--coord", sock}},
		{"needs_operator", exitPartial, []string{"migrate", "j1", "--to", "b", "--coord", sock}},
		{"failed", exitRolledBack, []string{"restart", "j1", "--coord", sock}},
		{"busy", exitBusy, []string{"checkpoint", "j1", "--coord", sock}},
		{"not_found", exitNotFound, []string{"jobs", "show", "j1", "--coord", sock}},
		{"invalid", exitUsage, []string{"status", "--coord", sock}},
		{"exists", exitUsage, []string{"status", "--coord", sock}},
		{"no_capacity", exitError, []string{"evacuate", "a", "--coord", sock}},
		{"guest", exitGuest, []string{"vm", "--host", sock, "checkpoint", "vm1", "--dir", "/nonexistent/ck"}},
		{"migration", exitRolledBack, []string{"vm", "--host", sock, "migrate", "vm1", "--to-addr", "x:1"}},
		{"invalid_state", exitUsage, []string{"vm", "--host", sock, "status", "vm1"}},
		{"not_found", exitNotFound, []string{"vm", "--host", sock, "status", "vm1"}},
		{"something_new", exitError, []string{"status", "--coord", sock}},
	} {
		code = tc.code
		var out, errb bytes.Buffer
		exit := run(append([]string{"symvirt"}, append(tc.args, "-o", "json")...), &out, &errb)
		var e struct {
			Error struct{ Code, Message string }
		}
		json.Unmarshal(errb.Bytes(), &e)
		want := tc.code
		if want == "something_new" {
			want = "error"
		}
		if exit != tc.exit || e.Error.Code != want || !strings.Contains(e.Error.Message, "told "+tc.code) || out.Len() != 0 {
			t.Errorf("%s (%v): exit %d code %q, want %d %q; stdout %q stderr %q", tc.code, tc.args, exit, e.Error.Code, tc.exit, want, out.String(), errb.String())
		}
	}
}
