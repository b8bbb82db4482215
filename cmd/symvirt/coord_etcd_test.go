package main

import (
	"bytes"
	"strings"
	"testing"
)

// A coordinator is not pointed at a plain-http etcd by mistake: the
// journal would travel in clear; --etcd-insecure-http (tests) says so.
func TestCoordEtcdRefusesPlainHTTP(t *testing.T) {
	for _, tc := range []struct {
		endpoint, want string
	}{
		{"http://127.0.0.1:1", "--etcd-insecure-http"},
		{"127.0.0.1:2379", "want https://HOST:PORT"},
	} {
		var out, errb bytes.Buffer
		exit := run([]string{"symvirt", "coord", "--state-dir", t.TempDir(), "--checkpoint-dir", "/ck",
			"--etcd", tc.endpoint}, &out, &errb)
		if exit != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("--etcd %s: exit %d, stderr %q; want %d and %q", tc.endpoint, exit, errb.String(), exitUsage, tc.want)
		}
	}
}
