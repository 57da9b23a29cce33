package packet

import "encoding/binary"

// Errors returned by Decode. ErrNotTCP and ErrFragment mean the packet is
// well formed but holds no TCP header to decode: a reader skips it and
// counts it. Every other error says what is wrong with a header and wraps
// ErrTruncated or ErrMalformed.
//
// Decode returns these values unchanged (never a new error value), so a
// call never allocates, also on failure.
var (
	// ErrNotTCP: a valid IP packet of another protocol (UDP, ICMP, ESP,
	// an IPv6 packet with no next header, an unknown extension header).
	ErrNotTCP = &decodeError{msg: "not a TCP packet"}
	// ErrFragment: a non-first IP fragment; it holds no TCP header. It
	// wraps ErrNotTCP, so errors.Is(err, ErrNotTCP) holds for it too.
	ErrFragment = &decodeError{kind: ErrNotTCP, msg: "non-first IP fragment: no TCP header to decode"}
	// ErrTruncated: a header ends before the bytes that were captured do.
	ErrTruncated = &decodeError{msg: "truncated header"}
	// ErrMalformed: a header field holds a value no valid packet has.
	ErrMalformed = &decodeError{msg: "malformed header"}
)

var (
	errEmpty        = &decodeError{kind: ErrTruncated, msg: "empty packet"}
	errVersion      = &decodeError{kind: ErrMalformed, msg: "IP version is neither 4 nor 6"}
	errIPv4Short    = &decodeError{kind: ErrTruncated, msg: "IPv4 header: fewer than 20 bytes captured"}
	errIPv4IHL      = &decodeError{kind: ErrMalformed, msg: "IPv4 header: IHL below 5 (20 bytes)"}
	errIPv4Options  = &decodeError{kind: ErrTruncated, msg: "IPv4 header: options cut short by the capture length"}
	errIPv4Total    = &decodeError{kind: ErrMalformed, msg: "IPv4 header: total length smaller than the IP and TCP headers"}
	errIPv6Short    = &decodeError{kind: ErrTruncated, msg: "IPv6 header: fewer than 40 bytes captured"}
	errIPv6Ext      = &decodeError{kind: ErrTruncated, msg: "IPv6 extension header cut short by the capture length"}
	errIPv6Total    = &decodeError{kind: ErrMalformed, msg: "IPv6 header: payload length smaller than the extension and TCP headers"}
	errTCPShort     = &decodeError{kind: ErrTruncated, msg: "TCP header: fewer than 20 bytes captured"}
	errTCPOffset    = &decodeError{kind: ErrMalformed, msg: "TCP header: data offset below 5 (20 bytes)"}
	errDecodeRecord = &decodeError{kind: ErrMalformed, msg: "nil record"}
)

// decodeError is the type of Decode's errors: a fixed message and the
// sentinel it wraps.
type decodeError struct {
	kind error
	msg  string
}

func (e *decodeError) Error() string { return "packet: " + e.msg }
func (e *decodeError) Unwrap() error { return e.kind }

// IP protocol numbers and IPv6 extension header types that Decode knows.
const (
	protoHopByHop = 0
	protoTCP      = 6
	protoRouting  = 43
	protoFragment = 44
	protoESP      = 50
	protoAH       = 51
	protoNoNext   = 59
	protoDstOpts  = 60
	protoMobility = 135
	protoHIP      = 139
	protoShim6    = 140
)

