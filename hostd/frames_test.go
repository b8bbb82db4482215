package hostd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/vishvananda/netns"
)

var (
	frameVMMAC     = []byte{0x52, 0x54, 0x00, 0x79, 0x00, 0x01}
	frameClientMAC = []byte{0x52, 0x54, 0x00, 0x79, 0x00, 0xfa}
	frameOtherMAC  = []byte{0x52, 0x54, 0x00, 0x79, 0x00, 0x02}
)

// tcpFrame is an Ethernet frame to dst carrying one IPv4 TCP segment with
// payload, its checksum holding only the pseudo-header's sum (as a sender
// that leaves it to offload hands it on).
func tcpFrame(dst []byte, payload string) []byte {
	ip := make([]byte, 20+20+len(payload))
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	copy(ip[12:], []byte{10, 79, 0, 250, 10, 79, 0, 1})
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum16(ip[:20], 0)))
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 7000)
	tcp[12], tcp[13] = 5<<4, 0x18
	binary.BigEndian.PutUint16(tcp[14:], 512)
	copy(tcp[20:], payload)
	binary.BigEndian.PutUint16(tcp[16:], fold(sum16(ip[12:20], 6+uint32(len(tcp)))))
	return append(append(append(bytes.Clone(dst), frameClientMAC...), 0x08, 0x00), ip...)
}

// tcpChecksumOK verifies a frame's TCP checksum as a receiver does.
func tcpChecksumOK(f []byte) bool {
	ip := f[14:]
	tcp := ip[20:binary.BigEndian.Uint16(ip[2:])]
	return fold(sum16(tcp, sum16(ip[12:20], 6+uint32(len(tcp))))) == 0xffff
}

func TestFixChecksumsCompletesAPartialTCPChecksum(t *testing.T) {
	f := tcpFrame(frameVMMAC, "17\n")
	if tcpChecksumOK(f) {
		t.Fatal("the test frame's checksum is already complete")
	}
	fixChecksums(f)
	if !tcpChecksumOK(f) {
		t.Fatalf("checksum not completed: % x", f)
	}
	before := bytes.Clone(f)
	fixChecksums(f)
	if !bytes.Equal(before, f) {
		t.Fatal("a complete checksum changed")
	}
}

// frameNS is a network namespace of its own for a test's taps.
func frameNS(t *testing.T) string {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	name := fmt.Sprintf("symvirt-fr-%d", os.Getpid())
	// No IPv6 there: the kernel's own router and listener messages would
	// be frames for every tap too.
	for _, args := range [][]string{{"netns", "add", name},
		{"netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"},
		{"-n", name, "tuntap", "add", "dev", "src", "mode", "tap"},
		{"-n", name, "tuntap", "add", "dev", "dst", "mode", "tap"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
		if args[1] == "add" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
		}
	}
	return name
}

// inNS runs f on a thread inside namespace name (what f opens stays there).
func inNS(name string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer netns.Set(orig)
	return f()
}

// openTapQueue attaches a reader to tap name (what QEMU does), non-blocking.
func openTapQueue(t *testing.T, name string) *os.File {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:], name)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
		t.Fatalf("TUNSETIFF %s: %v", name, errno)
	}
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

// sendRaw transmits frames into tap ifname as they are.
func sendRaw(ifname string, frames ...[]byte) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for _, f := range frames {
		if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}); err != nil {
			return err
		}
	}
	return nil
}

// readFrames reads what a tap queued for its reader, from the client.
func readFrames(q *os.File) [][]byte {
	var out [][]byte
	buf := make([]byte, 65536)
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		n, err := unix.Read(int(q.Fd()), buf)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if n >= 14 && bytes.Equal(buf[6:12], frameClientMAC) { // not the kernel's own IPv6 chatter
			out = append(out, bytes.Clone(buf[:n]))
		}
	}
	return out
}

// The frames a host sends into a paused source's tap are caught (only
// those for the VM's MAC or a group), completed (checksums), and queued
// on the destination's tap, which its VM reads once it runs.
func TestFramesOfAPausedTapReachTheDestinationTap(t *testing.T) {
	ns := frameNS(t)
	var src, dst *os.File
	var capture *frameTap
	err := inNS(ns, func() error {
		src, dst = openTapQueue(t, "src"), openTapQueue(t, "dst")
		for _, tap := range []string{"src", "dst"} {
			if out, err := exec.Command("ip", "-n", ns, "link", "set", tap, "up").CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
		}
		var err error
		capture, err = openFrameTap("src", "52:54:00:79:00:01")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer capture.close()
	since := time.Now()
	bcast := append(bytes.Repeat([]byte{0xff}, 6), append(bytes.Clone(frameClientMAC), 0x08, 0x06, 0, 1)...)
	err = inNS(ns, func() error {
		// As the bridge would, while the VM behind src reads nothing.
		return sendRaw("src", tcpFrame(frameVMMAC, "1\n"), tcpFrame(frameOtherMAC, "x\n"), bcast)
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	frames := capture.take(since)
	if len(frames) != 2 || !bytes.Equal(frames[0][:6], frameVMMAC) || tcpChecksumOK(frames[0]) || !bytes.Equal(frames[1], bcast) {
		t.Fatalf("captured %d frames, want the VM's and the broadcast: % x", len(frames), frames)
	}
	if got := capture.take(since); len(got) != 0 {
		t.Fatalf("taken twice: %d", len(got))
	}
	err = inNS(ns, func() error {
		_, err := injectFrames("dst", frames)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	got := readFrames(dst)
	if len(got) != 2 || !bytes.Equal(got[0][:6], frameVMMAC) || !tcpChecksumOK(got[0]) || !bytes.Equal(got[1], bcast) {
		t.Fatalf("the destination's tap got %d frames (want the 2, checksum complete): % x", len(got), got)
	}
	// What the paused source never read dies with its QEMU: without the
	// copies passed on, the client's request would be lost.
	src.Close()
	err = inNS(ns, func() error { src = openTapQueue(t, "src"); return nil })
	if n := len(readFrames(src)); err != nil || n != 0 {
		t.Fatalf("the source's tap kept %d frames past its reader (%v): the test shows nothing", n, err)
	}
}

func TestPausedAtTakesQEMUsStopEvent(t *testing.T) {
	stops := make(chan goqmp.Event, 2)
	var ev goqmp.Event
	ev.Event, ev.Timestamp.Seconds, ev.Timestamp.Microseconds = "STOP", 1796442934, 575881
	stops <- ev
	if got := pausedAt(stops, time.Second); !got.Equal(time.Unix(1796442934, 575881000)) {
		t.Fatalf("paused at %v, want the STOP event's time", got)
	}
	close(stops) // the monitor went away: the completion less the downtime
	if got := pausedAt(stops, time.Second); time.Since(got) < time.Second || time.Since(got) > time.Minute {
		t.Fatalf("paused at %v without an event, want about a second ago", got)
	}
}
