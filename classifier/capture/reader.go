// Package capture reads and writes pcap and pcapng capture files.
//
// A Reader detects the format, walks its records or blocks, strips the link
// layer (Ethernet with VLAN tags, PPPoE sessions and MPLS labels, raw IP,
// Linux SLL and SLL2, NFLOG, BSD loopback, PPP and Cisco HDLC) and hands
// the IP packet to packet.Decode, so that Next returns one TCP packet
// record at a time. Frames that are valid but hold no TCP packet (ARP, UDP,
// ICMP, non-first fragments) and frames whose headers are truncated or
// malformed are skipped and counted in Stats; only a corrupt or truncated
// file stops a Reader, with a *FormatError naming the file and the byte
// offset of the bad record.
//
// Tunnels (GRE, VXLAN, Geneve, IP in IP) are not unwrapped: their outer
// packet is not TCP, and is skipped and counted. A capture of every
// interface of an overlay network's node holds each packet both
// encapsulated and decapsulated, and unwrapping would count it twice.
//
// Open opens a Reader on a file or on standard input ("-"), decompressing
// a gzip- or zstd-compressed capture as it reads.
//
// PcapWriter and PcapngWriter write capture files, and BuildPacket turns a
// packet.Record back into a headers-only IP+TCP packet, for tests,
// benchmarks and the agent's own captures.
//
// This package does not classify, does not assemble connections and keeps
// no payload bytes: see classifier/flow and classifier/classify.
package capture

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"

	"github.com/connscope/connscope/packet"
)

// MaxCaptureLength is the largest captured length of one frame a Reader
// accepts (libpcap's MAXIMUM_SNAPLEN, 256 KiB). A record that claims more
// is taken as a sign of a corrupt file, whatever snapshot length the file
// header states: the snapshot length is not trusted as a bound because
// writers often store 65535 and then write larger loopback frames, which
// libpcap accepts too.
const MaxCaptureLength = 256 << 10

// bufferSize is the size of a Reader's one buffer. A block a Reader decodes
// (a packet block, an interface or section header) must fit in it; larger
// blocks of other types are skipped without buffering them whole.
const bufferSize = 1 << 20

// Magic numbers of the two formats.
const (
	pcapMagicMicro = 0xa1b2c3d4
	pcapMagicNano  = 0xa1b23c4d
	ngSHB          = 0x0a0d0d0a
	ngByteOrder    = 0x1a2b3c4d
)

// pcapng block types a Reader decodes; all others are skipped.
const (
	ngIDB = 0x00000001
	ngPB  = 0x00000002 // obsolete Packet Block
	ngSPB = 0x00000003
	ngEPB = 0x00000006
)

// FormatError reports a corrupt or truncated capture file: the file's name,
// the byte offset of the bad header, record or block, and what is wrong.
type FormatError struct {
	File   string
	Offset int64
	Reason string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%s: byte %d: %s; the file is corrupt or truncated", e.File, e.Offset, e.Reason)
}

// LinkTypeError reports a frame of a link type this package cannot strip.
// It is returned by Next when a frame of that type is read (a pcapng file
// may mix interfaces of several types); the frame is consumed, and calling
// Next again goes on with the next frame.
type LinkTypeError struct {
	File     string
	Offset   int64
	LinkType uint32
}

func (e *LinkTypeError) Error() string {
	return fmt.Sprintf("%s: byte %d: link type %d is not supported (supported: Ethernet 1, raw IP 101/12/14/228/229, Linux SLL 113, SLL2 276, NFLOG 239, BSD loopback 0/108, PPP 9/50, Cisco HDLC 104)",
		e.File, e.Offset, e.LinkType)
}

// Stats counts what a Reader has read so far.
type Stats struct {
	// Frames is the number of packet records or blocks read.
	Frames int64
	// TCP is the number of TCP packets Next returned.
	TCP int64
	// SkippedNonTCP counts valid frames Next skipped because they hold no
	// TCP packet: not IP (ARP, LLDP), another IP protocol (UDP, ICMP, ESP)
	// or a non-first IP fragment.
	SkippedNonTCP int64
	// SkippedUndecodable counts frames Next skipped because a link, IP or
	// TCP header inside them is truncated or malformed, including NFLOG
	// frames without a payload.
	SkippedUndecodable int64
	// Bytes is the number of bytes of the file consumed so far.
	Bytes int64
}

// iface is a pcapng interface: its link type and how to turn its
// timestamps into nanoseconds.
type iface struct {
	linkType uint32
	snaplen  uint32
	// A timestamp in units is converted as units*mul (mul != 0), as
	// units/div (div != 0), or as units*1e9 >> shift.
	mul, div uint64
	shift    uint
	offset   int64 // if_tsoffset in nanoseconds
}

