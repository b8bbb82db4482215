package hostd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A VM paused for the last round of its live migration reads nothing from
// its tap: the frames the bridge sends it meanwhile queue on the tap and
// die with the source QEMU. A client whose request was among them waits
// for its TCP retransmission (200 ms and more, doubling while the VM is
// still paused). frameTap keeps a copy of what the host sends into a tap
// so the source can pass it on to the destination's copy (frames_forward.go).

// frameTapKeep bounds the frames a tap keeps before they are asked for.
const frameTapKeep = 4096

// frameTap captures, with a packet socket on a tap, the frames the host
// transmits into it (toward the VM), addressed to mac or to a group.
type frameTap struct {
	fd     int
	mac    net.HardwareAddr // nil: every frame
	mu     sync.Mutex
	frames []capturedFrame
	closed bool
	done   chan struct{}
}

type capturedFrame struct {
	at   time.Time
	data []byte
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openFrameTap starts capturing on the tap named ifname (in this host's
// network namespace).
func openFrameTap(ifname, mac string) (*frameTap, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("capture on tap %q: %w", ifname, err)
	}
	t := &frameTap{done: make(chan struct{})}
	if mac != "" {
		if t.mac, err = net.ParseMAC(mac); err != nil {
			return nil, fmt.Errorf("capture on tap %q: mac %q: %w", ifname, mac, err)
		}
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("capture on tap %q: packet socket: %w", ifname, err)
	}
	// The read loop wakes this often to see whether it was closed.
	tv := unix.NsecToTimeval((20 * time.Millisecond).Nanoseconds())
	err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capture on tap %q: %w", ifname, err)
	}
	t.fd = fd
	go t.loop()
	return t, nil
}

func (t *frameTap) loop() {
	defer close(t.done)
	defer unix.Close(t.fd)
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(t.fd, buf, 0)
		t.mu.Lock()
		closed := t.closed
		t.mu.Unlock()
		if closed {
			return
		}
		if err != nil {
			continue // the timeout, or a signal
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype != unix.PACKET_OUTGOING || n < 14 || !t.wants(buf[:6]) {
			continue
		}
		t.keep(capturedFrame{at: timeNow(), data: bytes.Clone(buf[:n])})
	}
}

func (t *frameTap) wants(dst []byte) bool {
	return t.mac == nil || dst[0]&1 == 1 || bytes.Equal(dst, t.mac)
}

func (t *frameTap) keep(f capturedFrame) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.frames) >= frameTapKeep {
		t.frames = t.frames[1:]
	}
	t.frames = append(t.frames, f)
}

// take returns the frames captured at or after since, and forgets every
// frame captured so far.
func (t *frameTap) take(since time.Time) [][]byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out [][]byte
	for _, f := range t.frames {
		if !f.at.Before(since) {
			out = append(out, f.data)
		}
	}
	t.frames = nil
	return out
}

// close stops the capture and waits for its loop to end.
func (t *frameTap) close() {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	<-t.done
}

// injectFrames transmits frames into the tap named ifname, as the bridge
// would: they reach the VM behind it (or queue until it reads). Checksums
// the sender's kernel left to offload are completed first.
func injectFrames(ifname string, frames [][]byte) (int, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return 0, fmt.Errorf("inject into tap %q: %w", ifname, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("inject into tap %q: packet socket: %w", ifname, err)
	}
	defer unix.Close(fd)
	sent := 0
	for _, f := range frames {
		if len(f) < 14 {
			continue
		}
		fixChecksums(f)
		to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: htons(binary.BigEndian.Uint16(f[12:14])), Halen: 6}
		copy(to.Addr[:], f[:6])
		if err := unix.Sendto(fd, f, 0, to); err != nil {
			return sent, fmt.Errorf("inject into tap %q: %w", ifname, err)
		}
		sent++
	}
	return sent, nil
}

// fixChecksums recomputes the TCP or UDP checksum of an Ethernet frame
// carrying IPv4 or IPv6 (no extension headers, not a fragment): a frame
// captured on its way out may hold only the pseudo-header's sum, the rest
// being the NIC's (here: virtio's) to fill in.
func fixChecksums(f []byte) {
	var pseudo uint32
	var l4 []byte
	var proto byte
	switch binary.BigEndian.Uint16(f[12:14]) {
	case 0x0800:
		ip := f[14:]
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return
		}
		ihl, total := int(ip[0]&0xf)*4, int(binary.BigEndian.Uint16(ip[2:4]))
		if ihl < 20 || total < ihl || total > len(ip) || binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 {
			return
		}
		proto, l4 = ip[9], ip[ihl:total]
		pseudo = sum16(ip[12:20], 0)
	case 0x86dd:
		ip := f[14:]
		if len(ip) < 40 {
			return
		}
		plen := int(binary.BigEndian.Uint16(ip[4:6]))
		if 40+plen > len(ip) {
			return
		}
		proto, l4 = ip[6], ip[40:40+plen]
		pseudo = sum16(ip[8:40], 0)
	default:
		return
	}
	off := map[byte]int{6: 16, 17: 6}[proto]
	if off == 0 || len(l4) < off+2 {
		return
	}
	pseudo += uint32(proto) + uint32(len(l4))
	l4[off], l4[off+1] = 0, 0
	c := ^fold(sum16(l4, pseudo))
	if c == 0 && proto == 17 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], c)
}

func sum16(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
