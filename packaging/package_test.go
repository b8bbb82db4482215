// The packages that `make package` builds, installed with dpkg -i on a fresh
// Debian 12 (a debootstrap root, cached under build/debian12 and copied for
// each run) as a site would install them.
package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/internal/testenv"
)

// need skips (or, under make test, fails) without a tool the test runs.
func need(t *testing.T, tools ...string) {
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("SYMVIRT_REQUIRE_QEMU") != "" {
				t.Fatalf("%s not found (apt-get install dpkg systemd gcc make)", tool)
			}
			t.Skipf("skipping: %s not found", tool)
		}
	}
}

// run runs a command and returns its output; it fails the test on an error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// debs runs make package and returns the two packages by name.
func debs(t *testing.T, root string) map[string]string {
	run(t, "make", "-s", "-C", root, "package")
	got := map[string]string{}
	for _, name := range []string{"symvirt-host", "symvirt-guest"} {
		m, _ := filepath.Glob(filepath.Join(root, "build/packages", name+"_*.deb"))
		if len(m) != 1 {
			t.Fatalf("build/packages: %d %s packages, want 1: %v", len(m), name, m)
		}
		got[name] = m[0]
	}
	return got
}

// freshRoot is a copy of the cached Debian 12 root.
func freshRoot(t *testing.T, root string) string {
	cache := filepath.Join(root, "build/debian12")
	run(t, filepath.Join(root, "packaging/debian12-root"), cache)
	dir := filepath.Join(t.TempDir(), "root")
	run(t, "cp", "-a", cache, dir)
	return dir
}

// install copies a .deb into the root and installs it with dpkg -i.
func install(t *testing.T, chroot, deb string) {
	t.Helper()
	run(t, "cp", deb, filepath.Join(chroot, "tmp"))
	t.Log(run(t, "chroot", chroot, "dpkg", "-i", "/tmp/"+filepath.Base(deb)))
}

func mustExist(t *testing.T, chroot string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join(chroot, p)); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
}

// verify runs systemd-analyze verify on installed units, against the root's
// own systemd: clean means no output at all.
func verify(t *testing.T, chroot string, units ...string) {
	t.Helper()
	out, err := exec.Command("systemd-analyze", append([]string{"verify", "--root=" + chroot}, units...)...).CombinedOutput()
	t.Logf("systemd-analyze verify %s: %v %q", strings.Join(units, " "), err, out)
	if err != nil || len(out) != 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", strings.Join(units, " "), err, out)
	}
}

func TestPackagesInstallOnDebian12(t *testing.T) {
	testenv.RequireRoot(t)
	// packaging/debian12-root installs debootstrap if it is missing.
	need(t, "dpkg-deb", "systemd-analyze", "make", "gcc", "chroot")
	root := testenv.RepoRoot(t)
	pkgs := debs(t, root)
	chroot := freshRoot(t, root)
	t.Run("host", func(t *testing.T) { checkHost(t, chroot, pkgs["symvirt-host"]) })
	t.Run("guest", func(t *testing.T) { checkGuest(t, root, chroot, pkgs["symvirt-guest"]) })
}

// checkHost installs symvirt-host, checks what it put where, runs the CLI
// and its bash completion in the root, then purges it.
func checkHost(t *testing.T, chroot, deb string) {
	install(t, chroot, deb)
	mustExist(t, chroot, "/usr/bin/symvirt", "/lib/systemd/system/symvirt-hostd.service",
		"/lib/systemd/system/symvirt-coord.service", "/etc/symvirt/hostd.yaml", "/etc/default/symvirt-hostd",
		"/etc/default/symvirt-coord", "/usr/share/bash-completion/completions/symvirt",
		"/usr/share/zsh/vendor-completions/_symvirt", "/usr/share/doc/symvirt-host/README.md",
		"/usr/sbin/symvirt-node-alert")
	verify(t, chroot, "symvirt-hostd.service", "symvirt-coord.service")
	help := run(t, "chroot", chroot, "symvirt", "--help")
	for _, want := range []string{"hostd", "coord", "completion"} {
		if !strings.Contains(help, want) {
			t.Errorf("symvirt --help in the root has no %q:\n%s", want, help)
		}
	}
	run(t, "chroot", chroot, "symvirt", "hostd", "--help")
	// Bash completes a subcommand through the installed script, loaded the
	// way bash-completion loads it on the first TAB.
	out := run(t, "chroot", chroot, "bash", "-c", `source /usr/share/bash-completion/bash_completion
_completion_loader symvirt
COMP_WORDS=(symvirt vm chec); COMP_CWORD=2; COMP_LINE="symvirt vm chec"; COMP_POINT=${#COMP_LINE}
"$(complete -p symvirt | sed 's/.*-F \([^ ]*\) .*/\1/')"
printf '%s\n' "${COMPREPLY[@]}"`)
	if strings.TrimSpace(out) != "checkpoint" {
		t.Errorf("bash completion of 'symvirt vm chec' = %q, want checkpoint", out)
	}
	checkDaemons(t, chroot)
	run(t, "chroot", chroot, "dpkg", "--purge", "symvirt-host")
	for _, p := range []string{"/usr/bin/symvirt", "/lib/systemd/system/symvirt-hostd.service", "/etc/symvirt/hostd.yaml"} {
		if _, err := os.Stat(filepath.Join(chroot, p)); err == nil {
			t.Errorf("%s is still there after dpkg --purge symvirt-host", p)
		}
	}
}

