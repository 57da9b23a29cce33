package chclient

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/connscope/connscope/packet"
)

// Buckets is the number of hash buckets connections are spread over
// (Bucket). Classifier replicas own sets of buckets; the number is part of
// the schema: changing it would move connections between shards.
const Buckets = 4096

// PacketColumns are the columns of a packet row, in RowBinary order, as
// the packets table (and the classifier's carry table) hold them.
const PacketColumns = "day, ts, bucket, agent, batch, idx, node, policy, src_ip, dst_ip, src_port, dst_port, " +
	"ip_version, flags, seq, ack, tcp_window, ttl, ip_id, df, payload_len, options, num_options"

// Row is one packet row: the record, who shipped it, and where it sits in
// the agent's stream. (Agent, Batch, Idx) name a row uniquely, so that a
// batch inserted twice (the insert succeeded, its answer was lost, the
// agent sent it again) is read once.
type Row struct {
	Rec packet.Record
	// Node and Policy are those of the agent that shipped the record.
	Node, Policy string
	// Agent is the shipping agent's random instance number, Batch the
	// batch's sequence number in that agent, Idx the row in the batch.
	Agent, Batch uint64
	Idx          uint32
}

// Bucket returns the hash bucket of the connection a record belongs to:
// a hash of its two endpoints taken in a fixed order, so that both
// directions of a connection land in the same bucket.
func Bucket(r *packet.Record) uint16 {
	a, b := endpoint(r.SrcIP, r.SrcPort), endpoint(r.DstIP, r.DstPort)
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	// FNV-1a, 64 bits.
	h := uint64(14695981039346656037)
	for _, c := range a {
		h = (h ^ uint64(c)) * 1099511628211
	}
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	h ^= h >> 29
	return uint16(h % Buckets)
}

func endpoint(ip [16]byte, port uint16) [18]byte {
	var e [18]byte
	copy(e[:], ip[:])
	binary.BigEndian.PutUint16(e[16:], port)
	return e
}

// Day returns the ClickHouse Date (days since 1970-01-01, UTC) of a time
// in ns since the epoch; times before 1970 are day 0.
func Day(ns int64) uint16 {
	if ns <= 0 {
		return 0
	}
	d := ns / (86400 * 1e9)
	if d > math.MaxUint16 {
		return math.MaxUint16
	}
	return uint16(d)
}

// AppendRow appends row in RowBinary, in PacketColumns order.
func AppendRow(b []byte, row *Row) []byte {
	r := &row.Rec
	b = binary.LittleEndian.AppendUint16(b, Day(r.Timestamp))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Timestamp))
	b = binary.LittleEndian.AppendUint16(b, Bucket(r))
	b = binary.LittleEndian.AppendUint64(b, row.Agent)
	b = binary.LittleEndian.AppendUint64(b, row.Batch)
	b = binary.LittleEndian.AppendUint32(b, row.Idx)
	b = appendString(b, row.Node)
	b = appendString(b, row.Policy)
	b = append(b, r.SrcIP[:]...)
	b = append(b, r.DstIP[:]...)
	b = binary.LittleEndian.AppendUint16(b, r.SrcPort)
	b = binary.LittleEndian.AppendUint16(b, r.DstPort)
	b = append(b, r.IPVersion, byte(r.Flags))
	b = binary.LittleEndian.AppendUint32(b, r.Seq)
	b = binary.LittleEndian.AppendUint32(b, r.Ack)
	b = binary.LittleEndian.AppendUint16(b, r.Window)
	b = append(b, r.TTL)
	b = binary.LittleEndian.AppendUint16(b, r.IPID)
	df := byte(0)
	if r.DF {
		df = 1
	}
	b = append(b, df)
	b = binary.LittleEndian.AppendUint16(b, r.PayloadLen)
	b = append(b, r.Options[:]...)
	return append(b, r.NumOptions)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// RowReader decodes RowBinary packet rows (PacketColumns order, possibly
// after leading columns the caller reads itself).
type RowReader struct {
	r *bufio.Reader
	// names interns node and policy names: they repeat on every row.
	names map[string]string
	buf   [96]byte
}

// NewRowReader reads rows from r.
func NewRowReader(r io.Reader) *RowReader {
	return &RowReader{r: bufio.NewReaderSize(r, 256<<10), names: map[string]string{}}
}

// ErrShortRow is returned when the input ends inside a row.
var ErrShortRow = errors.New("ClickHouse RowBinary: input ends inside a row")

// Next reads the next row into row; io.EOF at a clean end.
func (rr *RowReader) Next(row *Row) error {
	// Fixed part up to node.
	const head = 2 + 8 + 2 + 8 + 8 + 4
	if _, err := io.ReadFull(rr.r, rr.buf[:head]); err != nil {
		if err == io.EOF {
			return io.EOF
		}
		return ErrShortRow
	}
	b := rr.buf[:head]
	r := &row.Rec
	r.Timestamp = int64(binary.LittleEndian.Uint64(b[2:]))
	row.Agent = binary.LittleEndian.Uint64(b[12:])
	row.Batch = binary.LittleEndian.Uint64(b[20:])
	row.Idx = binary.LittleEndian.Uint32(b[28:])
	var err error
	if row.Node, err = rr.str(); err != nil {
		return err
	}
	if row.Policy, err = rr.str(); err != nil {
		return err
	}
	const tail = 16 + 16 + 2 + 2 + 1 + 1 + 4 + 4 + 2 + 1 + 2 + 1 + 2 + packet.MaxOptions + 1
	if _, err := io.ReadFull(rr.r, rr.buf[:tail]); err != nil {
		return ErrShortRow
	}
	b = rr.buf[:tail]
	copy(r.SrcIP[:], b[0:16])
	copy(r.DstIP[:], b[16:32])
	r.SrcPort = binary.LittleEndian.Uint16(b[32:])
	r.DstPort = binary.LittleEndian.Uint16(b[34:])
	r.IPVersion, r.Flags = b[36], packet.Flags(b[37])
	r.Seq = binary.LittleEndian.Uint32(b[38:])
	r.Ack = binary.LittleEndian.Uint32(b[42:])
	r.Window = binary.LittleEndian.Uint16(b[46:])
	r.TTL = b[48]
	r.IPID = binary.LittleEndian.Uint16(b[49:])
	r.DF = b[51] != 0
	r.PayloadLen = binary.LittleEndian.Uint16(b[52:])
	copy(r.Options[:], b[54:54+packet.MaxOptions])
	r.NumOptions = b[54+packet.MaxOptions]
	return nil
}

// Reader returns the underlying buffered reader, for columns read before
// the packet columns.
func (rr *RowReader) Reader() *bufio.Reader { return rr.r }

func (rr *RowReader) str() (string, error) {
	n, err := binary.ReadUvarint(rr.r)
	if err != nil {
		return "", ErrShortRow
	}
	if n > 1<<20 {
		return "", fmt.Errorf("ClickHouse RowBinary: a string of %d bytes in a packet row", n)
	}
	var b []byte
	if n <= uint64(len(rr.buf)) {
		b = rr.buf[:n]
	} else {
		b = make([]byte, n)
	}
	if _, err := io.ReadFull(rr.r, b); err != nil {
		return "", ErrShortRow
	}
	if s, ok := rr.names[string(b)]; ok {
		return s, nil
	}
	s := string(b)
	if len(rr.names) < 4096 {
		rr.names[s] = s
	}
	return s, nil
}