func (f *iface) nanos(units uint64) int64 {
	var ns uint64
	switch {
	case f.mul != 0:
		ns = units * f.mul
	case f.div != 0:
		ns = units / f.div
	default:
		hi, lo := bits.Mul64(units, 1e9)
		if f.shift >= 64 {
			ns = hi >> (f.shift - 64)
		} else if f.shift == 0 {
			ns = lo
		} else {
			ns = hi<<(64-f.shift) | lo>>f.shift
		}
	}
	return int64(ns) + f.offset
}

// Reader reads frames and TCP packet records from a pcap or pcapng file. It
// is not safe for concurrent use.
type Reader struct {
	name string
	src  io.Reader

	buf  []byte
	r, w int   // unread bytes are buf[r:w]
	off  int64 // file offset of buf[0]
	eof  bool
	err  error // sticky: a format or read error ends the Reader

	ng bool // pcapng, else pcap

	// pcap
	big      bool   // byte order of the current pcap file or pcapng section
	fracMul  int64  // pcap: nanoseconds per unit of the fraction field
	linkType uint32 // pcap: the file's link type

	// pcapng: interfaces of the current section
	ifaces []iface

	nflogBig bool // byte order of the last NFLOG frame's TLVs

	frameOff int64 // file offset of the last frame's record or block
	stats    Stats
}

// NewReader reads the file header of a pcap or pcapng file from r and
// returns a Reader for its frames. name is used in errors only.
//
// pcap: all four magic numbers (microsecond and nanosecond resolution,
// either byte order). pcapng: sections in either byte order, several
// sections in one file, interfaces with their own link type, if_tsresol
// (power of 10 or of 2) and if_tsoffset; Enhanced, Simple and the obsolete
// Packet Blocks. Other pcapng block types are skipped.
func NewReader(r io.Reader, name string) (*Reader, error) {
	rd := &Reader{name: name, src: r, buf: make([]byte, bufferSize)}
	if err := rd.fill(4); err != nil {
		if err == io.EOF {
			return nil, rd.formatError(0, "empty file: no pcap or pcapng header")
		}
		return nil, rd.partial(err, 0, "file ends inside the 4-byte magic number")
	}
	magicBE := binary.BigEndian.Uint32(rd.buf[0:4])
	magicLE := binary.LittleEndian.Uint32(rd.buf[0:4])
	switch {
	case magicBE == ngSHB:
		rd.ng = true
		if err := rd.readSHB(); err != nil {
			return nil, err
		}
		return rd, nil
	case magicBE == pcapMagicMicro || magicBE == pcapMagicNano:
		rd.big = true
	case magicLE == pcapMagicMicro || magicLE == pcapMagicNano:
	default:
		return nil, rd.formatError(0, fmt.Sprintf("magic number 0x%08x is neither pcap nor pcapng", magicBE))
	}
	if err := rd.fill(24); err != nil {
		return nil, rd.partial(err, 0, "file ends inside the 24-byte pcap file header")
	}
	h := rd.buf[0:24]
	rd.fracMul = 1000
	if rd.u32(h[0:4]) == pcapMagicNano {
		rd.fracMul = 1
	}
	if major := rd.u16(h[4:6]); major != 2 {
		return nil, rd.formatError(4, fmt.Sprintf("pcap major version %d, want 2", major))
	}
	// Bits 0-27 of the network field are the link type (the upper bits
	// carry the FCS length), as libpcap's LT_LINKTYPE takes them.
	rd.linkType = rd.u32(h[20:24]) & 0x03ffffff
	rd.r = 24
	return rd, nil
}

// Stats returns the counts so far.
func (r *Reader) Stats() Stats {
	s := r.stats
	s.Bytes = r.off + int64(r.r)
	return s
}

func (r *Reader) u16(b []byte) uint16 {
	if r.big {
		return binary.BigEndian.Uint16(b)
	}
	return binary.LittleEndian.Uint16(b)
}

func (r *Reader) u32(b []byte) uint32 {
	if r.big {
		return binary.BigEndian.Uint32(b)
	}
	return binary.LittleEndian.Uint32(b)
}

func (r *Reader) u64(b []byte) uint64 {
	if r.big {
		return binary.BigEndian.Uint64(b)
	}
	return binary.LittleEndian.Uint64(b)
}

func (r *Reader) formatError(off int64, reason string) error {
	return &FormatError{File: r.name, Offset: off, Reason: reason}
}