// checkGuest installs symvirt-guest and builds examples/hook in the root
// with pkg-config, shared and static, and runs both.
func checkGuest(t *testing.T, root, chroot, deb string) {
	install(t, chroot, deb)
	mustExist(t, chroot, "/usr/bin/symvirt", "/lib/systemd/system/symvirt-guestd.service",
		"/usr/include/symvirt.h", "/etc/symvirt/hooks.d")
	verify(t, chroot, "symvirt-guestd.service")
	run(t, "chroot", chroot, "symvirt", "guestd", "--help")
	run(t, "cp", filepath.Join(root, "examples/hook/hook.c"), filepath.Join(chroot, "tmp/hook.c"))
	out := run(t, "chroot", chroot, "sh", "-ec", `cd /tmp
echo "pkg-config: $(pkg-config --cflags --libs symvirt)"
cc -Wall -Werror -o hook hook.c $(pkg-config --cflags --libs symvirt)
cc -Wall -Werror -static -o hook-static hook.c $(pkg-config --cflags --libs --static symvirt)
ldd ./hook | grep libsymvirt
./hook t 2
./hook-static t 2`)
	t.Log(out)
	for _, want := range []string{"x86_64-linux-gnu/libsymvirt.so.1 (", "hook: done after 2 iterations"} {
		if !strings.Contains(out, want) {
			t.Errorf("building and running examples/hook in the root: no %q", want)
		}
	}
}

// daemonsScript runs, in the root, hostd and the coordinator from their
// units' ExecStart lines with the installed /etc/default files and the
// example configuration as they are; registers the hostd with the
// coordinator and scrapes both metrics addresses (bash's /dev/tcp: the
// root has no HTTP client).
const daemonsScript = `
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/dev/shm"
mount -t tmpfs tmpfs "$R/run"
ip link set lo up
exec chroot "$R" /bin/bash -ec '
. /etc/default/symvirt-hostd
. /etc/default/symvirt-coord
start() { eval "$(sed -n "s/^ExecStart=//p" /lib/systemd/system/$1.service)" >/tmp/$1.log 2>&1 & }
start symvirt-hostd
start symvirt-coord
trap "kill %1 %2; wait" EXIT
for i in $(seq 100); do
	[ -S /var/lib/symvirt/hostd.sock ] && [ -S /var/lib/symvirt-coord/coord.sock ] && break
	sleep 0.2
done
cat /tmp/symvirt-hostd.log /tmp/symvirt-coord.log
symvirt hosts add local /var/lib/symvirt/hostd.sock
symvirt hosts
scrape() {
	exec 3<>/dev/tcp/127.0.0.1/$1
	printf "GET /metrics HTTP/1.0\r\n\r\n" >&3
	grep -E "^HTTP/|^symvirt_[a-z_]*(_count|_hosts) " <&3
	exec 3<&-
}
scrape 9464
scrape 9465
'`

// checkDaemons starts the installed daemons as their units would, in a
// mount, network and PID namespace of their own.
func checkDaemons(t *testing.T, chroot string) {
	need(t, "unshare", "ip")
	// A PID namespace of their own: whatever the script does, the daemons
	// die with it (a leaked daemon would hold every fd the test inherited).
	cmd := exec.Command("unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--propagation", "private",
		"bash", "-ec", daemonsScript)
	cmd.Env = append(os.Environ(), "R="+chroot)
	out, err := cmd.CombinedOutput()
	t.Logf("the installed daemons:\n%s", out)
	if err != nil {
		t.Fatalf("running the installed daemons: %v", err)
	}
	for _, want := range []string{"hostd serving", "coord serving", "HTTP/1.0 200 OK",
		"symvirt_hostd_live_snapshot_pause_seconds_count 0", "symvirt_coord_hosts 1"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the installed daemons: no %q", want)
		}
	}
}
