package ingestpb

import (
	"fmt"

	"github.com/connscope/connscope/packet"
)

// FromRecord fills p from r, reusing the byte slices p already holds so
// that a sender which keeps its Packet messages between batches does not
// allocate. An IPv4 record (IPVersion 4) gets 4-byte addresses, any other
// record 16-byte ones. Only the option kinds a record keeps are copied.
func FromRecord(p *Packet, r *packet.Record) {
	p.TimestampNs = r.Timestamp
	if r.IPVersion == 4 {
		p.SrcIp = append(p.SrcIp[:0], r.SrcIP[12:16]...)
		p.DstIp = append(p.DstIp[:0], r.DstIP[12:16]...)
	} else {
		p.SrcIp = append(p.SrcIp[:0], r.SrcIP[:]...)
		p.DstIp = append(p.DstIp[:0], r.DstIP[:]...)
	}
	p.SrcPort = uint32(r.SrcPort)
	p.DstPort = uint32(r.DstPort)
	p.Flags = uint32(r.Flags)
	p.Seq = r.Seq
	p.Ack = r.Ack
	p.Window = uint32(r.Window)
	p.Ttl = uint32(r.TTL)
	p.IpId = uint32(r.IPID)
	p.Df = r.DF
	p.PayloadLen = uint32(r.PayloadLen)
	p.OptionKinds = append(p.OptionKinds[:0], r.OptionKinds()...)
	p.NumOptions = uint32(r.NumOptions)
}

// ToRecord fills r from p. It returns an error, and leaves r in an
// unspecified state, when p does not describe a record: addresses that
// are not both 4 or both 16 bytes, a field out of its header field's
// range, or a number of option kinds other than min(num_options,
// packet.MaxOptions).
func ToRecord(r *packet.Record, p *Packet) error {
	var w wirePacket
	w.fromMessage(p)
	return w.record(r)
}

func field16(name string, v uint32, err error) (uint16, error) {
	if err == nil && v > 0xffff {
		err = fmt.Errorf("packet %s %d does not fit 16 bits", name, v)
	}
	return uint16(v), err
}

func field8(name string, v uint32, err error) (uint8, error) {
	if err == nil && v > 0xff {
		err = fmt.Errorf("packet %s %d does not fit 8 bits", name, v)
	}
	return uint8(v), err
}

// AppendPackets appends one Packet per record to dst and returns the
// extended slice. Messages already allocated in dst's spare capacity
// (dst[len(dst):cap(dst)], left there by an earlier call on a slice that
// was then cut to length 0) are reused with their byte slices, so a sender
// that keeps one slice allocates only while it grows.
func AppendPackets(dst []*Packet, recs []packet.Record) []*Packet {
	for i := range recs {
		n := len(dst)
		if n < cap(dst) {
			dst = dst[:n+1]
			if dst[n] == nil {
				dst[n] = new(Packet)
			}
		} else {
			dst = append(dst, new(Packet))
		}
		FromRecord(dst[n], &recs[i])
	}
	return dst
}

// AppendRecords appends the record of each packet to dst and returns the
// extended slice. It stops at the first packet that is not a valid record
// and returns an error naming its index, with dst extended by the packets
// before it.
func AppendRecords(dst []packet.Record, pkts []*Packet) ([]packet.Record, error) {
	dst = growRecords(dst, len(pkts))
	for i, p := range pkts {
		dst = dst[:len(dst)+1]
		if err := ToRecord(&dst[len(dst)-1], p); err != nil {
			return dst[:len(dst)-1], fmt.Errorf("packet %d: %w", i, err)
		}
	}
	return dst, nil
}

func growRecords(dst []packet.Record, n int) []packet.Record {
	if cap(dst)-len(dst) >= n {
		return dst
	}
	grown := make([]packet.Record, len(dst), len(dst)+n)
	copy(grown, dst)
	return grown
}