// partial turns an error of fill into the Reader's error: a read error is
// wrapped with the file name and offset; an end of file inside a record is
// a FormatError.
func (r *Reader) partial(err error, off int64, reason string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return r.formatError(off, reason)
	}
	return err
}

// fill makes at least n bytes available in buf[r:w]. It returns io.EOF if
// the file ended with no byte left, io.ErrUnexpectedEOF if it ended with
// fewer than n, and a read error wrapped with the file name. n must be at
// most bufferSize.
func (r *Reader) fill(n int) error {
	if r.w-r.r >= n {
		return nil
	}
	if r.r+n > len(r.buf) {
		copy(r.buf, r.buf[r.r:r.w])
		r.off += int64(r.r)
		r.w -= r.r
		r.r = 0
	}
	for r.w-r.r < n && !r.eof {
		m, err := r.src.Read(r.buf[r.w:])
		r.w += m
		if err == io.EOF {
			r.eof = true
		} else if err != nil {
			return fmt.Errorf("%s: read at byte %d: %w", r.name, r.off+int64(r.w), err)
		}
	}
	switch {
	case r.w-r.r >= n:
		return nil
	case r.w == r.r:
		return io.EOF
	}
	return io.ErrUnexpectedEOF
}

// discard skips n bytes without buffering them all.
func (r *Reader) discard(n int64) error {
	for n > 0 {
		if r.w == r.r {
			if err := r.fill(1); err != nil {
				return err
			}
		}
		k := int64(r.w - r.r)
		if k > n {
			k = n
		}
		r.r += int(k)
		n -= k
	}
	return nil
}

// NextFrame returns the next frame as captured, with its timestamp in
// nanoseconds since the Unix epoch and its link type, without decoding it.
// data is valid until the next call to NextFrame or Next. At the clean end
// of the file it returns io.EOF; a corrupt or truncated file gives a
// *FormatError, after which every call returns the same error.
func (r *Reader) NextFrame() (ts int64, linkType uint32, data []byte, err error) {
	if r.err != nil {
		return 0, 0, nil, r.err
	}
	if r.ng {
		ts, linkType, data, err = r.nextBlock()
	} else {
		ts, linkType, data, err = r.nextRecord()
	}
	if err != nil {
		r.err = err
		return 0, 0, nil, err
	}
	r.stats.Frames++
	return ts, linkType, data, nil
}

// nextRecord reads one pcap record.
func (r *Reader) nextRecord() (int64, uint32, []byte, error) {
	start := r.off + int64(r.r)
	if r.w-r.r < 16 {
		if err := r.fill(16); err == io.EOF {
			return 0, 0, nil, io.EOF
		} else if err != nil {
			return 0, 0, nil, r.partial(err, start, fmt.Sprintf("file ends inside a record header (%d of 16 bytes)", r.w-r.r))
		}
	}
	h := r.buf[r.r : r.r+16]
	caplen := r.u32(h[8:12])
	if caplen > MaxCaptureLength {
		return 0, 0, nil, r.formatError(start, fmt.Sprintf("record claims %d captured bytes", caplen))
	}
	ts := int64(r.u32(h[0:4]))*1e9 + int64(r.u32(h[4:8]))*r.fracMul
	need := 16 + int(caplen)
	if r.w-r.r < need {
		if err := r.fill(need); err != nil {
			return 0, 0, nil, r.partial(err, start, fmt.Sprintf("file ends inside a record of %d captured bytes (%d of %d bytes present)", caplen, r.w-r.r, need))
		}
	}
	data := r.buf[r.r+16 : r.r+need]
	r.frameOff = start
	r.r += need
	return ts, r.linkType, data, nil
}

