package nflog

import "encoding/binary"

// layout is where the attributes of an NFULNL_MSG_PACKET body are. The
// kernel builds every message of a group alike for one interface and hook
// (the same attributes, in the same order, of the same lengths, but for the
// packet's bytes, which come last), so the parser remembers the layout of
// the last body it walked attribute by attribute, and reads a body laid
// out the same without that walk.
//
// Walking is a chain of dependent loads (an attribute's length gives the
// next one's place), a dozen per packet as the kernel sends them; checking a
// layout is as many independent loads and comparisons, which the processor
// makes at once. A body matches when each attribute header is where the
// layout has one and reads the same (length and type), except the last when
// it is NFULA_PAYLOAD: its type must be the same and its length may differ,
// as long as nothing follows it. A matching body then has, attribute by
// attribute, what the walk would have found, and fill reads the same values
// from it that the walk would have.
type layout struct {
	n    int                    // attribute headers (0: none that matches)
	off  [maxLayoutAttrs]uint32 // where each header is in the body
	word [maxLayoutAttrs]uint32 // and its first four bytes (length, type)
	// Where fill finds each field: the offset of the attribute's header in
	// the body, or 0 when the body has none of that type with a length the
	// parser accepts (the body's first 4 bytes are the nfgenmsg, so no
	// header is at 0). With repeated attributes, the last one, as the walk
	// keeps the last.
	hdr, mark, ts, indev, outdev, prefix, seq, payload uint32
}

// maxLayoutAttrs is the most attributes a remembered layout holds; a body
// with more is always walked (the kernel sends at most about 15).
const maxLayoutAttrs = 20

// walk reads the attribute headers of body one after the other into l, and
// reports whether the body is malformed (a header whose length is below its
// own size or beyond the body's end: the message is refused). A body of
// more than maxLayoutAttrs attributes is read too, for fill, but not
// remembered (l.n is 0, so no body matches it).
func (l *layout) walk(body []byte) (malformed bool) {
	*l = layout{}
	n := 0
	for o := nfgenLen; len(body)-o >= nlaHdrLen; {
		w := binary.NativeEndian.Uint32(body[o:])
		length := int(binary.NativeEndian.Uint16(body[o:]))
		if length < nlaHdrLen || length > len(body)-o {
			*l = layout{}
			return true
		}
		if n < maxLayoutAttrs {
			l.off[n], l.word[n] = uint32(o), w
		}
		n++
		typ := binary.NativeEndian.Uint16(body[o+2:]) & nlaTypeMask
		// The field this attribute sets, if its length is one the parser
		// accepts for its type.
		var f *uint32
		ok := true
		switch v := length - nlaHdrLen; typ {
		case nfulaPacketHdr:
			f, ok = &l.hdr, v >= 3
		case nfulaMark:
			f, ok = &l.mark, v == 4
		case nfulaTimestamp:
			f, ok = &l.ts, v == 16
		case nfulaIfindexIndev:
			f, ok = &l.indev, v == 4
		case nfulaIfindexOutdev:
			f, ok = &l.outdev, v == 4
		case nfulaPayload:
			f = &l.payload
		case nfulaPrefix:
			f = &l.prefix
		case nfulaSeq:
			f, ok = &l.seq, v == 4
		}
		if f != nil && ok {
			*f = uint32(o)
		}
		o += min(align4(length), len(body)-o)
	}
	if n > maxLayoutAttrs {
		n = 0
	}
	l.n = n
	return false
}

// matches reports whether body is laid out as l (see layout).
func (l *layout) matches(body []byte) bool {
	n := l.n
	if n == 0 {
		return false
	}
	last := int(l.off[n-1])
	if len(body)-last < nlaHdrLen {
		return false
	}
	var diff uint32
	for i := range n - 1 {
		diff |= binary.NativeEndian.Uint32(body[l.off[i]:]) ^ l.word[i]
	}
	// The last attribute: within the body, and nothing after it that the
	// walk would read; the same length and type, or for the payload the
	// same type and any length.
	length := int(binary.NativeEndian.Uint16(body[last:]))
	if length < nlaHdrLen || length > len(body)-last ||
		len(body)-last-min(align4(length), len(body)-last) >= nlaHdrLen {
		return false
	}
	if l.payload != 0 && l.payload == l.off[n-1] {
		return diff == 0 && binary.NativeEndian.Uint16(body[last+2:])&nlaTypeMask == nfulaPayload
	}
	return diff|(binary.NativeEndian.Uint32(body[last:])^l.word[n-1]) == 0
}

// value returns the value of the attribute whose header is at off.
func value(body []byte, off uint32) []byte {
	length := int(binary.NativeEndian.Uint16(body[off:]))
	return body[int(off)+nlaHdrLen : int(off)+length]
}

// fill sets p's fields from body, laid out as l (walked or matched): what
// parsePacket's walk would find. It reports whether the body has a
// sequence number.
func (l *layout) fill(p *Packet, body []byte) bool {
	// The attributes of fixed length were checked by the walk (and are the
	// same in a body that matches): their values are read in place.
	if o := l.hdr; o != 0 {
		p.HWProtocol = binary.BigEndian.Uint16(body[o+4:])
		p.Hook = body[o+6]
	}
	if o := l.mark; o != 0 {
		p.Mark = binary.BigEndian.Uint32(body[o+4:])
	}
	if o := l.ts; o != 0 {
		sec := int64(binary.BigEndian.Uint64(body[o+4:]))
		usec := int64(binary.BigEndian.Uint64(body[o+12:]))
		p.Timestamp = sec*1e9 + usec*1e3
		p.KernelTimestamp = true
	}
	if o := l.indev; o != 0 {
		p.InDev = binary.BigEndian.Uint32(body[o+4:])
	}
	if o := l.outdev; o != 0 {
		p.OutDev = binary.BigEndian.Uint32(body[o+4:])
	}
	if l.payload != 0 {
		p.Payload = value(body, l.payload)
	}
	if l.prefix != 0 {
		v := value(body, l.prefix)
		for i, ch := range v {
			if ch == 0 {
				v = v[:i]
				break
			}
		}
		p.Prefix = v
	}
	if o := l.seq; o != 0 {
		p.Seq = binary.BigEndian.Uint32(body[o+4:])
		return true
	}
	return false
}
