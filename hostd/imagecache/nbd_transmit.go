package imagecache

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

// transmit serves requests until the client disconnects: reads run
// nbdReadParallel at once, replies are written whole under one lock; any
// command that would change the export closes the connection.
func (c *nbdConn) transmit() error {
	ctx, cancel := context.WithCancel(context.Background())
	sem := make(chan struct{}, nbdReadParallel)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for {
		var req [28]byte
		if _, err := io.ReadFull(c.rw, req[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(req[0:]) != nbdReqMagic {
			return fmt.Errorf("request magic: %w", errNBD)
		}
		typ := binary.BigEndian.Uint16(req[6:])
		handle := binary.BigEndian.Uint64(req[8:])
		off, n := binary.BigEndian.Uint64(req[16:]), binary.BigEndian.Uint32(req[24:])
		switch typ {
		case cmdRead:
			if n > nbdReadMax || off+uint64(n) > uint64(c.r.Size()) || off+uint64(n) < off {
				c.send(handle, errInval, nil)
				continue
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				c.read(ctx, handle, int64(off), int(n))
			})
		case cmdFlush:
			c.send(handle, 0, nil)
		case cmdDisc:
			return nil
		default:
			// A write's payload would follow; a read-only export ends here.
			c.send(handle, errPerm, nil)
			return fmt.Errorf("command %d on a read-only export: %w", typ, errNBD)
		}
	}
}

func (c *nbdConn) read(ctx context.Context, handle uint64, off int64, n int) {
	buf := make([]byte, n)
	if err := c.r.ReadAt(ctx, buf, off); err != nil {
		c.send(handle, errIO, nil)
		return
	}
	c.send(handle, 0, buf)
}

func (c *nbdConn) send(handle uint64, errno uint32, data []byte) {
	var h [16]byte
	binary.BigEndian.PutUint32(h[0:], nbdSimpleMagic)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], handle)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.rw.Write(h[:])
	c.rw.Write(data)
	c.rw.Flush()
}
