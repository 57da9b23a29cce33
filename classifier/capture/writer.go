package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/connscope/connscope/packet"
)

// DefaultSnaplen is the snapshot length the writers store when given 0.
const DefaultSnaplen = MaxCaptureLength

// PcapWriter writes a pcap file in little-endian byte order.
//
// Each WritePacket is one Write call on the underlying writer: wrap a file
// in a bufio.Writer (and flush it) when writing many packets.
type PcapWriter struct {
	w       io.Writer
	snaplen uint32
	nano    bool
	scratch []byte
}

// NewPcapWriter writes a pcap file header to w: the given link type and
// snapshot length (0 means DefaultSnaplen), with nanosecond timestamps if
// nanosecond is set, else microsecond ones.
func NewPcapWriter(w io.Writer, linkType uint32, snaplen uint32, nanosecond bool) (*PcapWriter, error) {
	if snaplen == 0 {
		snaplen = DefaultSnaplen
	}
	h := make([]byte, 24)
	magic := uint32(pcapMagicMicro)
	if nanosecond {
		magic = pcapMagicNano
	}
	binary.LittleEndian.PutUint32(h[0:4], magic)
	binary.LittleEndian.PutUint16(h[4:6], 2)
	binary.LittleEndian.PutUint16(h[6:8], 4)
	binary.LittleEndian.PutUint32(h[16:20], snaplen)
	binary.LittleEndian.PutUint32(h[20:24], linkType)
	if _, err := w.Write(h); err != nil {
		return nil, fmt.Errorf("write pcap file header: %w", err)
	}
	return &PcapWriter{w: w, snaplen: snaplen, nano: nanosecond}, nil
}

// WritePacket writes one record: ts in nanoseconds since the Unix epoch
// (from 1970 to 2106, as the format holds unsigned 32-bit seconds), the
// captured bytes (cut to the snapshot length) and the length the packet
// had on the wire, which must be at least len(data).
func (p *PcapWriter) WritePacket(ts int64, data []byte, origLen int) error {
	if ts < 0 || ts/1e9 > math.MaxUint32 {
		return fmt.Errorf("write pcap record: timestamp %d ns is outside the format's 1970-2106 range", ts)
	}
	data, err := checkLengths(data, origLen, p.snaplen)
	if err != nil {
		return fmt.Errorf("write pcap record: %w", err)
	}
	frac := ts % 1e9
	if !p.nano {
		frac /= 1e3
	}
	p.scratch = append(p.scratch[:0], make([]byte, 16)...)
	binary.LittleEndian.PutUint32(p.scratch[0:4], uint32(ts/1e9))
	binary.LittleEndian.PutUint32(p.scratch[4:8], uint32(frac))
	binary.LittleEndian.PutUint32(p.scratch[8:12], uint32(len(data)))
	binary.LittleEndian.PutUint32(p.scratch[12:16], uint32(origLen))
	p.scratch = append(p.scratch, data...)
	if _, err := p.w.Write(p.scratch); err != nil {
		return fmt.Errorf("write pcap record: %w", err)
	}
	return nil
}

// PcapngWriter writes a pcapng file in little-endian byte order: one
// Section Header Block, one Interface Description Block with nanosecond
// timestamps (if_tsresol 9), then one Enhanced Packet Block per packet.
//
// Each WritePacket is one Write call on the underlying writer: wrap a file
// in a bufio.Writer (and flush it) when writing many packets.
type PcapngWriter struct {
	w       io.Writer
	snaplen uint32
	scratch []byte
}

// NewPcapngWriter writes the section header and the one interface
// description (link type, snapshot length, 0 meaning DefaultSnaplen) to w.
func NewPcapngWriter(w io.Writer, linkType uint32, snaplen uint32) (*PcapngWriter, error) {
	if snaplen == 0 {
		snaplen = DefaultSnaplen
	}
	if linkType > math.MaxUint16 {
		return nil, fmt.Errorf("write pcapng interface: link type %d does not fit the 16-bit field", linkType)
	}
	le := binary.LittleEndian
	h := make([]byte, 28+32)
	// Section Header Block, no options, section length unknown (-1).
	le.PutUint32(h[0:4], ngSHB)
	le.PutUint32(h[4:8], 28)
	le.PutUint32(h[8:12], ngByteOrder)
	le.PutUint16(h[12:14], 1)
	le.PutUint16(h[14:16], 0)
	le.PutUint64(h[16:24], math.MaxUint64)
	le.PutUint32(h[24:28], 28)
	// Interface Description Block: if_tsresol = 9, opt_endofopt.
	i := h[28:]
	le.PutUint32(i[0:4], ngIDB)
	le.PutUint32(i[4:8], 32)
	le.PutUint16(i[8:10], uint16(linkType))
	le.PutUint32(i[12:16], snaplen)
	le.PutUint16(i[16:18], 9) // if_tsresol
	le.PutUint16(i[18:20], 1)
	i[20] = 9
	// i[24:28] is opt_endofopt (zeros)
	le.PutUint32(i[28:32], 32)
	if _, err := w.Write(h); err != nil {
		return nil, fmt.Errorf("write pcapng section and interface: %w", err)
	}
	return &PcapngWriter{w: w, snaplen: snaplen}, nil
}

