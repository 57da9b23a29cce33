package ingestpb

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/connscope/connscope/packet"
)

// This file reads and writes PacketBatch's wire encoding directly, for the
// two hot paths: the classifier decodes each received batch into records
// without a Packet message (and three byte slices) per packet, and keeps
// the bytes as they came for its journal; the agent encodes its records
// without building messages. Both follow the protobuf encoding rules that
// proto.Unmarshal does (any field order, a repeated scalar's last value
// wins, unknown fields and fields of an unexpected wire type skipped), and
// DecodeFrame accepts and refuses what proto.Unmarshal followed by
// AppendRecords does (FuzzDecodeFrame compares them).

// Frame is a PacketBatch read from its wire encoding: its fields, and its
// packets as records.
type Frame struct {
	Node, Policy, AgentInstance string
	Sequence                    uint64
	// HasCounters says whether the batch carried counters.
	HasCounters bool
	Counters    Counters
	Records     []packet.Record
}

// Counters are AgentCounters' fields.
type Counters struct {
	PacketsLogged, PacketsLostKernel, ReceiveOverflows, PacketsDroppedQueueFull, ReadErrors uint64
}

// PacketBatch field numbers.
const (
	batchNode          = 1
	batchPolicy        = 2
	batchAgentInstance = 3
	batchSequence      = 4
	batchPackets       = 5
	batchCounters      = 6
)

var errTruncated = errors.New("truncated or malformed protobuf")

// consumeTag is protowire.ConsumeTag, which refuses field number 0, also
// refusing numbers above protowire.MaxValidNumber (2^29-1), as
// proto.Unmarshal does: a decoder that skipped such a field as unknown
// would accept bytes that the generated code rejects.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	num, typ, n := protowire.ConsumeTag(b)
	if n >= 0 && num > protowire.MaxValidNumber {
		return 0, 0, -1
	}
	return num, typ, n
}

// DecodeFrame decodes b, the wire encoding of a PacketBatch, into f,
// reusing the storage of f.Records. It returns an error when b is not a
// PacketBatch, or when a packet is not a record (the error names its
// index, as AppendRecords does); f is then in an unspecified state. f
// keeps no reference to b.
func DecodeFrame(f *Frame, b []byte) error {
	recs := f.Records[:0]
	*f = Frame{}
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		switch {
		case num == batchPackets && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			var w wirePacket
			if err := w.decode(v); err != nil {
				return err
			}
			recs = append(recs, packet.Record{})
			if err := w.record(&recs[len(recs)-1]); err != nil {
				return fmt.Errorf("packet %d: %w", len(recs)-1, err)
			}
		case (num == batchNode || num == batchPolicy || num == batchAgentInstance) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			if !utf8.Valid(v) {
				return errors.New("a string field is not valid UTF-8")
			}
			switch num {
			case batchNode:
				f.Node = string(v)
			case batchPolicy:
				f.Policy = string(v)
			default:
				f.AgentInstance = string(v)
			}
		case num == batchSequence && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			f.Sequence = v
		case num == batchCounters && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			f.HasCounters = true
			if err := decodeCounters(&f.Counters, v); err != nil {
				return err
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
		}
	}
	f.Records = recs
	return nil
}

// decodeCounters merges an AgentCounters encoding into c.
func decodeCounters(c *Counters, b []byte) error {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		if typ != protowire.VarintType || num < 1 || num > 5 {
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		switch num {
		case 1:
			c.PacketsLogged = v
		case 2:
			c.PacketsLostKernel = v
		case 3:
			c.ReceiveOverflows = v
		case 4:
			c.PacketsDroppedQueueFull = v
		case 5:
			c.ReadErrors = v
		}
	}
	return nil
}

// wirePacket holds a Packet's fields as the wire gives them; the byte
// slices alias the encoding.
type wirePacket struct {
	timestamp                                  int64
	src, dst, options                          []byte
	srcPort, dstPort, flags, window, ttl, ipID uint32
	payloadLen, numOptions                     uint32
	seq, ack                                   uint32
	df                                         bool
}

