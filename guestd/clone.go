package guestd

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/symvirt/symvirt/guestproto"
	"golang.org/x/sys/unix"
)

// The random(4) ioctls (linux/random.h); x/sys/unix does not name them.
const (
	rndAddEntropy  = 0x40085203 // _IOW('R', 0x03, int[2])
	rndReseedCRNG  = 0x5207     // _IO('R', 0x07), Linux 4.17 and later
	cloneHookPhase = "clone"
)

// cloneEtc is where the machine-id and hostname files are (tests change
// it).
var cloneEtc = "/etc"

// onClone handles CLONE: this guest was started from a template's memory,
// so it holds the template's entropy pool, machine-id, hostname and MACs,
// as every other clone does. It takes its own before it answers DONE: the
// host reports a clone ready only after that, and the clone hooks, the
// first thing of the guest's own to run, see the new identity.
func (a *agent) onClone(sess *session, m guestproto.Message) {
	a.mu.Lock()
	busy := a.round.phase != phaseIdle
	a.mu.Unlock()
	log := sess.log.With("id", m.ID, "hostname", m.Clone.Hostname)
	if busy {
		sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeRefused, ID: m.ID,
			Reason: "a cooperation round is under way: not a fresh clone"})
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		start := time.Now()
		phases, err := a.becomeClone(sess.ctx, log, m)
		if err != nil {
			log.Error("CLONE refused", "err", err)
			sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeRefused, ID: m.ID,
				Reason: guestproto.TruncateReason(err.Error())})
			return
		}
		sess.send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeDone, ID: m.ID})
		// Logged after DONE: on a one-vCPU guest, whatever carries the log
		// out (a console) competes with the CLONE for the CPU.
		log.Info("CLONE done", append(phases, "took", time.Since(start), "standby", m.Clone.Standby)...)
		if m.Clone.Standby {
			return // a placeholder identity: the hooks wait for the real one
		}
		// The clone's own first work, on its new identity; the host need
		// not wait for it, nor stay connected: the hooks outlive the
		// session (hostd ends it once the clone is ready), bounded by
		// CloneTimeout.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(sess.ctx), guestproto.CloneTimeout)
		defer cancel()
		a.scripts(cloneHookPhase, cloneHookPhase, m.ID, "").resume(hctx, nil)
	}()
}

// becomeClone: entropy first (everything after it draws random numbers),
// then the clock, the identity and the NICs.
// It returns how long each took, as log attributes.
func (a *agent) becomeClone(ctx context.Context, log *slog.Logger, m guestproto.Message) ([]any, error) {
	c := m.Clone
	seed, _ := hex.DecodeString(c.Seed) // validated
	t0 := time.Now()
	if err := reseed(seed); err != nil {
		return nil, fmt.Errorf("reseed the entropy pool: %w", err)
	}
	t1 := time.Now()
	a.stepClock(log, m.HostTime())
	t2 := time.Now()
	if err := writeEtc("machine-id", c.MachineID+"\n", 0o444); err != nil {
		return nil, err
	}
	if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
		return nil, fmt.Errorf("sethostname: %w", err)
	}
	if err := writeEtc("hostname", c.Hostname+"\n", 0o644); err != nil {
		return nil, err
	}
	t3 := time.Now()
	for _, n := range c.NICs {
		if err := a.renameNIC(ctx, n); err != nil {
			return nil, err
		}
	}
	return []any{"reseed", t1.Sub(t0), "clock", t2.Sub(t1), "identity", t3.Sub(t2), "nics", time.Since(t3)}, nil
}

// reseed mixes the host's random bytes into the kernel's input pool,
// credited (RNDADDENTROPY), and makes the CRNG rekey from it now
// (RNDRESEEDCRNG): otherwise every clone draws the template's next
// numbers until the kernel reseeds by itself. A kernel without the
// ioctls still gets the bytes mixed in, uncredited, through a write.
func reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 8+len(seed))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(seed) * 8) // entropy_count, bits
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(seed))     // buf_size, bytes
	copy(buf[8:], seed)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		if _, err := f.Write(seed); err != nil {
			return fmt.Errorf("RNDADDENTROPY: %v; write: %w", errno, err)
		}
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); errno != 0 && errno != unix.ENOTTY && errno != unix.EINVAL {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

// writeEtc replaces a file of cloneEtc atomically.
func writeEtc(name, data string, mode os.FileMode) error {
	path := filepath.Join(cloneEtc, name)
	tmp := path + ".symvirt-clone"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, []byte(data), mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// renameNIC gives the NIC with the template's MAC the clone's, and its
// address if the host gave one.
func (a *agent) renameNIC(ctx context.Context, n guestproto.CloneNIC) error {
	old, _ := net.ParseMAC(n.OldMAC)
	mac, _ := net.ParseMAC(n.MAC)
	nics, err := a.net.nics()
	if err != nil {
		return err
	}
	c, ok, err := byMAC(nics, old)
	if err != nil {
		return err
	}
	if !ok {
		if _, ok, _ := byMAC(nics, mac); ok {
			return nil // done already (a CLONE repeated)
		}
		return fmt.Errorf("no NIC has the template's MAC %s", old)
	}
	if err := setMAC(c.name, mac); err != nil {
		return fmt.Errorf("%s: set MAC %s: %w", c.name, mac, err)
	}
	if n.IP == "" {
		return nil
	}
	for _, args := range [][]string{{"addr", "flush", "dev", c.name}, {"addr", "add", n.IP, "dev", c.name}} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	return nil
}

// setMAC sets an interface's address (SIOCSIFHWADDR); virtio-net takes it
// while up and passes it to the device.
func setMAC(iface string, mac net.HardwareAddr) error {
	if len(iface) >= unix.IFNAMSIZ {
		return errors.New("interface name too long")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var req struct {
		name   [unix.IFNAMSIZ]byte
		family uint16
		data   [14]byte
		_      [8]byte
	}
	copy(req.name[:], iface)
	req.family = unix.ARPHRD_ETHER
	copy(req.data[:], mac)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCSIFHWADDR, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return errno
	}
	return nil
}