// nextBlock reads pcapng blocks up to the next packet block.
func (r *Reader) nextBlock() (int64, uint32, []byte, error) {
	for {
		start := r.off + int64(r.r)
		if r.w-r.r < 12 {
			if err := r.fill(12); err == io.EOF {
				return 0, 0, nil, io.EOF
			} else if err != nil {
				return 0, 0, nil, r.partial(err, start, fmt.Sprintf("file ends inside a block header (%d of 12 bytes)", r.w-r.r))
			}
		}
		b := r.buf[r.r:]
		if binary.BigEndian.Uint32(b[0:4]) == ngSHB {
			if err := r.readSHB(); err != nil {
				return 0, 0, nil, err
			}
			continue
		}
		btype := r.u32(b[0:4])
		blen := r.u32(b[4:8])
		if blen < 12 || blen%4 != 0 {
			return 0, 0, nil, r.formatError(start, fmt.Sprintf("block of type 0x%08x claims a length of %d bytes (at least 12, a multiple of 4)", btype, blen))
		}
		switch btype {
		case ngIDB, ngEPB, ngSPB, ngPB:
		default:
			if err := r.skipBlock(start, blen); err != nil {
				return 0, 0, nil, err
			}
			continue
		}
		if blen > bufferSize {
			return 0, 0, nil, r.formatError(start, fmt.Sprintf("block of type %d claims %d bytes", btype, blen))
		}
		n := int(blen)
		if r.w-r.r < n {
			if err := r.fill(n); err != nil {
				return 0, 0, nil, r.partial(err, start, fmt.Sprintf("file ends inside a block of %d bytes (%d present)", blen, r.w-r.r))
			}
		}
		b = r.buf[r.r : r.r+n]
		if r.u32(b[n-4:]) != blen {
			return 0, 0, nil, r.formatError(start, fmt.Sprintf("block length %d at the start and %d at the end differ", blen, r.u32(b[n-4:])))
		}
		r.frameOff = start
		r.r += n
		switch btype {
		case ngEPB:
			return r.packetBlock(start, b, uint64(r.u32(b[8:12])), 32)
		case ngPB:
			return r.packetBlock(start, b, uint64(r.u16(b[8:10])), 32)
		case ngSPB:
			return r.simplePacketBlock(start, b)
		case ngIDB:
			if err := r.readIDB(start, b); err != nil {
				return 0, 0, nil, err
			}
		}
	}
}

// packetBlock decodes an Enhanced Packet Block or an obsolete Packet Block:
// both have the timestamp at byte 12 and the captured length at byte 20.
func (r *Reader) packetBlock(start int64, b []byte, ifid uint64, min int) (int64, uint32, []byte, error) {
	if len(b) < min {
		return 0, 0, nil, r.formatError(start, fmt.Sprintf("packet block of %d bytes, shorter than its %d-byte minimum", len(b), min))
	}
	if ifid >= uint64(len(r.ifaces)) {
		return 0, 0, nil, r.formatError(start, fmt.Sprintf("packet block refers to interface %d, but the section describes %d", ifid, len(r.ifaces)))
	}
	caplen := r.u32(b[20:24])
	if caplen > MaxCaptureLength {
		return 0, 0, nil, r.formatError(start, fmt.Sprintf("packet block claims %d captured bytes", caplen))
	}
	if int(caplen) > len(b)-min {
		return 0, 0, nil, r.formatError(start, fmt.Sprintf("packet block claims %d captured bytes but has room for %d", caplen, len(b)-min))
	}
	f := &r.ifaces[ifid]
	units := uint64(r.u32(b[12:16]))<<32 | uint64(r.u32(b[16:20]))
	return f.nanos(units), f.linkType, b[28 : 28+int(caplen)], nil
}

// simplePacketBlock decodes a Simple Packet Block: interface 0, no
// timestamp (0), captured length from the block length, the original
// length and interface 0's snapshot length.
func (r *Reader) simplePacketBlock(start int64, b []byte) (int64, uint32, []byte, error) {
	if len(b) < 16 {
		return 0, 0, nil, r.formatError(start, fmt.Sprintf("simple packet block of %d bytes, shorter than 16", len(b)))
	}
	if len(r.ifaces) == 0 {
		return 0, 0, nil, r.formatError(start, "simple packet block before any interface description block")
	}
	f := &r.ifaces[0]
	caplen := uint64(len(b) - 16)
	if orig := uint64(r.u32(b[8:12])); orig < caplen {
		caplen = orig
	}
	if f.snaplen != 0 && uint64(f.snaplen) < caplen {
		caplen = uint64(f.snaplen)
	}
	if caplen > MaxCaptureLength {
		return 0, 0, nil, r.formatError(start, fmt.Sprintf("simple packet block holds %d captured bytes", caplen))
	}
	return 0, f.linkType, b[12 : 12+int(caplen)], nil
}

// skipBlock skips a block of a type the Reader does not decode, checking
// its trailing length.
func (r *Reader) skipBlock(start int64, blen uint32) error {
	if err := r.discard(int64(blen) - 4); err != nil {
		return r.partial(err, start, fmt.Sprintf("file ends inside a block of %d bytes", blen))
	}
	if err := r.fill(4); err != nil {
		return r.partial(err, start, fmt.Sprintf("file ends inside a block of %d bytes", blen))
	}
	if end := r.u32(r.buf[r.r : r.r+4]); end != blen {
		return r.formatError(start, fmt.Sprintf("block length %d at the start and %d at the end differ", blen, end))
	}
	r.r += 4
	return nil
}

