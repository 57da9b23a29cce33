package capture

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/connscope/connscope/packet"
)

// Capture files are built by hand here, in either byte order, so the
// Reader is not only tested against this package's writers.

// frame is one captured frame: timestamp, bytes, and wire length (0: the
// captured length).
type frame struct {
	ts   int64
	data []byte
	orig int
}

func (f frame) origLen() int {
	if f.orig == 0 {
		return len(f.data)
	}
	return f.orig
}

// pcapFile builds a pcap file in byte order o with microsecond or
// nanosecond timestamps.
func pcapFile(o binary.ByteOrder, nano bool, linkType uint32, frames ...frame) []byte {
	h := make([]byte, 24)
	magic := uint32(pcapMagicMicro)
	if nano {
		magic = pcapMagicNano
	}
	o.PutUint32(h[0:], magic)
	o.PutUint16(h[4:], 2)
	o.PutUint16(h[6:], 4)
	o.PutUint32(h[16:], 65535)
	o.PutUint32(h[20:], linkType)
	for _, f := range frames {
		r := make([]byte, 16)
		frac := f.ts % 1e9
		if !nano {
			frac /= 1000
		}
		o.PutUint32(r[0:], uint32(f.ts/1e9))
		o.PutUint32(r[4:], uint32(frac))
		o.PutUint32(r[8:], uint32(len(f.data)))
		o.PutUint32(r[12:], uint32(f.origLen()))
		h = append(h, r...)
		h = append(h, f.data...)
	}
	return h
}

// order is binary.LittleEndian or binary.BigEndian.
type order interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

// ng builds pcapng blocks in one byte order.
type ng struct {
	o   order
	buf bytes.Buffer
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// block appends a block of type t with the given body.
func (n *ng) block(t uint32, body []byte) *ng {
	body = pad4(body)
	l := uint32(12 + len(body))
	b := make([]byte, 8, l)
	n.o.PutUint32(b[0:], t)
	n.o.PutUint32(b[4:], l)
	b = append(b, body...)
	b = n.o.AppendUint32(b, l)
	n.buf.Write(b)
	return n
}

func (n *ng) shb() *ng {
	b := n.o.AppendUint32(nil, ngByteOrder)
	b = n.o.AppendUint16(b, 1)
	b = n.o.AppendUint16(b, 0)
	b = n.o.AppendUint64(b, ^uint64(0))
	// an shb_userappl option, to be skipped
	b = n.o.AppendUint16(b, 4)
	b = n.o.AppendUint16(b, 5)
	b = append(b, "tests\x00\x00\x00"...)
	b = append(b, 0, 0, 0, 0)
	return n.block(ngSHB, b)
}

// option is a pcapng option: code and value.
type option struct {
	code uint16
	val  []byte
}

func (n *ng) idb(linkType uint16, snaplen uint32, opts ...option) *ng {
	b := n.o.AppendUint16(nil, linkType)
	b = append(b, 0, 0)
	b = n.o.AppendUint32(b, snaplen)
	for _, op := range opts {
		b = n.o.AppendUint16(b, op.code)
		b = n.o.AppendUint16(b, uint16(len(op.val)))
		b = pad4(append(b, op.val...))
	}
	if len(opts) > 0 {
		b = append(b, 0, 0, 0, 0)
	}
	return n.block(ngIDB, b)
}

func tsresol(v byte) option { return option{9, []byte{v}} }

func (n *ng) tsoffset(sec int64) option {
	return option{14, n.o.AppendUint64(nil, uint64(sec))}
}

// epb, pb and spb append packet blocks; orig 0 means len(data).
func (n *ng) epb(ifid uint32, units uint64, data []byte, orig int) *ng {
	orig = max(orig, len(data))
	b := n.o.AppendUint32(nil, ifid)
	b = n.o.AppendUint32(b, uint32(units>>32))
	b = n.o.AppendUint32(b, uint32(units))
	b = n.o.AppendUint32(b, uint32(len(data)))
	b = n.o.AppendUint32(b, uint32(orig))
	b = pad4(append(b, data...))
	// an epb_flags option, to be ignored
	b = n.o.AppendUint16(b, 2)
	b = n.o.AppendUint16(b, 4)
	b = n.o.AppendUint32(b, 1)
	b = append(b, 0, 0, 0, 0)
	return n.block(ngEPB, b)
}

func (n *ng) pb(ifid uint16, units uint64, data []byte, orig int) *ng {
	orig = max(orig, len(data))
	b := n.o.AppendUint16(nil, ifid)
	b = n.o.AppendUint16(b, 0)
	b = n.o.AppendUint32(b, uint32(units>>32))
	b = n.o.AppendUint32(b, uint32(units))
	b = n.o.AppendUint32(b, uint32(len(data)))
	b = n.o.AppendUint32(b, uint32(orig))
	return n.block(ngPB, append(b, data...))
}

func (n *ng) spb(data []byte, orig int) *ng {
	orig = max(orig, len(data))
	return n.block(ngSPB, append(n.o.AppendUint32(nil, uint32(orig)), data...))
}

func (n *ng) bytes() []byte { return n.buf.Bytes() }

// Link layers.

func ether(etherType uint16, ip []byte, vlans ...uint16) []byte {
	b := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2}
	for _, v := range vlans { // outer first: TPID, then a TCI
		b = binary.BigEndian.AppendUint16(b, v)
		b = binary.BigEndian.AppendUint16(b, 100)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, ip...)
}

