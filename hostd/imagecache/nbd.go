package imagecache

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
)

// NBD protocol numbers (doc/proto.md of the NBD project).
const (
	nbdMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic     = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic     = 0x0003e889045565a9
	nbdReqMagic     = 0x25609513
	nbdSimpleMagic  = 0x67446698
	flagFixed       = 1
	flagNoZeroes    = 2
	optExportName   = 1
	optAbort        = 2
	optInfo         = 6
	optGo           = 7
	repAck          = 1
	repInfo         = 3
	repErrUnsup     = 1<<31 | 1
	repErrInvalid   = 1<<31 | 3
	repErrUnknown   = 1<<31 | 6
	infoExport      = 0
	txHasFlags      = 1
	txReadOnly      = 2
	txSendFlush     = 4
	txCanMultiConn  = 1 << 8
	cmdRead         = 0
	cmdDisc         = 2
	cmdFlush        = 3
	errPerm         = 1
	errIO           = 5
	errInval        = 22
	nbdOptMax       = 64 << 10
	nbdReadMax      = 32 << 20
	nbdReadParallel = 8
)

var errNBD = errors.New("nbd protocol error")

// Reader is what an NBD export reads.
type Reader interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	Size() int64
}

// ServeNBD serves r read-only as export name to every connection l
// accepts (a unix socket only local root reaches) until l is closed.
func ServeNBD(l net.Listener, name string, r Reader, log *slog.Logger) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			if err := serveConn(conn, name, r); err != nil && !errors.Is(err, io.EOF) {
				log.Debug("nbd connection ended", "export", name, "err", err)
			}
		}()
	}
}

type nbdConn struct {
	rw   *bufio.ReadWriter
	wmu  sync.Mutex
	name string
	r    Reader
}

func serveConn(conn net.Conn, name string, r Reader) error {
	c := &nbdConn{rw: bufio.NewReadWriter(bufio.NewReader(conn), bufio.NewWriter(conn)), name: name, r: r}
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], nbdMagic)
	binary.BigEndian.PutUint64(hello[8:], nbdOptMagic)
	binary.BigEndian.PutUint16(hello[16:], flagFixed|flagNoZeroes)
	c.rw.Write(hello[:])
	if err := c.rw.Flush(); err != nil {
		return err
	}
	var cflags uint32
	if err := binary.Read(c.rw, binary.BigEndian, &cflags); err != nil {
		return err
	}
	ok, err := c.negotiate(cflags&flagNoZeroes != 0)
	if err != nil || !ok {
		return err
	}
	return c.transmit()
}

// negotiate answers options until the client picks the export (true) or
// leaves.
func (c *nbdConn) negotiate(noZeroes bool) (bool, error) {
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(c.rw, hdr[:]); err != nil {
			return false, err
		}
		opt, n := binary.BigEndian.Uint32(hdr[8:]), binary.BigEndian.Uint32(hdr[12:])
		if binary.BigEndian.Uint64(hdr[:]) != nbdOptMagic || n > nbdOptMax {
			return false, fmt.Errorf("option header: %w", errNBD)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.rw, data); err != nil {
			return false, err
		}
		switch opt {
		case optExportName:
			if string(data) != c.name {
				return false, fmt.Errorf("unknown export %q: %w", data, errNBD)
			}
			return true, c.exportName(noZeroes)
		case optAbort:
			c.reply(opt, repAck, nil)
			return false, c.rw.Flush()
		case optInfo, optGo:
			known := goName(data) == c.name
			if err := c.info(opt, known); err != nil || (known && opt == optGo) {
				return known, err
			}
		default:
			c.reply(opt, repErrUnsup, nil)
		}
		if err := c.rw.Flush(); err != nil {
			return false, err
		}
	}
}

// goName is the export name in NBD_OPT_INFO/GO data ("" if malformed).
func goName(data []byte) string {
	if len(data) < 4 {
		return "\x00"
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n)+6 > uint64(len(data)) {
		return "\x00"
	}
	return string(data[4 : 4+n])
}

func (c *nbdConn) txFlags() uint16 { return txHasFlags | txReadOnly | txSendFlush | txCanMultiConn }

func (c *nbdConn) info(opt uint32, known bool) error {
	if !known {
		c.reply(opt, repErrUnknown, nil)
		return c.rw.Flush()
	}
	var b [12]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(c.r.Size()))
	binary.BigEndian.PutUint16(b[10:], c.txFlags())
	c.reply(opt, repInfo, b[:])
	c.reply(opt, repAck, nil)
	return c.rw.Flush()
}

func (c *nbdConn) exportName(noZeroes bool) error {
	var b [10]byte
	binary.BigEndian.PutUint64(b[0:], uint64(c.r.Size()))
	binary.BigEndian.PutUint16(b[8:], c.txFlags())
	c.rw.Write(b[:])
	if !noZeroes {
		c.rw.Write(make([]byte, 124))
	}
	return c.rw.Flush()
}

func (c *nbdConn) reply(opt, typ uint32, data []byte) {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], nbdRepMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.rw.Write(h[:])
	c.rw.Write(data)
}