// readSHB reads a Section Header Block at buf[r:]: it sets the byte order
// of the section and forgets the interfaces of the previous one.
func (r *Reader) readSHB() error {
	start := r.off + int64(r.r)
	if err := r.fill(12); err != nil {
		return r.partial(err, start, "file ends inside a section header block")
	}
	b := r.buf[r.r:]
	switch {
	case binary.BigEndian.Uint32(b[8:12]) == ngByteOrder:
		r.big = true
	case binary.LittleEndian.Uint32(b[8:12]) == ngByteOrder:
		r.big = false
	default:
		return r.formatError(start, fmt.Sprintf("section header block with byte-order magic 0x%08x, want 0x1a2b3c4d", binary.BigEndian.Uint32(b[8:12])))
	}
	blen := r.u32(b[4:8])
	if blen < 28 || blen%4 != 0 {
		return r.formatError(start, fmt.Sprintf("section header block claims a length of %d bytes (at least 28, a multiple of 4)", blen))
	}
	if err := r.fill(16); err != nil {
		return r.partial(err, start, "file ends inside a section header block")
	}
	if major := r.u16(r.buf[r.r+12 : r.r+14]); major != 1 {
		return r.formatError(start, fmt.Sprintf("pcapng major version %d, want 1", major))
	}
	r.ifaces = r.ifaces[:0]
	return r.skipBlock(start, blen) // SHB options are not needed
}

// readIDB reads an Interface Description Block.
func (r *Reader) readIDB(start int64, b []byte) error {
	if len(b) < 20 {
		return r.formatError(start, fmt.Sprintf("interface description block of %d bytes, shorter than 20", len(b)))
	}
	f := iface{linkType: uint32(r.u16(b[8:10])), snaplen: r.u32(b[12:16]), mul: 1000} // default: microseconds
	opts := b[16 : len(b)-4]
	for len(opts) >= 4 {
		code := r.u16(opts[0:2])
		l := int(r.u16(opts[2:4]))
		if code == 0 { // opt_endofopt
			break
		}
		padded := 4 + (l+3)&^3
		if padded > len(opts) {
			return r.formatError(start, fmt.Sprintf("interface description block option %d claims %d bytes, more than the block holds", code, l))
		}
		v := opts[4 : 4+l]
		switch {
		case code == 9 && l >= 1: // if_tsresol
			f.mul, f.div, f.shift = tsResolution(v[0])
		case code == 14 && l >= 8: // if_tsoffset, seconds
			f.offset = int64(r.u64(v[0:8])) * 1e9
		}
		opts = opts[padded:]
	}
	r.ifaces = append(r.ifaces, f)
	return nil
}

// tsResolution turns an if_tsresol value into a conversion to nanoseconds:
// a multiplier, a divisor, or a right shift of units*1e9.
func tsResolution(v byte) (mul, div uint64, shift uint) {
	if v&0x80 != 0 { // 2^-n seconds
		return 0, 0, uint(v & 0x7f)
	}
	n := int(v) // 10^-n seconds
	if n <= 9 {
		mul = 1
		for i := n; i < 9; i++ {
			mul *= 10
		}
		return mul, 0, 0
	}
	if n-9 > 19 { // 10^20 does not fit a uint64: every timestamp is 0 ns
		return 0, ^uint64(0), 0
	}
	div = 1
	for i := 9; i < n; i++ {
		div *= 10
	}
	return 0, div, 0
}

// Next reads frames until the next TCP packet and decodes it into rec. It
// returns io.EOF at the clean end of the file, a *FormatError for a corrupt
// or truncated file, and a *LinkTypeError for a frame of a link type it
// cannot strip (the next call goes on after that frame). Frames without a
// TCP packet, and frames with truncated or malformed headers, are skipped
// and counted in Stats.
func (r *Reader) Next(rec *packet.Record) error {
	for {
		ts, lt, data, err := r.NextFrame()
		if err != nil {
			return err
		}
		ip, st := r.network(lt, data, &ts)
		switch st {
		case linkNotIP:
			r.stats.SkippedNonTCP++
			continue
		case linkBad:
			r.stats.SkippedUndecodable++
			continue
		case linkUnsupported:
			return &LinkTypeError{File: r.name, Offset: r.frameOff, LinkType: lt}
		}
		switch packet.Decode(ip, ts, rec) {
		case nil:
			r.stats.TCP++
			return nil
		case packet.ErrNotTCP, packet.ErrFragment:
			r.stats.SkippedNonTCP++
		default:
			r.stats.SkippedUndecodable++
		}
	}
}
