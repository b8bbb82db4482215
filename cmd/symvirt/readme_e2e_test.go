package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// readmeExample is the README's multi-host example: its shell lines, its
// host config and its job file.
type readmeExample struct {
	commands      []string
	hostYAML, job string
}

// fenced returns the first ```lang block after marker in text.
func fenced(t *testing.T, text, marker, lang string) string {
	t.Helper()
	i := strings.Index(text, marker)
	if i < 0 {
		t.Fatalf("README: %q not found", marker)
	}
	m := regexp.MustCompile("(?s)```" + lang + "\n(.*?)```").FindStringSubmatch(text[i:])
	if m == nil {
		t.Fatalf("README: no ```%s block after %q", lang, marker)
	}
	return m[1]
}

func readReadme(t *testing.T) readmeExample {
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	sec := text[strings.Index(text, "## A job across hosts"):]
	var ex readmeExample
	for _, l := range strings.Split(fenced(t, sec, "readme_e2e_test.go", "sh"), "\n") {
		if i := strings.Index(l, "#"); i >= 0 {
			l = l[:i]
		}
		if l = strings.TrimSpace(l); l != "" {
			ex.commands = append(ex.commands, l)
		}
	}
	ex.hostYAML = fenced(t, sec, "`/etc/symvirt/host.yaml`", "yaml")
	ex.job = fenced(t, sec, "`job.yaml`", "yaml")
	return ex
}

// The README's multi-host example, run as written: a CA and certificates,
// a hostd on each of two hosts (network namespaces 10.0.0.1 and 10.0.0.2,
// joined with the coordinator's 10.0.0.100), the coordinator, the hosts
// added, the job file created (a VM on each host), shown, checkpointed, and
// vm1 migrated to node2, where it then runs. Only paths are mapped (the
// CA, /etc/symvirt/host.yaml, /shared/ckpt, /srv/images: the test guest,
// whose guest agent starts when its command line asks) and each daemon
// gets a state dir of its own; every command must exit 0. A README that
// no longer works fails this test.
func TestREADMEMultiHostExample(t *testing.T) {
	testenv.RequireRoot(t)
	kernel, _ := testguest.Paths(t)
	images := filepath.Dir(kernel)
	ex := readReadme(t)
	tmp := t.TempDir()
	pki, ckpt := filepath.Join(tmp, "pki"), filepath.Join(tmp, "ckpt")
	os.Mkdir(ckpt, 0o700)
	hostYAML, jobFile := filepath.Join(tmp, "host.yaml"), filepath.Join(tmp, "job.yaml")
	paths := strings.NewReplacer("/etc/symvirt/pki", pki, "/etc/symvirt/host.yaml", hostYAML, "/shared/ckpt", ckpt,
		"/srv/images", images, "-f job.yaml", "-f "+jobFile)
	os.WriteFile(hostYAML, []byte(paths.Replace(ex.hostYAML)), 0o600)
	job := strings.ReplaceAll(paths.Replace(ex.job), "append: console=ttyS0", `append: "console=ttyS0 symvirt.agent=1"`)
	os.WriteFile(jobFile, []byte(job), 0o600)

	mgmt := testenv.NewNetNS(t, "rm")
	testenv.Bridge(t, mgmt, "mgmt")
	testenv.Run(t, "ip", "-n", mgmt.Name, "addr", "add", "10.0.0.100/24", "dev", "mgmt")
	hostNS := map[string]*testenv.NetNS{}
	for _, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		hostNS[ip] = testenv.NewNetNS(t, "rh")
		testenv.Attach(t, hostNS[ip], ip+"/24", mgmt, "mgmt")
	}
	hosts := map[string]*testenv.Hostd{}
	var c *testenv.Coord
	for _, line := range ex.commands {
		args := strings.Fields(paths.Replace(line))
		if args[0] != "symvirt" || len(args) < 2 {
			t.Fatalf("README example: %q is not a symvirt command", line)
		}
		args = args[1:]
		t.Logf("$ %s", line)
		switch args[0] {
		case "hostd":
			ip := listenIP(t, args)
			h := testenv.StartHostd(t, ip, hostNS[ip], "", "", args[1:]...)
			hosts[ip] = h
		case "coord":
			c = testenv.StartCoordIn(t, mgmt, filepath.Join(tmp, "coord"), ckpt, nil, args[1:]...)
		default:
			env := []string{}
			if c != nil {
				env = append(env, "SYMVIRT_COORD="+c.Socket())
			}
			r := symvirt(t, env, args...)
			t.Logf("%s%s", r.stdout, r.stderr)
			if r.exit != 0 {
				t.Fatalf("README example: %q failed:\n%s", line, r)
			}
		}
	}
	if c == nil || len(hosts) != 2 {
		t.Fatalf("README example: want a coordinator and two hostds, got %v and %d", c != nil, len(hosts))
	}
	// The last migrate moved vm1 to node2 (10.0.0.2): the coordinator says
	// so, node2's hostd runs it and node1's no longer has it.
	r := symvirt(t, []string{"SYMVIRT_COORD=" + c.Socket()}, "jobs", "show", "mpi-job", "-o", "json")
	var j struct{ VMs []struct{ Name, Host string } }
	json.Unmarshal([]byte(r.stdout), &j)
	where := map[string]string{}
	for _, v := range j.VMs {
		where[v.Name] = v.Host
	}
	if where["vm1"] != "node2" {
		t.Fatalf("after the README's migrate, vm1 is on %q, want node2:\n%s", where["vm1"], r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if info, err := hosts["10.0.0.2"].Client().Status(ctx, "vm1"); err != nil || info.State != "running" {
		t.Fatalf("vm1 on node2: %+v %v", info, err)
	}
	if info, err := hosts["10.0.0.1"].Client().Status(ctx, "vm1"); err == nil {
		t.Fatalf("vm1 is still on node1: %+v", info)
	}
}

// listenIP is the host of a hostd command line's --listen.
func listenIP(t *testing.T, args []string) string {
	for i, a := range args {
		if a == "--listen" && i+1 < len(args) {
			ip, _, _ := strings.Cut(args[i+1], ":")
			return ip
		}
	}
	t.Fatalf("README example: hostd without --listen: %v", args)
	return ""
}
