package capture

import "encoding/binary"

// Link types (LINKTYPE_* values of pcap and pcapng files) a Reader strips.
const (
	LinkTypeNull     = 0 // BSD loopback: a 4-byte address family in the capturing host's byte order
	LinkTypeEthernet = 1
	LinkTypeRaw      = 101 // LINKTYPE_RAW
	LinkTypeRaw12    = 12  // DLT_RAW as most platforms number it; libpcap maps it to raw
	LinkTypeRaw14    = 14  // DLT_RAW as OpenBSD numbers it
	LinkTypeIPv4     = 228
	LinkTypeIPv6     = 229
	LinkTypeLinuxSLL = 113
	LinkTypeSLL2     = 276
	LinkTypeNFLOG    = 239
	LinkTypeLoop     = 108 // OpenBSD loopback: the address family in network byte order
	LinkTypePPP      = 9   // PPP (RFC 1661), with or without RFC 1662's address and control bytes
	LinkTypePPPHDLC  = 50  // PPP in HDLC-like framing (RFC 1662), or Cisco HDLC
	LinkTypeCHDLC    = 104 // Cisco HDLC
)

// EtherTypes that matter here.
const (
	etherIPv4   = 0x0800
	etherIPv6   = 0x86dd
	etherVLAN   = 0x8100 // 802.1Q
	etherQinQ   = 0x88a8 // 802.1ad
	etherQinQv1 = 0x9100 // pre-standard QinQ
	etherMPLS   = 0x8847 // MPLS unicast
	etherMPLSm  = 0x8848 // MPLS multicast
	etherPPPoE  = 0x8864 // PPPoE session stage
)

// Results of stripping the link layer.
const (
	linkIP          = iota // the IP packet was found
	linkNotIP              // a valid frame of another network protocol
	linkBad                // the link header is truncated or malformed
	linkUnsupported        // the link type is not one this package strips
)

// network strips the link layer of a frame and returns the IP packet in
// it. For NFLOG frames without a timestamp (*ts == 0) it takes the one in
// the frame.
func (r *Reader) network(linkType uint32, data []byte, ts *int64) ([]byte, int) {
	switch linkType {
	case LinkTypeEthernet:
		if len(data) < 14 {
			return nil, linkBad
		}
		return untagged(binary.BigEndian.Uint16(data[12:14]), data[14:])
	case LinkTypeRaw, LinkTypeRaw12, LinkTypeRaw14:
		if len(data) == 0 {
			return nil, linkBad
		}
		return data, linkIP
	case LinkTypeIPv4:
		return withVersion(data, 4)
	case LinkTypeIPv6:
		return withVersion(data, 6)
	case LinkTypeLinuxSLL:
		if len(data) < 16 {
			return nil, linkBad
		}
		// libpcap puts a VLAN tag the kernel took off back after the
		// SLL header, as in an Ethernet frame.
		return untagged(binary.BigEndian.Uint16(data[14:16]), data[16:])
	case LinkTypeSLL2:
		if len(data) < 20 {
			return nil, linkBad
		}
		return untagged(binary.BigEndian.Uint16(data[0:2]), data[20:])
	case LinkTypeNFLOG:
		return r.nflog(data, ts)
	case LinkTypeNull, LinkTypeLoop:
		return loopback(linkType, data)
	case LinkTypePPP:
		return ppp(data)
	case LinkTypePPPHDLC:
		if isCiscoHDLC(data) {
			return ciscoHDLC(data)
		}
		return ppp(data)
	case LinkTypeCHDLC:
		return ciscoHDLC(data)
	}
	return nil, linkUnsupported
}

// Address families of the 4-byte header of BSD loopback frames. IPv4 is 2
// everywhere; IPv6 differs between the systems that write such files.
const (
	afInet         = 2
	afInet6Linux   = 10
	afInet6BSD     = 24         // NetBSD, OpenBSD, BSD/OS
	afInet6FreeBSD = 28         // FreeBSD, DragonFly BSD
	afInet6Darwin  = 30         // macOS, iOS
	afHighBits     = 0xffff0000 // set only when read in the wrong byte order
)

