package guestd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/symvirt/symvirt/guestproto"
)

// The NIC hand-off works on sysfs only (/sys/class/net/*): the test guest is
// a busybox initramfs with sysfs mounted but without iproute2, every write is
// a plain file write that is easy to log, and everything lives under one root
// (Config.SysRoot), so that tests can point it at a fake tree or at a sysfs
// mounted from inside a network namespace.

// ErrHandoff: a bond could not be switched away from a device about to be
// detached.
var ErrHandoff = errors.New("guestd: NIC hand-off failed")

const (
	arphrdEther = 1   // /sys/class/net/*/type of an ethernet NIC
	iffUp       = 0x1 // IFF_UP in /sys/class/net/*/flags
)

// netSys reads and writes the network part of sysfs under root.
type netSys struct {
	root string
	log  *slog.Logger
	// write writes a sysfs attribute. Tests replace it with a small kernel
	// emulation for fake trees.
	write func(path string, data []byte) error
	// verify bounds the polling after a write until the kernel shows it.
	verify time.Duration
}

func newNetSys(root string, log *slog.Logger) *netSys {
	return &netSys{root: root, log: log.With("component", "nic"), write: writeAttr, verify: 2 * time.Second}
}

// writeAttr writes a sysfs attribute in one write(2), without O_CREATE or
// O_TRUNC, as sysfs expects; the kernel's error (EINVAL, EPERM) comes back.
func writeAttr(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (n *netSys) path(iface string, attr ...string) string {
	return filepath.Join(append([]string{n.root, "sys/class/net", iface}, attr...)...)
}

func (n *netSys) attr(iface string, attr ...string) (string, error) {
	b, err := os.ReadFile(n.path(iface, attr...))
	return string(bytes.TrimSpace(b)), err
}

func (n *netSys) set(iface, attr, value string) error {
	p := n.path(iface, attr)
	err := n.write(p, []byte(value+"\n"))
	n.log.Debug("sysfs write", "path", p, "value", value, "err", err)
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, p, err)
	}
	return nil
}

// nic is what the hand-off needs to know of one network interface.
type nic struct {
	name     string
	index    int
	typ      int
	mac      net.HardwareAddr // current address (a bond slave may carry the bond's)
	permMAC  net.HardwareAddr // bonding_slave/perm_hwaddr, for bond slaves
	master   string           // the bond (or bridge) it is enslaved to, "" if none
	isBond   bool
	isBridge bool
}

func (n *netSys) nic(name string) (nic, error) {
	c := nic{name: name}
	idx, err := n.attr(name, "ifindex")
	if err != nil {
		return c, err
	}
	if c.index, err = strconv.Atoi(idx); err != nil {
		return c, fmt.Errorf("%s: ifindex %q", name, idx)
	}
	if t, err := n.attr(name, "type"); err == nil {
		c.typ, _ = strconv.Atoi(t)
	}
	if a, err := n.attr(name, "address"); err == nil {
		c.mac, _ = net.ParseMAC(a)
	}
	if a, err := n.attr(name, "bonding_slave", "perm_hwaddr"); err == nil {
		c.permMAC, _ = net.ParseMAC(a)
	}
	if l, err := os.Readlink(n.path(name, "master")); err == nil {
		c.master = filepath.Base(l)
	}
	_, err = os.Stat(n.path(name, "bonding"))
	c.isBond = err == nil
	_, err = os.Stat(n.path(name, "bridge"))
	c.isBridge = err == nil
	return c, nil
}

// nics lists the interfaces, sorted by ifindex. Entries that vanish while we
// look (hot-unplug) are skipped.
func (n *netSys) nics() ([]nic, error) {
	ents, err := os.ReadDir(filepath.Join(n.root, "sys/class/net"))
	if err != nil {
		return nil, fmt.Errorf("guestd: list NICs: %w", err)
	}
	var out []nic
	for _, e := range ents {
		if fi, err := os.Stat(n.path(e.Name())); err != nil || !fi.IsDir() {
			continue // bonding_masters is a file
		}
		c, err := n.nic(e.Name())
		if err != nil {
			continue
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].index < out[j].index })
	return out, nil
}

