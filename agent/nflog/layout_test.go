package nflog

import (
	"encoding/binary"
	"testing"

	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// walkParse is the reference the parser is checked against: the walk over a
// body's attributes one after the other, as parsePacket made it before it
// remembered layouts. It returns false for a malformed body or one without
// a sequence number.
func walkParse(b []byte, now int64) (Packet, bool) {
	p := Packet{Timestamp: now}
	if len(b) < nfgenLen {
		return p, false
	}
	p.Family = b[0]
	b = b[nfgenLen:]
	haveSeq := false
	for len(b) >= nlaHdrLen {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < nlaHdrLen || l > len(b) {
			return p, false
		}
		v := b[nlaHdrLen:l]
		b = b[min(align4(l), len(b)):]
		switch typ {
		case nfulaPacketHdr:
			if len(v) >= 3 {
				p.HWProtocol = binary.BigEndian.Uint16(v[0:2])
				p.Hook = v[2]
			}
		case nfulaMark:
			if len(v) == 4 {
				p.Mark = binary.BigEndian.Uint32(v)
			}
		case nfulaTimestamp:
			if len(v) == 16 {
				p.Timestamp = int64(binary.BigEndian.Uint64(v[0:8]))*1e9 + int64(binary.BigEndian.Uint64(v[8:16]))*1e3
				p.KernelTimestamp = true
			}
		case nfulaIfindexIndev:
			if len(v) == 4 {
				p.InDev = binary.BigEndian.Uint32(v)
			}
		case nfulaIfindexOutdev:
			if len(v) == 4 {
				p.OutDev = binary.BigEndian.Uint32(v)
			}
		case nfulaPayload:
			p.Payload = v
		case nfulaPrefix:
			for i, ch := range v {
				if ch == 0 {
					v = v[:i]
					break
				}
			}
			p.Prefix = v
		case nfulaSeq:
			if len(v) == 4 {
				p.Seq = binary.BigEndian.Uint32(v)
				haveSeq = true
			}
		}
	}
	return p, haveSeq
}

// kernelBody is the body of an NFULNL_MSG_PACKET message with the
// attributes in the kernel's order (nfnetlink_log.c's
// __build_packet_message: the packet header, the prefix, the interfaces,
// the hardware address and header, the timestamp, the sequence number, and
// the payload last).
func kernelBody(tb testing.TB, seq uint32, usec uint64, payload []byte) []byte {
	tb.Helper()
	hdr := []byte{0x08, 0x00, 0, 0}
	attrs := []netfilter.Attribute{
		{Type: nfulaPacketHdr, Data: hdr},
		{Type: nfulaPrefix, Data: []byte{0}},
		{Type: nfulaIfindexIndev, Data: netfilter.Uint32Bytes(2)},
		{Type: 8, Data: []byte{0, 6, 0, 0, 0x02, 0x42, 0xac, 0x11, 0, 2, 0, 0}}, // NFULA_HWADDR
		{Type: 15, Data: []byte{0, 1}},                                          // NFULA_HWTYPE
		{Type: 17, Data: []byte{0, 14}},                                         // NFULA_HWLEN
		{Type: 16, Data: make([]byte, 14)},                                      // NFULA_HWHEADER
		{Type: nfulaTimestamp, Data: append(netfilter.Uint64Bytes(1700000000), netfilter.Uint64Bytes(usec)...)},
		{Type: nfulaSeq, Data: netfilter.Uint32Bytes(seq)},
		{Type: nfulaPayload, Data: payload},
	}
	m, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysULOG, MessageType: nfulnlMsgPacket,
		Family: netfilter.ProtoIPv4, Version: unix.NFNETLINK_V0,
	}, attrs)
	if err != nil {
		tb.Fatal(err)
	}
	return m.Data
}

// parseEach parses bodies in turn with one Conn, so that each may match
// the layout the one before left, and checks each against walkParse.
func parseEach(t *testing.T, bodies ...[]byte) {
	t.Helper()
	c := newTestConn()
	for i, b := range bodies {
		ok := c.parsePacket(b, 42)
		want, wantOK := walkParse(b, 42)
		if ok != wantOK || (ok && !equalPacket(c.pkt, want)) {
			t.Fatalf("body %d (%x):\n got %+v, %v\nwant %+v, %v", i, b, c.pkt, ok, want, wantOK)
		}
	}
}

