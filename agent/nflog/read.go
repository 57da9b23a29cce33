package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// errConcurrentRead is returned by Read and ReadBatch when another
// goroutine is reading: sequence tracking needs a single reader.
var errConcurrentRead = errors.New("nflog: Read called while another Read is running")

// Read calls fn for each logged packet until Close is called, then returns
// net.ErrClosed. Lost packets and receive-buffer overflows are counted in
// Stats, not returned. Any other error ends Read.
//
// fn runs on the reading goroutine; the *Packet and its slices are reused
// for the next packet once fn returns.
func (c *Conn) Read(fn func(p *Packet)) error {
	for {
		if _, err := c.ReadBatch(fn); err != nil {
			return err
		}
	}
}

// ReadBatch waits for one datagram from the kernel (one batch of up to
// Config.QueueThreshold packets), calls fn for each packet in it and
// returns how many there were. It returns 0 and no error after counting
// an ENOBUFS, and net.ErrClosed once Close has been called.
func (c *Conn) ReadBatch(fn func(p *Packet)) (int, error) {
	if !c.readMu.TryLock() {
		return 0, errConcurrentRead
	}
	defer c.readMu.Unlock()
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	if err := c.rc.Read(c.readFn); err != nil {
		if c.closed.Load() {
			return 0, net.ErrClosed
		}
		return 0, fmt.Errorf("nflog: read group %d: %w", c.cfg.Group, err)
	}
	switch c.rerr {
	case 0:
	case unix.ENOBUFS:
		c.enobufs.Add(1)
		return 0, nil
	default:
		if c.closed.Load() {
			return 0, net.ErrClosed
		}
		return 0, fmt.Errorf("nflog: read group %d: %w", c.cfg.Group, c.rerr)
	}
	n := c.rn
	if n > len(c.buf) { // MSG_TRUNC: the datagram was larger than buf
		c.errs.Add(1)
		n = len(c.buf)
	}
	before := c.parser.packets
	c.handle(c.buf[:n], fn, 0)
	return int(c.parser.packets - before), nil
}

// parser holds what the reader keeps between datagrams.
type parser struct {
	pkt      Packet
	layout   layout // of the last packet message's body
	seqKnown bool   // nextSeq is meaningful
	nextSeq  uint32 // NFULA_SEQ expected next
	packets  uint64 // packets handled, for ReadBatch's count
}

// handle walks the netlink messages of one datagram: NFULNL_MSG_PACKET
// messages go to fn; NLMSG_DONE (the end of a batch, which the kernel
// sends as a multipart message) and NLMSG_NOOP are skipped. If ackSeq is
// not 0, the NLMSG_ERROR answering that request is reported as
// (errno, true). Counters are added to the Conn's Stats once per datagram.
func (c *Conn) handle(b []byte, fn func(*Packet), ackSeq uint32) (errno unix.Errno, acked bool) {
	now := time.Now().UnixNano()
	var packets, gaps, errs uint64
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		seq := binary.NativeEndian.Uint32(b[8:12])
		if l < nlmsgHdrLen || l > len(b) {
			errs++ // malformed length: the rest cannot be framed
			break
		}
		body := b[nlmsgHdrLen:l]
		b = b[min(align4(l), len(b)):]

		switch typ {
		case nlmsgPacket:
			if !c.parsePacket(body, now) {
				errs++
				continue
			}
			p := &c.pkt
			if c.seqKnown {
				// uint32 arithmetic handles wrap-around; a jump backwards
				// (impossible within one instance) only resynchronises.
				if d := p.Seq - c.nextSeq; d != 0 && d < 1<<31 {
					gaps += uint64(d)
				}
			}
			c.nextSeq, c.seqKnown = p.Seq+1, true
			packets++
			fn(p)
		case nlmsgError:
			var e int32
			if len(body) >= 4 {
				e = int32(binary.NativeEndian.Uint32(body[0:4]))
			}
			if ackSeq != 0 && seq == ackSeq {
				errno, acked = unix.Errno(-e), true
				continue
			}
			if e != 0 {
				errs++
			}
		case nlmsgDone, nlmsgNoop:
		default:
			errs++ // NLMSG_OVERRUN or a type this package never asked for
		}
	}
	c.parser.packets += packets
	if packets != 0 {
		c.packets.Add(packets)
	}
	if gaps != 0 {
		c.seqGaps.Add(gaps)
	}
	if errs != 0 {
		c.errs.Add(errs)
	}
	return errno, acked
}

// parsePacket fills c.pkt from the body of an NFULNL_MSG_PACKET message:
// a struct nfgenmsg, then attributes. now is the receive time, used when
// the kernel sent no NFULA_TIMESTAMP. It reports false if the message is
// malformed or carries no sequence number (which Open always asks for).
func (c *Conn) parsePacket(b []byte, now int64) bool {
	p := &c.pkt
	*p = Packet{Timestamp: now}
	if len(b) < nfgenLen {
		return false
	}
	p.Family = b[0]
	if !c.layout.matches(b) && c.layout.walk(b) {
		return false // malformed
	}
	return c.layout.fill(p, b)
}