// loopback strips the 4-byte address family header of LINKTYPE_NULL (as
// macOS and the BSDs capture lo0) and LINKTYPE_LOOP frames. NULL writes
// the family in the byte order of the capturing host, which the file does
// not record; a family is a small number, so a value with any of its high
// 16 bits set was written in the other order (as libpcap and Wireshark
// decide).
func loopback(linkType uint32, data []byte) ([]byte, int) {
	if len(data) < 4 {
		return nil, linkBad
	}
	af := binary.BigEndian.Uint32(data[:4])
	if linkType == LinkTypeNull && af&afHighBits != 0 {
		af = binary.LittleEndian.Uint32(data[:4])
	}
	switch af {
	case afInet:
		return withVersion(data[4:], 4)
	case afInet6Linux, afInet6BSD, afInet6FreeBSD, afInet6Darwin:
		return withVersion(data[4:], 6)
	}
	return nil, linkNotIP
}

// untagged skips the VLAN tags (802.1Q, 802.1ad, pre-standard QinQ) that
// may follow an EtherType et, then finds the IP packet after them, also
// inside a PPPoE session or under MPLS labels.
func untagged(et uint16, data []byte) ([]byte, int) {
	for et == etherVLAN || et == etherQinQ || et == etherQinQv1 {
		if len(data) < 4 {
			return nil, linkBad
		}
		et = binary.BigEndian.Uint16(data[2:4])
		data = data[4:]
	}
	return byEtherType(et, data)
}

func byEtherType(et uint16, ip []byte) ([]byte, int) {
	switch et {
	case etherIPv4:
		return withVersion(ip, 4)
	case etherIPv6:
		return withVersion(ip, 6)
	case etherPPPoE:
		return pppoeSession(ip)
	case etherMPLS, etherMPLSm:
		return mplsPayload(ip)
	}
	return nil, linkNotIP
}

// PPP protocol numbers of IP (RFC 1332, RFC 5072) and MPLS (RFC 3032).
const (
	pppIPv4    = 0x0021
	pppIPv6    = 0x0057
	pppMPLS    = 0x0281
	pppMPLSm   = 0x0283
	pppAddress = 0xff // RFC 1662's all-stations address, then
	pppControl = 0x03 // its unnumbered-information control byte

	pppoeVersionType = 0x11 // PPPoE version 1, type 1
)

// The first byte of a Cisco HDLC frame.
const (
	chdlcUnicast   = 0x0f
	chdlcMulticast = 0x8f
)

// ppp finds the IP packet in a PPP frame (LINKTYPE_PPP, and
// LINKTYPE_PPP_HDLC without octet stuffing): RFC 1662's address and
// control bytes when present, then the protocol, one byte when it is
// compressed (RFC 1661: an odd first byte) and two otherwise.
func ppp(b []byte) ([]byte, int) {
	if len(b) >= 2 && b[0] == pppAddress && b[1] == pppControl {
		b = b[2:]
	}
	if len(b) == 0 {
		return nil, linkBad
	}
	proto := uint16(b[0])
	if b[0]&1 == 1 {
		b = b[1:]
	} else {
		if len(b) < 2 {
			return nil, linkBad
		}
		proto = binary.BigEndian.Uint16(b[:2])
		b = b[2:]
	}
	if proto == pppMPLS || proto == pppMPLSm {
		return mplsPayload(b)
	}
	return pppIP(proto, b)
}

// pppIP returns b, what follows a PPP protocol field, when the protocol is
// IPv4 or IPv6 and the packet's version agrees.
func pppIP(proto uint16, b []byte) ([]byte, int) {
	switch proto {
	case pppIPv4:
		return withVersion(b, 4)
	case pppIPv6:
		return withVersion(b, 6)
	}
	return nil, linkNotIP
}

// ciscoHDLC finds the IP packet in a Cisco HDLC frame: an address byte
// (unicast or multicast), a control byte, then an EtherType.
func ciscoHDLC(b []byte) ([]byte, int) {
	if len(b) < 4 || !isCiscoHDLC(b) {
		return nil, linkBad
	}
	return byEtherType(binary.BigEndian.Uint16(b[2:4]), b[4:])
}

// isCiscoHDLC reports whether b starts with a Cisco HDLC address byte
// (unicast or multicast): how tcpdump tells Cisco HDLC from PPP in
// PPP_HDLC captures.
func isCiscoHDLC(b []byte) bool {
	return len(b) > 0 && (b[0] == chdlcUnicast || b[0] == chdlcMulticast)
}

// pppoeSession finds the IP packet in a PPPoE session frame (RFC 2516, as
// DSL access links carry subscribers' traffic): version and type 1, code
// 0, a session id and a length, then the 2-byte PPP protocol. PPP's own
// control protocols (LCP, IPCP, ...) are not IP.
func pppoeSession(b []byte) ([]byte, int) {
	if len(b) < 8 || b[0] != pppoeVersionType || b[1] != 0 {
		return nil, linkBad
	}
	return pppIP(binary.BigEndian.Uint16(b[6:8]), b[8:])
}

