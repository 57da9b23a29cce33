package capture

import (
	"encoding/binary"

	"github.com/connscope/connscope/packet"
)

// BuildPacket turns a record back into a raw IPv4 or IPv6 packet: an IP
// header without options or extension headers and a TCP header with the
// record's options. It emits no payload bytes, but the IP length field
// claims rec.PayloadLen of them, as a headers-only capture (a snapshot or
// NFLOG copy range) records a packet. Decoding the result with
// packet.Decode gives rec back (see AppendPacket for the exceptions).
func BuildPacket(rec *packet.Record) []byte {
	return AppendPacket(nil, rec)
}

// AppendPacket is BuildPacket appending to dst, for writers of many
// packets that reuse one buffer.
//
// Options are reproduced from their kinds with plausible lengths: MSS 4,
// window scale 3, SACK permitted 2, timestamps 10, NOP and EOL 1, every
// other kind 2. Kinds beyond the MaxOptions a record keeps are written as
// NOPs, so NumOptions is kept. The option bytes are padded to a multiple
// of 4 with zero bytes, which decode as EOL: a record whose options do not
// end on a 4-byte boundary (real stacks align them with NOPs) comes back
// with one more EOL kind, and kinds after an EOL are not seen by a
// decoder. Options are cut at 40 bytes, and an IP length
// that the payload length would overflow is stored as 65535.
func AppendPacket(dst []byte, rec *packet.Record) []byte {
	var opts [40]byte
	n := 0
	for i := 0; i < int(rec.NumOptions); i++ {
		kind := uint8(1) // NOP for kinds the record did not keep
		if i < packet.MaxOptions {
			kind = rec.Options[i]
		}
		l := 2
		switch kind {
		case 0, 1:
			l = 1
		case 2:
			l = 4
		case 3:
			l = 3
		case 8:
			l = 10
		}
		if n+l > len(opts) {
			break
		}
		opts[n] = kind
		if l > 1 {
			opts[n+1] = byte(l)
		}
		if kind == 2 { // a plausible MSS
			binary.BigEndian.PutUint16(opts[n+2:], 1460)
		}
		n += l
	}
	thl := 20 + (n+3)&^3

	start := len(dst)
	ipl := 20
	if rec.IPVersion == 6 {
		ipl = 40
	}
	dst = append(dst, make([]byte, ipl+thl)...) // zeroed, without a copy
	b := dst[start:]
	be := binary.BigEndian
	if rec.IPVersion == 6 {
		b[0] = 0x60
		be.PutUint16(b[4:6], clamp16(thl+int(rec.PayloadLen)))
		b[6] = 6 // TCP
		b[7] = rec.TTL
		copy(b[8:24], rec.SrcIP[:])
		copy(b[24:40], rec.DstIP[:])
	} else {
		total := clamp16(20 + thl + int(rec.PayloadLen))
		var flags uint16
		if rec.DF {
			flags = 0x4000
		}
		b[0] = 0x45
		be.PutUint16(b[2:4], total)
		be.PutUint16(b[4:6], rec.IPID)
		be.PutUint16(b[6:8], flags)
		b[8] = rec.TTL
		b[9] = 6 // TCP
		copy(b[12:16], rec.SrcIP[12:16])
		copy(b[16:20], rec.DstIP[12:16])
		// The checksum of the words just written, summed from the record
		// rather than read back from b (which stalls on the stores).
		sum := 0x4500 + uint32(total) + uint32(rec.IPID) + uint32(flags) + (uint32(rec.TTL)<<8 | 6) +
			uint32(be.Uint16(rec.SrcIP[12:14])) + uint32(be.Uint16(rec.SrcIP[14:16])) +
			uint32(be.Uint16(rec.DstIP[12:14])) + uint32(be.Uint16(rec.DstIP[14:16]))
		be.PutUint16(b[10:12], foldChecksum(sum))
	}
	t := b[ipl:]
	be.PutUint16(t[0:2], rec.SrcPort)
	be.PutUint16(t[2:4], rec.DstPort)
	be.PutUint32(t[4:8], rec.Seq)
	be.PutUint32(t[8:12], rec.Ack)
	t[12] = byte(thl/4) << 4
	t[13] = byte(rec.Flags)
	be.PutUint16(t[14:16], rec.Window)
	copy(t[20:], opts[:n])
	// The TCP checksum stays 0: it covers payload bytes that are not there.
	return dst
}

func clamp16(n int) uint16 {
	if n > 0xffff {
		return 0xffff
	}
	return uint16(n)
}

// ipv4Checksum is the Internet checksum of an IPv4 header h whose checksum
// field is zero (or, when it is filled in, 0 for a valid header).
func ipv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	return foldChecksum(sum)
}

// foldChecksum folds a sum of 16-bit words into their one's complement
// sum and returns its complement.
func foldChecksum(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
