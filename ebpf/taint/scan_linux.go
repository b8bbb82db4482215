//go:build linux && amd64

package taint

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// scanExisting taints the processes that already hold a TCP or connected
// UDP socket to an outside peer when the tracker starts (the BPF programs
// only see what happens after they attach). It reads /proc/net/{tcp,udp}{,6}
// of the tracker's own network namespace and maps socket inodes to
// processes through /proc/PID/fd.
func (t *Tracker) scanExisting(ignore []netip.Prefix) {
	peers := make(map[uint64]netip.AddrPort) // socket inode -> outside peer
	for _, f := range []string{"tcp", "tcp6", "udp", "udp6"} {
		if err := scanNetFile("/proc/net/"+f, ignore, peers); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.log.Debug("taint: scan", "file", f, "err", err)
		}
	}
	if len(peers) == 0 {
		return
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	now := bootNow()
	for _, dir := range procs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil || pid == os.Getpid() {
			continue
		}
		fds, err := os.ReadDir(dir + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(dir + "/fd/" + fd.Name())
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64)
			if err != nil {
				continue
			}
			peer, ok := peers[ino]
			if !ok {
				continue
			}
			v := taintTaint{Since: now, Kind: kindExisting, Port: peer.Port(), Addr: peer.Addr().As16()}
			comm, _ := os.ReadFile(dir + "/comm")
			for i, c := range []byte(strings.TrimSpace(string(comm))) {
				if i < len(v.Comm)-1 {
					v.Comm[i] = int8(c)
				}
			}
			k := uint32(pid)
			if err := t.objs.Taints.Update(&k, &v, ebpf.UpdateNoExist); err == nil {
				t.mu.Lock()
				t.taints[pid] = convert(pid, &v)
				t.mu.Unlock()
			}
			break
		}
	}
}

// scanNetFile adds the inodes of /proc/net/{tcp,udp}[6] sockets that are
// connected (state 01: TCP established, UDP connected) to an outside peer.
func scanNetFile(path string, ignore []netip.Prefix, peers map[uint64]netip.AddrPort) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "01" {
			continue
		}
		local, err1 := parseProcAddr(fields[1])
		remote, err2 := parseProcAddr(fields[2])
		ino, err3 := strconv.ParseUint(fields[9], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || ino == 0 {
			continue
		}
		if IsOutside(remote.Addr(), local.Addr(), ignore) {
			peers[ino] = remote
		}
	}
	return sc.Err()
}

// parseProcAddr parses "0100007F:0016": an address as 32-bit words in host
// (little-endian) order, and a port.
func parseProcAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, errors.New("no port")
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, errors.New("bad address")
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}
