// Package packet defines the packet record: the header fields of one TCP
// packet that connscope keeps, shared by the node agent (which produces
// records from NFLOG) and the classifier (which produces them from capture
// files and consumes them).
//
// A Record never holds payload bytes: only IP and TCP header fields and the
// payload length. Decode fills a Record from a raw IPv4 or IPv6 packet
// header (the IP layer and up, no link layer). This package does no I/O;
// see classifier/capture for capture files and link layers, and agent/ for
// the NFLOG reader.
package packet

import (
	"fmt"
	"net/netip"
)

// Flags are the TCP header flags, with the bit values of the TCP header's
// flags byte.
type Flags uint8

// TCP flag bits as they appear in byte 13 of the TCP header.
const (
	FIN Flags = 1 << iota
	SYN
	RST
	PSH
	ACK
	URG
	ECE
	CWR
)

// Has reports whether all of the bits in f2 are set in f.
func (f Flags) Has(f2 Flags) bool { return f&f2 == f2 }

// String renders the flags the way the paper writes them, e.g. "SYN",
// "PSH+ACK", "RST+ACK".
func (f Flags) String() string {
	names := [...]struct {
		f Flags
		s string
	}{{SYN, "SYN"}, {FIN, "FIN"}, {RST, "RST"}, {PSH, "PSH"}, {ACK, "ACK"}, {URG, "URG"}, {ECE, "ECE"}, {CWR, "CWR"}}
	s := ""
	for _, n := range names {
		if f.Has(n.f) {
			if s != "" {
				s += "+"
			}
			s += n.s
		}
	}
	if s == "" {
		return "none"
	}
	return s
}

// MaxOptions is the number of TCP option kinds a Record keeps, in header
// order. A TCP header has at most 40 bytes of options; more than MaxOptions
// kinds is only possible with padding NOPs, which is why NumOptions may be
// larger than MaxOptions.
const MaxOptions = 12

// Record is one TCP packet as connscope keeps it: headers only.
//
// Addresses are stored in 16-byte form; an IPv4 address is stored
// IPv4-mapped (::ffff:a.b.c.d) and IPVersion says which it is.
type Record struct {
	// Timestamp is the capture time in nanoseconds since the Unix epoch.
	Timestamp int64

	SrcIP, DstIP     [16]byte
	SrcPort, DstPort uint16
	// IPVersion is 4 or 6.
	IPVersion uint8

	Flags  Flags
	Seq    uint32
	Ack    uint32
	Window uint16

	// TTL is the IPv4 TTL or the IPv6 hop limit.
	TTL uint8
	// IPID is the IPv4 identification field (0 for IPv6).
	IPID uint16
	// DF is the IPv4 don't-fragment bit (false for IPv6).
	DF bool

	// PayloadLen is the number of TCP payload bytes the packet carried on
	// the wire (derived from the IP length fields, not from what was
	// captured, so a truncated capture still reports it).
	PayloadLen uint16

	// Options holds the first MaxOptions TCP option kinds, in header order
	// (NOP and EOL included); NumOptions counts all of them, and one more
	// when the capture cut the options short.
	Options    [MaxOptions]uint8
	NumOptions uint8
}

// Src returns the source address.
func (r *Record) Src() netip.Addr { return addr(r.SrcIP, r.IPVersion) }

// Dst returns the destination address.
func (r *Record) Dst() netip.Addr { return addr(r.DstIP, r.IPVersion) }

// SetSrc stores a as the source address and sets IPVersion.
func (r *Record) SetSrc(a netip.Addr) { r.SrcIP, r.IPVersion = store(a) }

// SetDst stores a as the destination address and sets IPVersion.
func (r *Record) SetDst(a netip.Addr) { r.DstIP, r.IPVersion = store(a) }

// OptionKinds returns the option kinds kept, in header order.
func (r *Record) OptionKinds() []uint8 {
	n := int(r.NumOptions)
	if n > MaxOptions {
		n = MaxOptions
	}
	return r.Options[:n]
}

// String is a one-line rendering for logs and test failures.
func (r *Record) String() string {
	return fmt.Sprintf("%d %s:%d > %s:%d %s seq=%d ack=%d win=%d ttl=%d id=%d len=%d",
		r.Timestamp, r.Src(), r.SrcPort, r.Dst(), r.DstPort, r.Flags, r.Seq, r.Ack, r.Window, r.TTL, r.IPID, r.PayloadLen)
}

// IPv4Of returns the IPv4 address held in a 16-byte IPv4-mapped form as a
// uint32 in network order semantics (a.b.c.d -> a<<24|b<<16|c<<8|d).
func IPv4Of(ip [16]byte) uint32 {
	return uint32(ip[12])<<24 | uint32(ip[13])<<16 | uint32(ip[14])<<8 | uint32(ip[15])
}

func addr(ip [16]byte, v uint8) netip.Addr {
	a := netip.AddrFrom16(ip)
	if v == 4 {
		return a.Unmap()
	}
	return a
}

func store(a netip.Addr) ([16]byte, uint8) {
	if a.Is4() || a.Is4In6() {
		return netip.AddrFrom4(a.Unmap().As4()).As16(), 4
	}
	return a.As16(), 6
}