// byMAC finds the NIC a device is: by permanent address first (a bond may
// have overwritten the current one), else by current address, ignoring
// bonds and bridges, which borrow their slaves' addresses.
func byMAC(nics []nic, mac net.HardwareAddr) (nic, bool, error) {
	var found []nic
	for _, c := range nics {
		if bytes.Equal(c.permMAC, mac) {
			found = append(found, c)
		}
	}
	if len(found) == 0 {
		for _, c := range nics {
			if !c.isBond && !c.isBridge && bytes.Equal(c.mac, mac) {
				found = append(found, c)
			}
		}
	}
	switch len(found) {
	case 0:
		return nic{}, false, nil
	case 1:
		return found[0], true, nil
	}
	names := make([]string, len(found))
	for i, c := range found {
		names[i] = c.name
	}
	return nic{}, false, fmt.Errorf("%w: MAC %s is on %s", ErrHandoff, mac, strings.Join(names, ", "))
}

func (n *netSys) bondMode(bond string) string {
	m, _ := n.attr(bond, "bonding", "mode") // "active-backup 1"
	f := strings.Fields(m)
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func (n *netSys) slaves(bond string) []string {
	s, _ := n.attr(bond, "bonding", "slaves")
	return strings.Fields(s)
}

func (n *netSys) carrier(iface string) bool {
	c, err := n.attr(iface, "carrier") // EINVAL while the interface is down
	return err == nil && c == "1"
}

// until polls cond every 20ms until it holds or d passes.
func until(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// setActive makes slave the bond's active slave and checks that it is. The
// kernel only switches to a slave whose link it considers up, which for a
// NIC just enslaved takes a miimon period or two: write again until then.
func (n *netSys) setActive(bond, slave string, d time.Duration) error {
	var lastErr error
	ok := until(d, func() bool {
		lastErr = n.set(bond, "bonding/active_slave", slave)
		cur, _ := n.attr(bond, "bonding", "active_slave")
		return cur == slave
	})
	if !ok {
		cur, _ := n.attr(bond, "bonding", "active_slave")
		return fmt.Errorf("%w: %s: active slave is %q, not %q (last write: %v)", ErrHandoff, bond, cur, slave, lastErr)
	}
	return nil
}

// setPrimary sets (or with "" clears) the bond's primary slave.
func (n *netSys) setPrimary(bond, slave string) error {
	if err := n.set(bond, "bonding/primary", slave); err != nil {
		return err
	}
	if cur, _ := n.attr(bond, "bonding", "primary"); cur != slave {
		return fmt.Errorf("%w: %s: primary is %q, not %q", ErrHandoff, bond, cur, slave)
	}
	return nil
}

// enslave adds iface to bond: down first (the bonding driver takes only
// interfaces that are down, and brings them up itself), then "+iface".
func (n *netSys) enslave(bond, iface string) error {
	if err := n.setDown(iface); err != nil {
		return err
	}
	if err := n.set(bond, "bonding/slaves", "+"+iface); err != nil {
		return err
	}
	if !until(n.verify, func() bool { c, err := n.nic(iface); return err == nil && c.master == bond }) {
		return fmt.Errorf("%w: %s not enslaved to %s", ErrHandoff, iface, bond)
	}
	return nil
}

// setDown clears IFF_UP through the writable flags attribute (what
// "ip link set down" does, without needing ip).
func (n *netSys) setDown(iface string) error {
	f, err := n.attr(iface, "flags")
	if err != nil {
		return fmt.Errorf("%s flags: %w", iface, err)
	}
	v, err := strconv.ParseUint(f, 0, 32)
	if err != nil {
		return fmt.Errorf("%s flags %q: %w", iface, f, err)
	}
	if v&iffUp == 0 {
		return nil
	}
	return n.set(iface, "flags", fmt.Sprintf("%#x", v&^iffUp))
}

// handoff is what PREPARE changed, kept (in guest memory, so across a
// checkpoint/restore) until RESUME/ABORT undoes it.
type handoff struct {
	known map[int]bool // ifindex of every NIC at PREPARE: later ones are new
	bonds []*bondChange
}

// bondChange is one bond that had a slave about to be detached.
type bondChange struct {
	bond        string
	activeBkp   bool     // mode active-backup: we steer the active slave
	detached    []nic    // its slaves the host will detach
	devices     []string // their device ids, for logs
	prevActive  string
	prevPrimary string
	switchedTo  string // the slave we made active, "" if none
}

// detach moves traffic off the NICs of devs: for each device with a MAC that
// is a slave of an active-backup bond, another slave becomes active (and
// primary is cleared if it was the leaving NIC, so that the bond does not
// switch back). NICs not in a bond, and devices without a NIC, are only
// logged: there is nothing to switch to. On error the changes made so far
// are undone.
func (n *netSys) detach(devs []guestproto.Device) (*handoff, error) {
	h := &handoff{known: map[int]bool{}}
	if !slices.ContainsFunc(devs, func(d guestproto.Device) bool { return d.MAC != "" }) {
		return h, nil
	}
	nics, err := n.nics()
	if err != nil {
		return h, err
	}
	byName := map[string]nic{}
	for _, c := range nics {
		h.known[c.index] = true
		byName[c.name] = c
	}
	changes := map[string]*bondChange{}
	for _, d := range devs {
		if d.MAC == "" {
			continue
		}
		mac, _ := net.ParseMAC(d.MAC) // validated by guestproto
		c, ok, err := byMAC(nics, mac)
		if err != nil {
			return h, err
		}
		log := n.log.With("device", d.ID, "mac", d.MAC)
		switch {
		case !ok:
			log.Info("no NIC has the device's MAC: nothing to hand off")
			continue
		case c.master == "":
			log.Warn("NIC is in no bond: its traffic stops while the device is away", "nic", c.name)
			continue
		case !byName[c.master].isBond:
			log.Warn("NIC's master is not a bond: nothing to hand off", "nic", c.name, "master", c.master)
			continue
		}
		bc := changes[c.master]
		if bc == nil {
			bc = &bondChange{bond: c.master, activeBkp: n.bondMode(c.master) == "active-backup"}
			bc.prevActive, _ = n.attr(c.master, "bonding", "active_slave")
			bc.prevPrimary, _ = n.attr(c.master, "bonding", "primary")
			changes[c.master] = bc
		}
		bc.detached = append(bc.detached, c)
		bc.devices = append(bc.devices, d.ID)
	}
	for _, name := range sortedKeys(changes) {
		bc := changes[name]
		h.bonds = append(h.bonds, bc)
		if err := n.switchAway(bc); err != nil {
			n.restore(h)
			return &handoff{known: h.known}, err
		}
	}
	return h, nil
}

func (bc *bondChange) leaving(name string) bool {
	return slices.ContainsFunc(bc.detached, func(c nic) bool { return c.name == name })
}

func (n *netSys) switchAway(bc *bondChange) error {
	log := n.log.With("bond", bc.bond, "devices", bc.devices)
	if !bc.activeBkp {
		// Other modes spread traffic over the slaves and drop a leaving one
		// by themselves; only the re-enslaving at RESUME matters.
		log.Info("bond is not active-backup: it moves traffic by itself", "mode", n.bondMode(bc.bond))
		return nil
	}
	if bc.leaving(bc.prevPrimary) {
		if err := n.setPrimary(bc.bond, ""); err != nil {
			return err
		}
	}
	if bc.prevActive != "" && !bc.leaving(bc.prevActive) {
		log.Info("active slave stays", "active", bc.prevActive)
		return nil
	}
	var alt, altDown string
	for _, s := range n.slaves(bc.bond) {
		if bc.leaving(s) {
			continue
		}
		if n.carrier(s) {
			alt = s
			break
		}
		if altDown == "" {
			altDown = s
		}
	}
	if alt == "" {
		alt = altDown
	}
	if alt == "" {
		log.Warn("bond has no other slave: its traffic stops while the device is away")
		return nil
	}
	if err := n.setActive(bc.bond, alt, n.verify); err != nil {
		return err
	}
	bc.switchedTo = alt
	log.Info("bond switched away from the leaving NIC", "from", bc.prevActive, "to", alt)
	return nil
}

// restore undoes detach when the NICs never left (a refused or aborted
// round): previous primary and active slave back. Best effort: each failure
// is logged, and the rest still done.
func (n *netSys) restore(h *handoff) {
	if h == nil {
		return
	}
	for _, bc := range h.bonds {
		n.restoreBond(bc)
	}
}

func (n *netSys) restoreBond(bc *bondChange) {
	if !bc.activeBkp {
		return
	}
	log := n.log.With("bond", bc.bond)
	if cur, _ := n.attr(bc.bond, "bonding", "primary"); cur != bc.prevPrimary {
		if err := n.setPrimary(bc.bond, bc.prevPrimary); err != nil {
			log.Warn("cannot restore primary", "err", err)
		}
	}
	if bc.switchedTo != "" && bc.prevActive != "" {
		if err := n.setActive(bc.bond, bc.prevActive, n.verify); err != nil {
			log.Warn("cannot restore active slave", "err", err)
			return
		}
		log.Info("bond back on its previous active slave", "active", bc.prevActive)
	}
}

// reattach brings the bonds back after the operation. A bond whose leaving
// NICs are all still there (same name and ifindex, still its slaves) gets its
// previous state back. Otherwise the NICs went and replacements are
// expected: until ctx ends, wait for ethernet NICs that did not exist at
// PREPARE and are in no bond (or in this one already: a hotplug script may
// have been quicker), enslave them, and make the first (one with a leaving
// NIC's MAC, else the lowest ifindex) primary and active.
func (n *netSys) reattach(ctx context.Context, h *handoff) {
	if h == nil {
		return
	}
	for _, bc := range h.bonds {
		log := n.log.With("bond", bc.bond, "devices", bc.devices)
		stayed := 0
		for _, d := range bc.detached {
			if c, err := n.nic(d.name); err == nil && c.index == d.index && c.master == bc.bond {
				stayed++
			}
		}
		if stayed == len(bc.detached) {
			n.restoreBond(bc)
			continue
		}
		want := len(bc.detached) - stayed
		var cands []nic
		for {
			cands = cands[:0]
			nics, err := n.nics()
			if err == nil {
				for _, c := range nics {
					if !h.known[c.index] && c.typ == arphrdEther && !c.isBond && !c.isBridge &&
						(c.master == "" || c.master == bc.bond) {
						cands = append(cands, c)
					}
				}
			}
			if len(cands) >= want || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
		if len(cands) == 0 {
			log.Warn("no replacement NIC appeared; the bond goes on without it")
			n.restoreBond(bc)
			continue
		}
		sort.SliceStable(cands, func(i, j int) bool { return bc.macOfLeaving(cands[i]) && !bc.macOfLeaving(cands[j]) })
		var in []string
		for _, c := range cands {
			if c.master == "" {
				if err := n.enslave(bc.bond, c.name); err != nil {
					log.Warn("cannot enslave new NIC", "nic", c.name, "err", err)
					continue
				}
				log.Info("new NIC enslaved", "nic", c.name, "mac", c.mac.String())
			}
			in = append(in, c.name)
		}
		if len(in) == 0 || !bc.activeBkp {
			continue
		}
		first := in[0]
		if err := n.setPrimary(bc.bond, first); err != nil {
			log.Warn("cannot make new NIC primary", "nic", first, "err", err)
		}
		// A fresh NIC needs its link up before the bond takes it: allow a
		// few miimon periods, within ctx.
		d := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) > d {
			d = time.Until(dl)
		}
		if err := n.setActive(bc.bond, first, d); err != nil {
			log.Warn("cannot make new NIC active", "nic", first, "err", err)
			continue
		}
		log.Info("bond back on a passthrough NIC", "nic", first)
	}
}

func (bc *bondChange) macOfLeaving(c nic) bool {
	for _, d := range bc.detached {
		for _, m := range []net.HardwareAddr{d.permMAC, d.mac} {
			if len(m) > 0 && (bytes.Equal(m, c.mac) || bytes.Equal(m, c.permMAC)) {
				return true
			}
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