// Decode decodes a raw IPv4 or IPv6 packet that starts at the IP header
// into rec, which it overwrites whole. ts is the capture time in
// nanoseconds since the Unix epoch and becomes rec.Timestamp.
//
// Only headers are read. ip may end anywhere after the TCP header (a
// headers-only capture): the payload length comes from the IP length
// fields, not from len(ip). Two cases where those fields say nothing are
// handled as Linux produces them: an IPv4 total length of 0 (TSO/GSO,
// BIG TCP) and an IPv6 payload length of 0 (a jumbogram, or BIG TCP
// without the jumbo option) take the length from the Jumbo Payload option
// if there is one, else from len(ip). Payload lengths above 65535 are
// stored as 65535.
//
// IPv4: options are skipped; a non-first fragment returns ErrFragment; a
// first fragment (MF set, offset 0) is decoded and its PayloadLen is that
// of the fragment. IPv6: hop-by-hop, routing, fragment, destination
// options, AH, mobility, HIP and Shim6 headers are skipped; a non-first
// fragment returns ErrFragment; ESP and "no next header" return ErrNotTCP.
//
// TCP options: kinds are walked in header order. EOL ends the walk, NOP
// takes one byte and every other kind takes the length in its second byte.
// An option whose length byte is below 2 or runs past the TCP header is
// recorded by its kind and ends the walk; the packet is kept (the flags
// and numbers the classifier needs are intact, and a middlebox sending bad
// options is itself worth seeing). The fixed 20 bytes of the TCP header
// must be within ip, otherwise ErrTruncated; options cut short by the
// capture's length are kept as far as they go, and NumOptions counts one
// more for the rest (see decodeTCP).
//
// Decode keeps no reference to ip and never allocates.
func Decode(ip []byte, ts int64, rec *Record) error {
	if rec == nil {
		return errDecodeRecord
	}
	*rec = Record{Timestamp: ts}
	if len(ip) == 0 {
		return errEmpty
	}
	switch ip[0] >> 4 {
	case 4:
		return decodeIPv4(ip, rec)
	case 6:
		return decodeIPv6(ip, rec)
	}
	return errVersion
}