// mplsPayload skips an MPLS label stack (RFC 3032: 4-byte entries, the
// last with the bottom-of-stack bit) and finds the IP packet after it. The
// stack does not say what it carries; as routers and tcpdump do, the first
// nibble after it decides: 4 or 6 is IP, anything else (a pseudowire's
// control word, an Ethernet frame) is not.
func mplsPayload(b []byte) ([]byte, int) {
	for {
		if len(b) < 4 {
			return nil, linkBad
		}
		bottom := b[2]&1 != 0
		b = b[4:]
		if bottom {
			break
		}
	}
	if len(b) == 0 {
		return nil, linkBad
	}
	switch b[0] >> 4 {
	case 4, 6:
		return b, linkIP
	}
	return nil, linkNotIP
}

// withVersion checks that the link layer's protocol and the IP version
// nibble agree.
func withVersion(ip []byte, v byte) ([]byte, int) {
	if len(ip) == 0 || ip[0]>>4 != v {
		return nil, linkBad
	}
	return ip, linkIP
}

// NFLOG TLV types (NFULA_*) the Reader reads.
const (
	nfulaTimestamp = 3
	nfulaPayload   = 9
)

// nflog strips an NFLOG frame (LINKTYPE_NFLOG): a 4-byte header (address
// family, version 0, resource id), then TLVs of a 2-byte length (header
// included, padding excluded) and a 2-byte type, padded to 4 bytes. The
// IP packet is the value of the NFULA_PAYLOAD TLV.
//
// libpcap writes the TLV header in the byte order of the capturing host,
// which the file does not record. The order is found per frame: the one
// in which every TLV in the frame has a length of at least 4 and a type
// between 1 and 255 (ignoring the netlink NESTED and NET_BYTEORDER flag
// bits). In the other order a small type such as 9 reads as 0x0900, so the
// two orders are never both plausible for a frame with a TLV. The order of
// the previous frame is tried first. The last TLV may be cut short by the
// snapshot length.
//
// Timestamp: the record's timestamp is kept; NFULA_TIMESTAMP (8-byte
// seconds and 8-byte microseconds, big-endian) is used only when the
// record has none (timestamp 0, as in a Simple Packet Block). The record
// timestamp is what every other link type uses, so all frames of a file
// share one clock.
func (r *Reader) nflog(data []byte, ts *int64) ([]byte, int) {
	if len(data) < 4 || data[1] != 0 {
		return nil, linkBad
	}
	tlvs := data[4:]
	big := r.nflogBig
	ip, nfts, ok := nflogTLVs(tlvs, big)
	if !ok {
		big = !big
		if ip, nfts, ok = nflogTLVs(tlvs, big); !ok {
			return nil, linkBad
		}
		r.nflogBig = big
	}
	if ip == nil {
		return nil, linkBad
	}
	if *ts == 0 && nfts != 0 {
		*ts = nfts
	}
	if len(ip) == 0 {
		return nil, linkBad
	}
	return ip, linkIP
}

// nflogTLVs walks the TLVs in one byte order and returns the payload, the
// NFULA_TIMESTAMP in nanoseconds (0 if none) and whether the order is
// plausible.
func nflogTLVs(b []byte, big bool) (payload []byte, ts int64, ok bool) {
	for i := 0; i+4 <= len(b); {
		var l, t int
		if big {
			l, t = int(binary.BigEndian.Uint16(b[i:])), int(binary.BigEndian.Uint16(b[i+2:]))
		} else {
			l, t = int(binary.LittleEndian.Uint16(b[i:])), int(binary.LittleEndian.Uint16(b[i+2:]))
		}
		t &= 0x3fff // NLA_F_NESTED, NLA_F_NET_BYTEORDER
		if l < 4 || t == 0 || t > 0xff {
			return nil, 0, false
		}
		end := i + l
		if end > len(b) { // cut by the snapshot length: the last TLV
			end = len(b)
		}
		switch {
		case t == nfulaPayload:
			payload = b[i+4 : end]
		case t == nfulaTimestamp && l >= 20 && i+20 <= len(b):
			sec := binary.BigEndian.Uint64(b[i+4:])
			usec := binary.BigEndian.Uint64(b[i+12:])
			ts = int64(sec)*1e9 + int64(usec)*1e3
		}
		i += (l + 3) &^ 3
	}
	return payload, ts, true
}