// mplsLabels puts ip under a stack of n MPLS labels (17, 18, ...), the
// last with the bottom-of-stack bit.
func mplsLabels(n int, ip []byte) []byte {
	var b []byte
	for i := 1; i <= n; i++ {
		e := uint32(16+i)<<12 | 64 // label, TTL 64
		if i == n {
			e |= 1 << 8
		}
		b = binary.BigEndian.AppendUint32(b, e)
	}
	return append(b, ip...)
}

func sll(proto uint16, ip []byte) []byte {
	b := []byte{0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0}
	b = binary.BigEndian.AppendUint16(b, proto)
	return append(b, ip...)
}

func sll2(proto uint16, ip []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, proto)
	b = append(b, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 6, 2, 0, 0, 0, 0, 1, 0)
	return append(b, ip...)
}

// tlv is one NFLOG TLV.
type tlv struct {
	typ uint16
	val []byte
}

// nflog builds an NFLOG frame with TLV headers in byte order o.
func nflog(o order, family byte, tlvs ...tlv) []byte {
	b := []byte{family, 0, 0, 5}
	for _, t := range tlvs {
		b = o.AppendUint16(b, uint16(4+len(t.val)))
		b = o.AppendUint16(b, t.typ)
		b = pad4(append(b, t.val...))
	}
	return b
}

// nflogTS is an NFULA_TIMESTAMP value.
func nflogTS(ns int64) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(ns/1e9))
	return binary.BigEndian.AppendUint64(b, uint64(ns%1e9/1e3))
}

// nflogFrame is a typical frame as the kernel sends it: packet header,
// mark, prefix, timestamp (optional), uid, payload.
func nflogFrame(o order, ip []byte, tsNS int64) []byte {
	family := byte(2)
	if ip[0]>>4 == 6 {
		family = 10
	}
	tlvs := []tlv{
		{1, []byte{0x08, 0x00, 3, 0}}, // NFULA_PACKET_HDR
		{2, []byte{0, 0, 0, 1}},       // NFULA_MARK
		{10, []byte("connscope\x00")}, // NFULA_PREFIX
	}
	if tsNS != 0 {
		tlvs = append(tlvs, tlv{3, nflogTS(tsNS)})
	}
	tlvs = append(tlvs, tlv{11 | 0x4000, []byte{0, 0, 3, 0xe8}}, tlv{nfulaPayload, ip})
	return nflog(o, family, tlvs...)
}

// Records.

func rec4(flags packet.Flags, payload uint16, opts ...uint8) packet.Record {
	r := packet.Record{SrcPort: 40000, DstPort: 443, Flags: flags, Seq: 123456789, Ack: 987654321,
		Window: 64240, TTL: 57, IPID: 4711, DF: true, PayloadLen: payload}
	r.SetSrc(netip.MustParseAddr("192.0.2.1"))
	r.SetDst(netip.MustParseAddr("198.51.100.7"))
	copy(r.Options[:], opts)
	r.NumOptions = uint8(len(opts))
	return r
}

func rec6(flags packet.Flags, payload uint16, opts ...uint8) packet.Record {
	r := packet.Record{SrcPort: 51000, DstPort: 80, Flags: flags, Seq: 1, Ack: 0xffffffff,
		Window: 1024, TTL: 63, PayloadLen: payload}
	r.SetSrc(netip.MustParseAddr("2001:db8::1"))
	r.SetDst(netip.MustParseAddr("2001:db8:ffff::2"))
	copy(r.Options[:], opts)
	r.NumOptions = uint8(len(opts))
	return r
}

// linuxSYN are the option kinds of a Linux SYN: MSS, SACK permitted,
// timestamps, NOP, window scale.
var linuxSYN = []uint8{2, 4, 8, 1, 3}

// ip builds the raw packet of a record.
func ip(r packet.Record) []byte { return BuildPacket(&r) }

func udp4() []byte {
	b := ip(rec4(packet.ACK, 0))
	b[9] = 17
	return b[:28]
}

func icmp4() []byte {
	b := ip(rec4(packet.ACK, 0))
	b[9] = 1
	return b[:28]
}

// readAll reads all TCP records of a file.
func readAll(t testing.TB, file []byte) ([]packet.Record, Stats, error) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(file), "test.pcap")
	if err != nil {
		return nil, Stats{}, err
	}
	var out []packet.Record
	for {
		var rec packet.Record
		err := r.Next(&rec)
		if err != nil {
			return out, r.Stats(), err
		}
		out = append(out, rec)
	}
}