func decodeIPv4(ip []byte, rec *Record) error {
	if len(ip) < 20 {
		return errIPv4Short
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 {
		return errIPv4IHL
	}
	if len(ip) < ihl {
		return errIPv4Options
	}
	frag := binary.BigEndian.Uint16(ip[6:8])
	if ip[9] != protoTCP {
		return ErrNotTCP
	}
	if frag&0x1fff != 0 {
		return ErrFragment
	}
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if total == 0 {
		total = len(ip)
	}
	rec.IPVersion = 4
	putV4Mapped(&rec.SrcIP, ip[12:16])
	putV4Mapped(&rec.DstIP, ip[16:20])
	rec.TTL = ip[8]
	rec.IPID = binary.BigEndian.Uint16(ip[4:6])
	rec.DF = frag&0x4000 != 0
	thl, err := decodeTCP(ip[ihl:], rec)
	if err != nil {
		return err
	}
	payload := total - ihl - thl
	if payload < 0 {
		return errIPv4Total
	}
	rec.PayloadLen = clampLen(payload)
	return nil
}

func decodeIPv6(ip []byte, rec *Record) error {
	if len(ip) < 40 {
		return errIPv6Short
	}
	total := int(binary.BigEndian.Uint16(ip[4:6])) // bytes after the fixed header
	jumbo := total == 0
	next := ip[6]
	off := 40
	for next != protoTCP {
		var hlen int
		switch next {
		case protoHopByHop, protoRouting, protoDstOpts, protoMobility, protoHIP, protoShim6:
			if len(ip) < off+2 {
				return errIPv6Ext
			}
			hlen = (int(ip[off+1]) + 1) * 8
		case protoFragment:
			if len(ip) < off+8 {
				return errIPv6Ext
			}
			if binary.BigEndian.Uint16(ip[off+2:off+4])>>3 != 0 {
				return ErrFragment
			}
			hlen = 8
		case protoAH:
			if len(ip) < off+2 {
				return errIPv6Ext
			}
			hlen = (int(ip[off+1]) + 2) * 4
		default: // ESP, no next header, UDP, ICMPv6, unknown
			return ErrNotTCP
		}
		if len(ip) < off+hlen {
			return errIPv6Ext
		}
		if jumbo && next == protoHopByHop {
			if n, ok := jumboLength(ip[off+2 : off+hlen]); ok {
				total = n
				jumbo = false
			}
		}
		next = ip[off]
		off += hlen
	}
	if jumbo {
		total = len(ip) - 40
	}
	rec.IPVersion = 6
	copy(rec.SrcIP[:], ip[8:24])
	copy(rec.DstIP[:], ip[24:40])
	rec.TTL = ip[7]
	thl, err := decodeTCP(ip[off:], rec)
	if err != nil {
		return err
	}
	payload := total - (off - 40) - thl
	if payload < 0 {
		return errIPv6Total
	}
	rec.PayloadLen = clampLen(payload)
	return nil
}

// jumboLength finds the Jumbo Payload option (type 0xC2, RFC 2675) in the
// options of a hop-by-hop header.
func jumboLength(opts []byte) (int, bool) {
	for i := 0; i < len(opts); {
		t := opts[i]
		if t == 0 { // Pad1
			i++
			continue
		}
		if i+2 > len(opts) {
			return 0, false
		}
		l := int(opts[i+1])
		if t == 0xc2 && l == 4 && i+6 <= len(opts) {
			return int(binary.BigEndian.Uint32(opts[i+2 : i+6])), true
		}
		i += 2 + l
	}
	return 0, false
}

// decodeTCP fills the TCP fields of rec from tcp and returns the TCP header
// length in bytes. Options cut short by the capture length (a short
// snapshot length: tcpdump's old 68 bytes cut a SYN's options) do not make
// the packet undecodable, as every field but the option list is in the
// fixed 20 bytes: the kinds seen are kept, and NumOptions counts one more
// for the unseen rest (its slot in Options holds 0), so that a cut list is
// never taken for a whole one (nmap's lone MSS).
func decodeTCP(tcp []byte, rec *Record) (int, error) {
	if len(tcp) < 20 {
		return 0, errTCPShort
	}
	thl := int(tcp[12]>>4) * 4
	if thl < 20 {
		return 0, errTCPOffset
	}
	cut := len(tcp) < thl
	rec.SrcPort = binary.BigEndian.Uint16(tcp[0:2])
	rec.DstPort = binary.BigEndian.Uint16(tcp[2:4])
	rec.Seq = binary.BigEndian.Uint32(tcp[4:8])
	rec.Ack = binary.BigEndian.Uint32(tcp[8:12])
	rec.Flags = Flags(tcp[13])
	rec.Window = binary.BigEndian.Uint16(tcp[14:16])
	opts := tcp[20:min(thl, len(tcp))]
	n := 0
	for i := 0; i < len(opts); {
		kind := opts[i]
		if n < MaxOptions {
			rec.Options[n] = kind
		}
		n++
		if kind == 0 { // EOL
			break
		}
		if kind == 1 { // NOP
			i++
			continue
		}
		if i+1 >= len(opts) {
			break
		}
		l := int(opts[i+1])
		if l < 2 || i+l > len(opts) {
			break // malformed length: keep the kind, stop walking
		}
		i += l
	}
	if cut {
		n++
	}
	rec.NumOptions = uint8(n) // at most 40 kinds fit in 40 bytes, and cut ones in fewer
	return thl, nil
}

// putV4Mapped stores the IPv4-mapped IPv6 form of the 4 bytes of b
// (::ffff:a.b.c.d) in dst, in three word stores. (Building the array byte
// by byte and copying it, as a composite literal compiles, makes the CPU
// wait twice per packet for narrow stores to forward to one wide load.)
func putV4Mapped(dst *[16]byte, b []byte) {
	binary.LittleEndian.PutUint64(dst[0:8], 0)
	binary.LittleEndian.PutUint32(dst[8:12], 0xffff0000) // 0, 0, 0xff, 0xff
	binary.LittleEndian.PutUint32(dst[12:16], binary.LittleEndian.Uint32(b[:4]))
}

func clampLen(n int) uint16 {
	if n > 0xffff {
		return 0xffff
	}
	return uint16(n)
}
