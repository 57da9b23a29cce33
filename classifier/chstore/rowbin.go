package chstore

import (
	"encoding/binary"
	"time"

	"github.com/connscope/connscope/internal/chclient"
)

// rowbin appends RowBinary values.
type rowbin []byte

func (b *rowbin) u8(v uint8)   { *b = append(*b, v) }
func (b *rowbin) u16(v uint16) { *b = binary.LittleEndian.AppendUint16(*b, v) }
func (b *rowbin) u32(v uint32) { *b = binary.LittleEndian.AppendUint32(*b, v) }
func (b *rowbin) u64(v uint64) { *b = binary.LittleEndian.AppendUint64(*b, v) }
func (b *rowbin) i64(v int64)  { *b = binary.LittleEndian.AppendUint64(*b, uint64(v)) }
func (b *rowbin) day(ns int64) { b.u16(chclient.Day(ns)) }
func (b *rowbin) str(s string) {
	*b = binary.AppendUvarint(*b, uint64(len(s)))
	*b = append(*b, s...)
}
func (b *rowbin) strs(ss []string) {
	*b = binary.AppendUvarint(*b, uint64(len(ss)))
	for _, s := range ss {
		b.str(s)
	}
}
func (b *rowbin) fixed(p []byte) { *b = append(*b, p...) }

// dateLiteral returns the SQL Date literal of the day holding ns.
func dateLiteral(ns int64) string {
	return "'" + time.Unix(0, ns).UTC().Format("2006-01-02") + "'"
}