// WritePacket writes one Enhanced Packet Block: ts in nanoseconds since
// the Unix epoch (not before 1970), the captured bytes (cut to the
// snapshot length) and the length the packet had on the wire, which must
// be at least len(data).
func (p *PcapngWriter) WritePacket(ts int64, data []byte, origLen int) error {
	if ts < 0 {
		return fmt.Errorf("write pcapng packet: timestamp %d ns is before 1970", ts)
	}
	data, err := checkLengths(data, origLen, p.snaplen)
	if err != nil {
		return fmt.Errorf("write pcapng packet: %w", err)
	}
	p.scratch = appendEPB(p.scratch[:0], ts, data, origLen)
	if _, err := p.w.Write(p.scratch); err != nil {
		return fmt.Errorf("write pcapng packet: %w", err)
	}
	return nil
}

// appendEPB appends an Enhanced Packet Block of interface 0 holding data.
// The caller has checked ts and the lengths.
func appendEPB(dst []byte, ts int64, data []byte, origLen int) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, 28)...) // zeroed, without a copy
	dst = append(dst, data...)
	return finishEPB(dst, start, ts, origLen)
}

// finishEPB completes the Enhanced Packet Block that starts at dst[start]:
// 28 bytes of header room, then the captured bytes up to len(dst). It pads
// them to 4 bytes, appends the trailing length and fills the header.
func finishEPB(dst []byte, start int, ts int64, origLen int) []byte {
	capLen := len(dst) - start - 28
	padded := (capLen + 3) &^ 3
	blen := 32 + padded
	dst = append(dst, make([]byte, padded-capLen+4)...)
	b := dst[start:]
	le := binary.LittleEndian
	le.PutUint32(b[0:4], ngEPB)
	le.PutUint32(b[4:8], uint32(blen))
	le.PutUint32(b[8:12], 0) // interface 0
	le.PutUint32(b[12:16], uint32(uint64(ts)>>32))
	le.PutUint32(b[16:20], uint32(ts))
	le.PutUint32(b[20:24], uint32(capLen))
	le.PutUint32(b[24:28], uint32(origLen))
	le.PutUint32(b[blen-4:], uint32(blen))
	return dst
}

// AppendRecordBlock appends to dst the Enhanced Packet Block a
// PcapngWriter of link type raw IP (LinkTypeRaw, any snapshot length of
// at least 100 bytes) would write for the packet AppendPacket builds from
// rec, with rec's timestamp and, as the original length, the headers plus
// rec.PayloadLen. It builds the packet in place: writers of many records
// (the agent's file sink) fill one buffer with whole blocks and write it
// at once. It returns an error, and dst unchanged, for a timestamp before
// 1970, which the format cannot hold.
func AppendRecordBlock(dst []byte, rec *packet.Record) ([]byte, error) {
	if rec.Timestamp < 0 {
		return dst, fmt.Errorf("write pcapng packet: timestamp %d ns is before 1970", rec.Timestamp)
	}
	start := len(dst)
	dst = append(dst, make([]byte, 28)...)
	dst = AppendPacket(dst, rec)
	headers := len(dst) - start - 28
	return finishEPB(dst, start, rec.Timestamp, headers+int(rec.PayloadLen)), nil
}

var errOrigLen = errors.New("original length is smaller than the captured bytes")

func checkLengths(data []byte, origLen int, snaplen uint32) ([]byte, error) {
	if origLen < len(data) {
		return nil, fmt.Errorf("%w (%d < %d)", errOrigLen, origLen, len(data))
	}
	if origLen > math.MaxUint32 {
		return nil, fmt.Errorf("original length %d does not fit 32 bits", origLen)
	}
	if uint64(len(data)) > uint64(snaplen) {
		data = data[:snaplen]
	}
	return data, nil
}