// decode reads a Packet's encoding.
func (w *wirePacket) decode(b []byte) error {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			switch num {
			case 4:
				w.srcPort = uint32(v)
			case 5:
				w.dstPort = uint32(v)
			case 6:
				w.flags = uint32(v)
			case 9:
				w.window = uint32(v)
			case 10:
				w.ttl = uint32(v)
			case 11:
				w.ipID = uint32(v)
			case 12:
				w.df = v != 0
			case 13:
				w.payloadLen = uint32(v)
			case 15:
				w.numOptions = uint32(v)
			}
			continue
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			switch num {
			case 2:
				w.src = v
			case 3:
				w.dst = v
			case 14:
				w.options = v
			}
			continue
		case protowire.Fixed32Type:
			v, n := protowire.ConsumeFixed32(b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			switch num {
			case 7:
				w.seq = v
			case 8:
				w.ack = v
			}
			continue
		case protowire.Fixed64Type:
			v, n := protowire.ConsumeFixed64(b)
			if n < 0 {
				return errTruncated
			}
			b = b[n:]
			if num == 1 {
				w.timestamp = int64(v)
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
	}
	return nil
}

// fromMessage takes a Packet message's fields.
func (w *wirePacket) fromMessage(p *Packet) {
	*w = wirePacket{
		timestamp: p.TimestampNs, src: p.SrcIp, dst: p.DstIp, options: p.OptionKinds,
		srcPort: p.SrcPort, dstPort: p.DstPort, flags: p.Flags, window: p.Window, ttl: p.Ttl, ipID: p.IpId,
		payloadLen: p.PayloadLen, numOptions: p.NumOptions, seq: p.Seq, ack: p.Ack, df: p.Df,
	}
}

// record fills r from w, or says why w is not a record (ToRecord).
func (w *wirePacket) record(r *packet.Record) error {
	*r = packet.Record{
		Timestamp: w.timestamp,
		Seq:       w.seq,
		Ack:       w.ack,
		DF:        w.df,
	}
	switch {
	case len(w.src) == 4 && len(w.dst) == 4:
		r.IPVersion = 4
		r.SrcIP[10], r.SrcIP[11] = 0xff, 0xff
		r.DstIP[10], r.DstIP[11] = 0xff, 0xff
		copy(r.SrcIP[12:], w.src)
		copy(r.DstIP[12:], w.dst)
	case len(w.src) == 16 && len(w.dst) == 16:
		r.IPVersion = 6
		copy(r.SrcIP[:], w.src)
		copy(r.DstIP[:], w.dst)
	default:
		return fmt.Errorf("packet addresses of %d and %d bytes: want both 4 (IPv4) or both 16 (IPv6)", len(w.src), len(w.dst))
	}
	var err error
	r.SrcPort, err = field16("src_port", w.srcPort, err)
	r.DstPort, err = field16("dst_port", w.dstPort, err)
	r.Window, err = field16("window", w.window, err)
	r.IPID, err = field16("ip_id", w.ipID, err)
	r.PayloadLen, err = field16("payload_len", w.payloadLen, err)
	var flags, ttl uint8
	flags, err = field8("flags", w.flags, err)
	ttl, err = field8("ttl", w.ttl, err)
	r.NumOptions, err = field8("num_options", w.numOptions, err)
	if err != nil {
		return err
	}
	r.Flags, r.TTL = packet.Flags(flags), ttl
	if want := min(int(w.numOptions), packet.MaxOptions); len(w.options) != want {
		return fmt.Errorf("packet has %d option kinds and num_options %d: want %d kinds (the first %d are kept)",
			len(w.options), w.numOptions, want, packet.MaxOptions)
	}
	copy(r.Options[:], w.options)
	return nil
}

// AppendBatch appends the wire encoding of a PacketBatch holding recs and
// the other fields of f (f.Records is not read) to dst. Decoded with
// proto.Unmarshal, it gives the message that AppendPackets of recs and
// f's fields give.
func AppendBatch(dst []byte, f *Frame, recs []packet.Record) []byte {
	dst = appendString(dst, batchNode, f.Node)
	dst = appendString(dst, batchPolicy, f.Policy)
	dst = appendString(dst, batchAgentInstance, f.AgentInstance)
	if f.Sequence != 0 {
		dst = protowire.AppendTag(dst, batchSequence, protowire.VarintType)
		dst = protowire.AppendVarint(dst, f.Sequence)
	}
	for i := range recs {
		dst = protowire.AppendTag(dst, batchPackets, protowire.BytesType)
		// A packet's encoding is at most 100 bytes (every field at its
		// widest), so its length takes one byte.
		at := len(dst)
		dst = append(dst, 0)
		dst = appendPacket(dst, &recs[i])
		dst[at] = byte(len(dst) - at - 1)
	}
	if f.HasCounters {
		c := &f.Counters
		var body [5 * 11]byte
		b := body[:0]
		for i, v := range [...]uint64{c.PacketsLogged, c.PacketsLostKernel, c.ReceiveOverflows, c.PacketsDroppedQueueFull, c.ReadErrors} {
			if v != 0 {
				b = protowire.AppendTag(b, protowire.Number(i+1), protowire.VarintType)
				b = protowire.AppendVarint(b, v)
			}
		}
		dst = protowire.AppendTag(dst, batchCounters, protowire.BytesType)
		dst = protowire.AppendBytes(dst, b)
	}
	return dst
}

func appendString(dst []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	return protowire.AppendString(dst, s)
}

// appendPacket appends the Packet encoding of r (as FromRecord and
// proto.Marshal give it: proto3 leaves zero fields out).
func appendPacket(dst []byte, r *packet.Record) []byte {
	if r.Timestamp != 0 {
		dst = protowire.AppendTag(dst, 1, protowire.Fixed64Type)
		dst = protowire.AppendFixed64(dst, uint64(r.Timestamp))
	}
	src, dst6 := r.SrcIP[:], r.DstIP[:]
	if r.IPVersion == 4 {
		src, dst6 = r.SrcIP[12:16], r.DstIP[12:16]
	}
	dst = protowire.AppendTag(dst, 2, protowire.BytesType)
	dst = protowire.AppendBytes(dst, src)
	dst = protowire.AppendTag(dst, 3, protowire.BytesType)
	dst = protowire.AppendBytes(dst, dst6)
	dst = appendUint(dst, 4, uint64(r.SrcPort))
	dst = appendUint(dst, 5, uint64(r.DstPort))
	dst = appendUint(dst, 6, uint64(r.Flags))
	if r.Seq != 0 {
		dst = protowire.AppendTag(dst, 7, protowire.Fixed32Type)
		dst = protowire.AppendFixed32(dst, r.Seq)
	}
	if r.Ack != 0 {
		dst = protowire.AppendTag(dst, 8, protowire.Fixed32Type)
		dst = protowire.AppendFixed32(dst, r.Ack)
	}
	dst = appendUint(dst, 9, uint64(r.Window))
	dst = appendUint(dst, 10, uint64(r.TTL))
	dst = appendUint(dst, 11, uint64(r.IPID))
	if r.DF {
		dst = protowire.AppendTag(dst, 12, protowire.VarintType)
		dst = append(dst, 1)
	}
	dst = appendUint(dst, 13, uint64(r.PayloadLen))
	if opts := r.OptionKinds(); len(opts) > 0 {
		dst = protowire.AppendTag(dst, 14, protowire.BytesType)
		dst = protowire.AppendBytes(dst, opts)
	}
	return appendUint(dst, 15, uint64(r.NumOptions))
}

func appendUint(dst []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.VarintType)
	return protowire.AppendVarint(dst, v)
}
