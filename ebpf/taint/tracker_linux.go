//go:build linux && amd64

package taint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Values of struct taint.kind, struct taint.channel and struct event.type
// in bpf/taint.bpf.c.
var kindNames = map[uint8]string{
	1: KindConnect, 2: KindAccept, 3: KindUDP, 4: KindTCP, 5: KindInherit, 6: KindIPC, 7: KindExisting,
}

const kindExisting = 7

var channelNames = map[uint8]string{1: ChannelUnix, 2: ChannelPipe, 3: ChannelLoopback}

const (
	evTaint = 1
	evExit  = 2

	statLost = 0
)

// housekeeping is how often the reader checks for lost events and gone
// processes.
const housekeeping = time.Second

// attachOrder lists the programs with the raw tracepoints they attach to.
// Exit and fork come first so that no taint outlives its process.
func attachOrder(p *taintPrograms) []struct {
	prog       *ebpf.Program
	name, hook string
} {
	return []struct {
		prog       *ebpf.Program
		name, hook string
	}{
		{p.SchedProcessExit, "sched_process_exit", "sched_process_exit"},
		{p.SchedProcessFork, "sched_process_fork", "sched_process_fork"},
		{p.InetSockSetState, "inet_sock_set_state", "inet_sock_set_state"},
		{p.SysExit, "sys_exit", "sys_exit"},
		{p.SysEnter, "sys_enter", "sys_enter"},
		{p.SkbCopy, "skb_copy", "skb_copy_datagram_iovec"},
	}
}

// Tracker is the loaded and attached taint tracker. Its methods are safe
// for concurrent use.
type Tracker struct {
	log   *slog.Logger
	objs  taintObjects
	links []link.Link
	rd    *ringbuf.Reader
	done  chan struct{}

	events atomic.Uint64

	mu        sync.Mutex
	taints    map[int]Taint
	resetAt   map[int]uint64 // pid -> CLOCK_BOOTTIME ns of its Reset
	resetAll  uint64         // CLOCK_BOOTTIME ns of the last Reset(0)
	lostSeen  uint64
	closeOnce sync.Once
	closeErr  error
}

// Open loads the BPF programs, attaches them and starts reading taint
// events. It needs root (CAP_BPF and CAP_PERFMON or CAP_SYS_ADMIN) and a
// kernel with BTF.
func Open(opts Options) (*Tracker, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("taint: kernel BTF is missing (CONFIG_DEBUG_INFO_BTF): %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		log.Debug("taint: raising RLIMIT_MEMLOCK failed", "err", err)
	}
	spec, err := loadTaint()
	if err != nil {
		return nil, fmt.Errorf("taint: parse BPF object: %w", err)
	}
	if err := spec.Variables["self_tgid"].Set(uint32(os.Getpid())); err != nil {
		return nil, fmt.Errorf("taint: set self_tgid: %w", err)
	}
	t := &Tracker{
		log:     log,
		done:    make(chan struct{}),
		taints:  make(map[int]Taint),
		resetAt: make(map[int]uint64),
	}
	if err := loadObjects(spec, &t.objs); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			t.closeAll()
		}
	}()
	for _, p := range opts.Ignore {
		if err := t.objs.Ignore.Put(lpmKey(p), uint8(1)); err != nil {
			return nil, fmt.Errorf("taint: ignore %s: %w", p, err)
		}
	}
	for _, name := range opts.IPCExempt {
		var k [16]byte
		copy(k[:15], name) // comm: at most 15 bytes and a NUL
		if err := t.objs.IpcExempt.Put(k, uint8(1)); err != nil {
			return nil, fmt.Errorf("taint: ipc exemption %q: %w", name, err)
		}
	}
	for _, a := range attachOrder(&t.objs.taintPrograms) {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: a.hook, Program: a.prog})
		if err != nil {
			return nil, fmt.Errorf("taint: attach program %s to raw tracepoint %s: %w", a.name, a.hook, err)
		}
		t.links = append(t.links, l)
	}
	t.rd, err = ringbuf.NewReader(t.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("taint: ring buffer reader: %w", err)
	}
	if !opts.NoScan {
		t.scanExisting(opts.Ignore)
	}
	ok = true
	go t.read()
	log.Info("taint tracker attached", "programs", len(t.links), "ignore", len(opts.Ignore))
	return t, nil
}

