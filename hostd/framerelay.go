package hostd

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// frameRelay is one NIC's path through hostd while a peer hold is up: QEMU's
// filter-redirector writes every frame the VM receives to out (a record:
// length, vnet header length, then the frame with its vnet header, all
// lengths big-endian 32-bit) and injects the records hostd writes to in.
// A reader takes each record off out at once; a writer injects the queued
// ones, so a QEMU slow to read in never stalls the reader (QEMU's main loop
// waits on out).
type frameRelay struct {
	nic     string
	out, in net.Conn
	queue   chan []byte
	done    chan struct{}  // closed with the relay
	pending sync.WaitGroup // records queued and not yet written
	queued  atomic.Int64   // their bytes
	// Guarded by the hold's mutex:
	held      [][]byte
	heldBytes int
	dropped   int
	closeOnce sync.Once
}

// startRelay sets up nic's relay in QEMU and starts its reader and writer.
func startRelay(ctx context.Context, mon *qmp.Client, nic string, h *peerHold) (*frameRelay, error) {
	r := &frameRelay{nic: nic, queue: make(chan []byte, relayQueue), done: make(chan struct{})}
	var err error
	var qOut, qIn *os.File
	if r.out, qOut, err = holdPair(); err != nil {
		return nil, err
	}
	if r.in, qIn, err = holdPair(); err != nil {
		qOut.Close()
		r.out.Close()
		return nil, err
	}
	go r.read(h)
	go r.write()
	if err := chardevOnFD(ctx, mon, holdOutID(nic), qOut); err != nil {
		qIn.Close()
		r.close()
		return nil, fmt.Errorf("chardev: %w", err)
	}
	if err := chardevOnFD(ctx, mon, holdInID(nic), qIn); err != nil {
		mon.Execute(context.WithoutCancel(ctx), "chardev-remove", map[string]any{"id": holdOutID(nic)}, nil)
		r.close()
		return nil, fmt.Errorf("chardev: %w", err)
	}
	err = mon.Execute(ctx, "object-add", map[string]any{"qom-type": "filter-redirector", "id": holdFilterID(nic),
		"netdev": "nd-" + nic, "queue": "tx", "outdev": holdOutID(nic), "indev": holdInID(nic),
		"vnet_hdr_support": true}, nil)
	if err != nil {
		for _, id := range []string{holdOutID(nic), holdInID(nic)} {
			mon.Execute(context.WithoutCancel(ctx), "chardev-remove", map[string]any{"id": id}, nil)
		}
		r.close()
		return nil, fmt.Errorf("filter: %w", err)
	}
	return r, nil
}

// read routes every record QEMU writes; a malformed one ends the relay
// (QEMU then drops what it cannot write, until the hold is taken down).
func (r *frameRelay) read(h *peerHold) {
	in := bufio.NewReaderSize(r.out, 256<<10) // many frames a read
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			return
		}
		n, vnet := binary.BigEndian.Uint32(hdr[0:4]), binary.BigEndian.Uint32(hdr[4:8])
		if n > holdMaxRecord || vnet > n {
			h.log.Warn("network hold: malformed record from QEMU", "nic", r.nic, "len", n, "vnet_hdr_len", vnet)
			r.close()
			return
		}
		rec := make([]byte, 8+n)
		copy(rec, hdr[:])
		if _, err := io.ReadFull(in, rec[8:]); err != nil {
			return
		}
		h.route(r, rec, frameSource(rec[8+vnet:]))
	}
}

// frameSource is an Ethernet frame's source MAC ("" if it has none).
func frameSource(f []byte) string {
	if len(f) < 12 {
		return ""
	}
	return net.HardwareAddr(f[6:12]).String()
}

// send queues a record for injection, or drops it when the queue is full.
// Callers hold the hold's mutex, which keeps the frames' order.
func (r *frameRelay) send(rec []byte) {
	if r.queued.Load()+int64(len(rec)) > relayQueueBytes {
		r.dropped++
		return
	}
	r.pending.Add(1)
	r.queued.Add(int64(len(rec)))
	select {
	case <-r.done:
		r.sent(rec)
	case r.queue <- rec:
	default:
		r.sent(rec)
		r.dropped++
	}
}

// sent accounts for a queued record written or dropped.
func (r *frameRelay) sent(rec []byte) {
	r.queued.Add(-int64(len(rec)))
	r.pending.Done()
}

// write injects the queued records until the relay closes.
func (r *frameRelay) write() {
	for {
		select {
		case <-r.done:
			return
		case rec := <-r.queue:
			r.in.SetWriteDeadline(time.Now().Add(relayWriteTimeout))
			r.in.Write(rec) // a frame QEMU does not take is lost, as on a wire
			r.sent(rec)
		}
	}
}

// drain waits until what is queued went in, or ctx ends.
func (r *frameRelay) drain(ctx context.Context) {
	if r.queue == nil {
		return
	}
	done := make(chan struct{})
	go func() { r.pending.Wait(); close(done) }()
	ctx, cancel := context.WithTimeout(ctx, 2*relayWriteTimeout)
	defer cancel()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// close closes hostd's ends; the writer ends with its queue.
func (r *frameRelay) close() {
	r.closeOnce.Do(func() {
		if r.done != nil {
			close(r.done)
		}
		for _, c := range []net.Conn{r.out, r.in} {
			if c != nil {
				c.Close()
			}
		}
	})
}
