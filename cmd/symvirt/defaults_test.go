package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// stubCoord records what the CLI asks a coordinator and answers every
// operation as done.
type stubCoord struct {
	mu   sync.Mutex
	reqs map[string]string // path -> body
}

func (s *stubCoord) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.reqs[r.URL.Path] = strings.TrimSpace(string(body))
	s.mu.Unlock()
	res := `{"op":"o","kind":"migrate","job":"j1","done":true,"outcome":"migrated","vms":[]}`
	if strings.HasSuffix(r.URL.Path, "/evacuate") {
		res = "[" + res + "]"
	}
	io.WriteString(w, `{"result":`+res+"}\n")
}

// Live is the default of every command that copies or moves a running VM,
// migrate included (pre-copy, the VM runs while it is copied); --live=false
// opts out; --bandwidth is the one name of the rate cap. What the CLI sends
// the coordinator shows it.
func TestLiveIsTheDefaultEverywhere(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "coord.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stub := &stubCoord{reqs: map[string]string{}}
	srv := &http.Server{Handler: stub}
	go srv.Serve(l)
	defer srv.Close()
	t.Setenv("SYMVIRT_COORD", sock)
	for _, tc := range []struct {
		args       []string
		path, body string
	}{
		{[]string{"migrate", "vm1", "--to", "b"}, "/v1/migrate/vm1", `{"to":["b"],"live":true}`},
		{[]string{"migrate", "vm1", "--to", "b", "--live=false"}, "/v1/migrate/vm1", `{"to":["b"]}`},
		{[]string{"evacuate", "a"}, "/v1/evacuate", `{"hosts":["a"],"live":true}`},
		{[]string{"evacuate", "a", "--live=false"}, "/v1/evacuate", `{"hosts":["a"],"live":false}`},
		{[]string{"checkpoint", "j1"}, "/v1/jobs/j1/checkpoint", `{"live":true}`},
		{[]string{"checkpoint", "j1", "--live=false", "--bandwidth", "200M"}, "/v1/jobs/j1/checkpoint", `{"live":false,"bandwidth":209715200}`},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"symvirt"}, tc.args...), &out, &errb); code != 0 {
			t.Errorf("%v: exit %d: %s%s", tc.args, code, out.String(), errb.String())
		}
		stub.mu.Lock()
		got := stub.reqs[tc.path]
		delete(stub.reqs, tc.path)
		stub.mu.Unlock()
		if got != tc.body {
			t.Errorf("%v: sent %s %s, want %s", tc.args, tc.path, got, tc.body)
		}
	}
}