func TestParseReadsBodiesLaidOutAlikeAsTheWalkDoes(t *testing.T) {
	a := kernelBody(t, 1, 10, pattern(44))
	b := kernelBody(t, 2, 20, pattern(44))
	longer := kernelBody(t, 3, 30, pattern(128))
	shorter := kernelBody(t, 4, 40, pattern(1))
	empty := kernelBody(t, 5, 50, nil)
	c := newTestConn()
	if !c.parsePacket(a, 0) {
		t.Fatal("the first body was refused")
	}
	for _, next := range [][]byte{b, longer, shorter} {
		if !c.layout.matches(next) {
			t.Fatalf("a body that differs from the last in its values and its payload's length does not match its layout")
		}
	}
	parseEach(t, a, b, longer, shorter, empty, a, longer)
}

func TestParseWalksABodyLaidOutOtherwise(t *testing.T) {
	a := kernelBody(t, 1, 10, pattern(44))
	// Something after the payload, which the walk would read: a second
	// sequence number.
	after := append(kernelBody(t, 2, 20, pattern(44)), 8, 0, nfulaSeq, 0, 0, 0, 0, 9)
	// The payload cut short of its header's length.
	cut := kernelBody(t, 3, 30, pattern(44))
	cut = cut[:len(cut)-8]
	// The timestamp's attribute with another length: not a timestamp.
	odd := kernelBody(t, 4, 40, pattern(44))
	for o := nfgenLen; o < len(odd); {
		l := int(binary.NativeEndian.Uint16(odd[o:]))
		if binary.NativeEndian.Uint16(odd[o+2:]) == nfulaTimestamp {
			binary.NativeEndian.PutUint16(odd[o:], uint16(l-4))
			break
		}
		o += align4(l)
	}
	// No payload, the sequence number last.
	noPayload := testPacket{seq: 7, family: netfilter.ProtoIPv4, hwProto: 0x0800, indev: 2}.encode(t, 0)[nlmsgHdrLen:]
	noPayloadLonger := append(append([]byte{}, noPayload...), 8, 0, nfulaMark, 0, 0, 0, 0, 1)
	c := newTestConn()
	c.parsePacket(a, 0)
	for _, b := range [][]byte{after, cut, odd} {
		if c.layout.matches(b) {
			t.Errorf("body %x matches the layout of %x", b, a)
		}
	}
	parseEach(t, a, after, a, cut, a, odd, a, noPayload, noPayloadLonger, noPayload, noPayload[:len(noPayload)-4], a)
}

// FuzzParseMatchesTheWalk parses two bodies in turn, the second with the
// layout the first left, and checks both against the walk; one body
// seeds many more than maxLayoutAttrs attributes.
func FuzzParseMatchesTheWalk(f *testing.F) {
	a := kernelBody(f, 1, 10, pattern(44))
	f.Add(a, kernelBody(f, 2, 20, pattern(100)))
	f.Add(a, a[:len(a)-3])
	f.Add(testPacket{seq: 1, tsSec: 5, prefix: "x", payload: pattern(60)}.encode(f, 0)[nlmsgHdrLen:],
		testPacket{seq: 3, tsSec: 6, prefix: "y", payload: pattern(60)}.encode(f, 0)[nlmsgHdrLen:])
	many := []byte{2, 0, 0, 0}
	for range 2 * maxLayoutAttrs {
		many = append(many, 8, 0, nfulaSeq, 0, 0, 0, 0, 1)
	}
	f.Add(many, many)
	f.Fuzz(func(t *testing.T, first, second []byte) {
		parseEach(t, first, second, first)
	})
}

// BenchmarkParse parses bodies as the kernel sends them (eleven
// attributes, payloads of two lengths) with the remembered layout, and with
// the walk alone for comparison.
func BenchmarkParse(b *testing.B) {
	bodies := [][]byte{kernelBody(b, 1, 10, pattern(44)), kernelBody(b, 2, 20, pattern(44)), kernelBody(b, 3, 30, pattern(128))}
	b.Run("layout", func(b *testing.B) {
		c := newTestConn()
		for b.Loop() {
			for _, x := range bodies {
				c.parsePacket(x, 1)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(bodies)), "ns/packet")
	})
	b.Run("walk", func(b *testing.B) {
		for b.Loop() {
			for _, x := range bodies {
				walkParse(x, 1)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(bodies)), "ns/packet")
	})
}