// loadObjects loads the maps and programs. cilium/ebpf names the program
// the kernel refused ("program sys_enter: load program: ...").
func loadObjects(spec *ebpf.CollectionSpec, objs *taintObjects) error {
	err := spec.LoadAndAssign(objs, nil)
	if err == nil {
		return nil
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("taint: load BPF programs: %w (verifier log tail: %s)", err, tail(ve.Log, 8))
	}
	return fmt.Errorf("taint: load BPF programs: %w", err)
}

func tail(lines []string, n int) string {
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func lpmKey(p netip.Prefix) taintLpmKey {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return taintLpmKey{Prefixlen: uint32(bits), Addr: p.Addr().As16()}
}

// Close detaches the programs and stops the reader. Taint state is lost.
func (t *Tracker) Close() error {
	t.closeOnce.Do(func() {
		// Closing the reader ends read(); wait for it before the maps go.
		if t.rd != nil {
			t.closeErr = t.rd.Close()
			<-t.done
		}
		t.closeAll()
	})
	return t.closeErr
}

func (t *Tracker) closeAll() {
	for _, l := range t.links {
		l.Close()
	}
	t.links = nil
	t.objs.Close()
}

// read applies ring buffer events to t.taints until Close.
func (t *Tracker) read() {
	defer close(t.done)
	var ev taintEvent
	next := time.Now().Add(housekeeping)
	for {
		t.rd.SetDeadline(next)
		rec, err := t.rd.Read()
		switch {
		case err == nil:
			if _, err := binary.Decode(rec.RawSample, binary.LittleEndian, &ev); err != nil {
				t.log.Warn("taint: short event", "len", len(rec.RawSample))
				continue
			}
			t.events.Add(1)
			t.apply(&ev)
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.housekeep()
			next = time.Now().Add(housekeeping)
		case errors.Is(err, ringbuf.ErrClosed):
			return
		default:
			t.log.Warn("taint: ring buffer read", "err", err)
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (t *Tracker) apply(ev *taintEvent) {
	pid := int(ev.Pid)
	t.mu.Lock()
	defer t.mu.Unlock()
	switch ev.Type {
	case evTaint:
		if ev.T.Since <= t.resetAll || ev.T.Since <= t.resetAt[pid] {
			return // recorded before an operator reset
		}
		tt := convert(pid, &ev.T)
		t.taints[pid] = tt
		t.log.Debug("process tainted", "pid", pid, "comm", tt.Comm, "kind", tt.Kind, "peer", tt.Peer, "via", tt.Via)
	case evExit:
		delete(t.taints, pid)
		delete(t.resetAt, pid)
	}
}

// housekeep re-reads the kernel's taints map when events were lost, and
// drops taints of processes that are gone (a safety net: the exit
// tracepoint removes them).
func (t *Tracker) housekeep() {
	lost := t.stat(statLost)
	t.mu.Lock()
	resync := lost != t.lostSeen
	t.lostSeen = lost
	t.mu.Unlock()
	if resync {
		t.log.Warn("taint: ring buffer overflowed, resyncing from the kernel map", "lost", lost)
		t.resync()
	}
	t.mu.Lock()
	now := bootNow()
	for pid, at := range t.resetAt { // events older than a minute are read
		if now-at > uint64(time.Minute) {
			delete(t.resetAt, pid)
		}
	}
	var gone []int
	for pid := range t.taints {
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			gone = append(gone, pid)
		}
	}
	for _, pid := range gone {
		delete(t.taints, pid)
	}
	t.mu.Unlock()
	for _, pid := range gone {
		k := uint32(pid)
		t.objs.Taints.Delete(&k)
	}
}

func (t *Tracker) resync() {
	fresh := make(map[int]Taint)
	var k uint32
	var v taintTaint
	it := t.objs.Taints.Iterate()
	for it.Next(&k, &v) {
		fresh[int(k)] = convert(int(k), &v)
	}
	if err := it.Err(); err != nil {
		t.log.Warn("taint: iterate taints map", "err", err)
		return
	}
	t.mu.Lock()
	t.taints = fresh
	t.mu.Unlock()
}

func (t *Tracker) stat(idx uint32) uint64 {
	var per []uint64
	if err := t.objs.Stats.Lookup(&idx, &per); err != nil {
		return 0
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum
}

// bootNow is CLOCK_BOOTTIME, the clock of bpf_ktime_get_boot_ns.
func bootNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

func convert(pid int, v *taintTaint) Taint {
	tt := Taint{
		PID:     pid,
		Comm:    cString(v.Comm[:]),
		Kind:    kindNames[v.Kind],
		Via:     int(v.Via),
		Channel: channelNames[v.Channel],
	}
	if tt.Kind == "" {
		tt.Kind = "kind-" + strconv.Itoa(int(v.Kind))
	}
	if v.Addr != [16]byte{} {
		tt.Peer = netip.AddrPortFrom(netip.AddrFrom16(v.Addr).Unmap(), v.Port)
	}
	if now := bootNow(); now >= v.Since {
		tt.Since = time.Now().Add(-time.Duration(now - v.Since)).Round(time.Microsecond)
	}
	return tt
}

func cString(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// withComm refreshes Comm from /proc: a tainted process may have exec'd.
func withComm(tt Taint) Taint {
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(tt.PID) + "/comm"); err == nil {
		tt.Comm = string(bytes.TrimSpace(b))
	}
	return tt
}

// Tainted lists the tainted processes, by PID.
func (t *Tracker) Tainted() []Taint {
	t.mu.Lock()
	out := make([]Taint, 0, len(t.taints))
	for _, tt := range t.taints {
		out = append(out, tt)
	}
	t.mu.Unlock()
	for i := range out {
		out[i] = withComm(out[i])
	}
	slices.SortFunc(out, func(a, b Taint) int { return a.PID - b.PID })
	return out
}

// IsTainted reports whether process pid (a thread group id) is tainted,
// and why.
func (t *Tracker) IsTainted(pid int) (Taint, bool) {
	t.mu.Lock()
	tt, ok := t.taints[pid]
	t.mu.Unlock()
	if !ok {
		return Taint{}, false
	}
	return withComm(tt), true
}

// Reset untaints process pid, or every process for pid 0, and forgets the
// marks it left on local channels. Resetting an untainted process is not an
// error.
func (t *Tracker) Reset(pid int) error {
	if pid < 0 {
		return fmt.Errorf("taint: reset: bad pid %d", pid)
	}
	now := bootNow()
	t.mu.Lock()
	if pid == 0 {
		t.resetAll = now
		clear(t.resetAt)
		clear(t.taints)
	} else {
		t.resetAt[pid] = now
		delete(t.taints, pid)
	}
	t.mu.Unlock()

	var errs []error
	if pid == 0 {
		errs = append(errs, deleteAll(t.objs.Taints, func(uint32, []byte) bool { return true }))
		errs = append(errs, deleteAll(t.objs.Marks, func([]byte, []byte) bool { return true }))
	} else {
		k := uint32(pid)
		if err := t.objs.Taints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
		errs = append(errs, deleteAll(t.objs.Marks, func(_ []byte, v []byte) bool {
			var m taintMark
			_, err := binary.Decode(v, binary.LittleEndian, &m)
			return err == nil && m.Src == uint32(pid)
		}))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("taint: reset %d: %w", pid, err)
	}
	return nil
}

// deleteAll deletes the entries of m for which match is true.
func deleteAll[K any](m *ebpf.Map, match func(K, []byte) bool) error {
	var (
		k    K
		v    []byte
		keys []K
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if match(k, v) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// Counts returns how many processes are tainted now, and how many events
// (taints and exits of tainted processes) the tracker has received.
func (t *Tracker) Counts() (tainted, events uint64) {
	t.mu.Lock()
	tainted = uint64(len(t.taints))
	t.mu.Unlock()
	return tainted, t.events.Load()
}

var _ io.Closer = (*Tracker)(nil)
