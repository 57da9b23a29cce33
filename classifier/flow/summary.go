package flow

import "github.com/connscope/connscope/packet"

// Summary describes a connection's counted packets, taken in timestamp,
// then sequence-number order: what method.md's closure, stage, tags and
// signature need of them, and nothing more. The table keeps this summary
// instead of the packets themselves, so a connection's state has a fixed,
// small size whatever its packet cap.
//
// Counts that the method only compares with 0, 1 or 2 saturate: SYNs,
// RSTs, RSTACKs and Data at 2, Pre at 3.
type Summary struct {
	// Packets is the number of counted packets (at most the cap).
	Packets int
	// FirstSeen and LastSeen are the timestamps of the first and last
	// counted packets in order (ns since the epoch).
	FirstSeen, LastSeen int64
	// FirstIsSYN: the first packet is a client SYN (SYN set, ACK clear).
	FirstIsSYN bool
	// SYNs counts packets with SYN set.
	SYNs int
	// RSTs counts plain RSTs (ACK clear), RSTACKs RSTs with ACK set.
	RSTs, RSTACKs int
	// FIN: some packet has FIN set; FINBeforeRST: a packet before the first
	// RST has FIN set.
	FIN, FINBeforeRST bool
	// Pre counts the packets before the first RST (all of them when there
	// is no RST), Data those of them with PSH set.
	Pre, Data int
	// DataLast: the first data packet is the last packet before the first
	// RST (or the last packet, when there is no RST). DataACK: it has ACK
	// set.
	DataLast, DataACK bool
	// SecondPureACK: the second packet has ACK set and none of SYN, FIN,
	// RST and PSH.
	SecondPureACK bool
	// NonACK: a packet before the first RST, other than the first packet,
	// has ACK clear (method.md's post_ack is "SYN and ACK(s)").
	NonACK bool
	// TTLJump: an RST's TTL differs by more than 1 from that of the last
	// non-RST packet before it, that packet not being the first one;
	// TTLJumpFromFirst: the same where that packet is the first one (the
	// SYN), which scanner attribution may discount.
	TTLJump, TTLJumpFromFirst bool
	// IPIDJump (IPv4): an RST's IP ID differs by more than 1 (mod 65536)
	// from that of the last non-RST packet before it, neither being 0.
	IPIDJump bool
	// RSTAcks summarises the ack numbers of the plain RSTs.
	RSTAcks RSTAcks
	// Reordered: a packet arrived after a later one (in timestamp and
	// sequence order) had already been taken into the summary, so it was
	// taken in arrival order instead. The table holds back the latest
	// packet of each connection, so two packets arriving swapped are
	// ordered exactly; only longer displacements set this.
	Reordered bool
}

// Entry state bits.
const (
	stDone uint32 = 1 << iota
	stHasSYN
	stFIN // a FIN arrived (counted)
	stPlainRST
	stRSTAckDiff
	stRSTAckZero
	stPending // pSeq, pIPID, pTTL, pFlags hold a packet not yet summarised
	stFirstIsSYN
	stFINBeforeRST
	stDataLast
	stDataACK
	stSecondPureACK
	stHaveRef // refTTL, refIPID hold the last summarised non-RST packet
	stRefFirst
	stTTLJump
	stTTLJumpFirst
	stIPIDJump
	stReordered
	stNonACK
	stFree   // on the pool's free list (not in the index)
	stCapped // open, at the cap, in Table.capped: finished when the clock moves on
	stBits   = iota
)

// Saturating counters packed in entry.state above the state bits, two
// bits each.
const (
	cntSYNs = stBits + iota*2
	cntRSTs
	cntRSTACKs
	cntPre
	cntData
	cntEnd
)

// The counters must fit in entry.state.
var _ = [1]struct{}{}[cntEnd/33]

func (e *entry) count(field uint) int { return int(e.state>>field) & 3 }

func (e *entry) bump(field uint, max int) {
	if e.count(field) < max {
		e.state += 1 << field
	}
}

// arrive takes a counted packet into entry e: it holds back the
// packets with the latest timestamp (one in the entry; several, when they
// share it, in t.ties) and summarises the others in order, so that packets
// with equal (coarse) timestamps are taken in sequence-number order
// whatever order they arrived in. The caller has checked the cap.
//
// (The packet goes from r to where it is kept field by field, not through a
// heldPacket built first: the compiler builds one on the stack with narrow
// stores and copies it with wide loads, which wait for the stores.)
func (t *Table) arrive(e *entry, ts int64, r *packet.Record, v4 bool) {
	switch {
	case e.state&stPending == 0:
		e.holdRecord(ts, r)
	case ts > e.last:
		// After the held packets: they are next in order.
		t.flushHeld(e, v4)
		e.holdRecord(ts, r)
	case ts == e.last:
		// The held packets' timestamp: held with them, and ordered by
		// sequence number when they are summarised.
		if e.tie == 0 {
			e.tie = t.ties.alloc()
			t.ties.add(e.tie, e.held())
		}
		t.ties.add(e.tie, heldOf(r))
	default:
		// Older than the held packets: taken now, in arrival order among
		// those already summarised.
		if e.n > 0 && before(ts, r.Seq, e.lcTs, e.lcSeq) {
			e.state |= stReordered
		}
		e.summarise(ts, heldOf(r), v4)
	}
}

// heldOf is what the table keeps of a counted packet.
func heldOf(r *packet.Record) heldPacket {
	return heldPacket{seq: r.Seq, ack: r.Ack, ipid: r.IPID, ttl: r.TTL, flags: r.Flags}
}

// heldCount reports how many packets the entry holds back.
func (t *Table) heldCount(e *entry) int {
	if e.tie != 0 {
		return int(t.ties.n[e.tie])
	}
	return int(e.state & stPending / stPending)
}

// flushHeld summarises the held packets, if any: the one in the entry, or
// the tie group in the order of precedes (a stable sort: packets equal in
// it keep their arrival order).
func (t *Table) flushHeld(e *entry, v4 bool) {
	if e.state&stPending == 0 {
		return
	}
	e.state &^= stPending
	if e.tie == 0 {
		e.summarise(e.last, e.held(), v4)
		return
	}
	g := t.ties.group(e.tie)
	for i := 1; i < len(g); i++ {
		for j := i; j > 0 && e.precedes(g[j], g[j-1]); j-- {
			g[j], g[j-1] = g[j-1], g[j]
		}
	}
	for _, p := range g {
		e.summarise(e.last, p, v4)
	}
	t.ties.free(e.tie)
	e.tie = 0
}

// tiePool holds tie groups: the packets of a connection that share its
// latest timestamp, up to the packet cap of them, in blocks of size
// packets reused through a free list (nothing is allocated per packet once
// the busiest moment has passed). Block 0 is unused: an entry's tie is 0
// when it has no group.
type tiePool struct {
	size  int
	pk    []heldPacket // block b is pk[b*size : (b+1)*size]
	n     []uint8      // packets in each block
	freeL []uint32
}

func (p *tiePool) init(size int) {
	p.size = size
	p.n = []uint8{0}
	p.pk = make([]heldPacket, size)
}

func (p *tiePool) alloc() uint32 {
	if k := len(p.freeL); k > 0 {
		b := p.freeL[k-1]
		p.freeL = p.freeL[:k-1]
		return b
	}
	p.n = append(p.n, 0)
	p.pk = append(p.pk, make([]heldPacket, p.size)...)
	return uint32(len(p.n) - 1)
}

// add appends a packet to block b; the table's cap check keeps a group
// within size.
func (p *tiePool) add(b uint32, h heldPacket) {
	p.pk[int(b)*p.size+int(p.n[b])] = h
	p.n[b]++
}

func (p *tiePool) group(b uint32) []heldPacket {
	i := int(b) * p.size
	return p.pk[i : i+int(p.n[b])]
}

func (p *tiePool) free(b uint32) {
	p.n[b] = 0
	p.freeL = append(p.freeL, b)
}

type heldPacket struct {
	seq   uint32
	ack   uint32
	ipid  uint16
	ttl   uint8
	flags packet.Flags
}

func (e *entry) hold(ts int64, p heldPacket) {
	e.pSeq, e.pAck, e.pIPID, e.pTTL, e.pFlags = p.seq, p.ack, p.ipid, p.ttl, p.flags
	e.pending(ts)
}

// pending marks the packet in the entry's p* fields as held, at ts.
func (e *entry) pending(ts int64) {
	e.state |= stPending
	if ts > e.last {
		e.last = ts
	}
}

// holdRecord is hold(ts, heldOf(r)), field by field (see arrive).
func (e *entry) holdRecord(ts int64, r *packet.Record) {
	e.pSeq, e.pAck, e.pIPID, e.pTTL, e.pFlags = r.Seq, r.Ack, r.IPID, r.TTL, r.Flags
	e.pending(ts)
}

func (e *entry) held() heldPacket {
	return heldPacket{seq: e.pSeq, ack: e.pAck, ipid: e.pIPID, ttl: e.pTTL, flags: e.pFlags}
}

// precedes orders two packets of one connection that share a timestamp:
// the connection's SYN first (a client SYN, SYN set and ACK clear, with
// the initial sequence number of the first client SYN to arrive, e.synSeq:
// the SYN and its retransmissions), as a connection starts with it (an
// injected packet's sequence number may be anything, and one behind the
// SYN's must not make the connection look as if it had no SYN); then by
// sequence number (serial arithmetic, RFC 1982); at one sequence number, a
// packet that carries neither PSH nor FIN nor RST, then one with PSH, then
// one with FIN, then an RST last. (At one sequence number the handshake's
// ACK comes before the data sent at that number, and an RST sent at the
// number of the packet it answers comes after it: an RST ends a
// connection, and its stage is what came before it.) Packets equal in all
// of this keep their arrival order.
func (e *entry) precedes(p, q heldPacket) bool {
	if e.state&stHasSYN != 0 {
		pSYN := p.flags&(packet.SYN|packet.ACK) == packet.SYN && p.seq == e.synSeq
		qSYN := q.flags&(packet.SYN|packet.ACK) == packet.SYN && q.seq == e.synSeq
		if pSYN != qSYN {
			return pSYN
		}
	}
	if d := int32(p.seq - q.seq); d != 0 {
		return d < 0
	}
	return sameSeqRank(p.flags) < sameSeqRank(q.flags)
}

// sameSeqRank places a packet among those with its sequence number (see
// precedes).
func sameSeqRank(f packet.Flags) int {
	switch {
	case f&packet.RST != 0:
		return 3
	case f&packet.FIN != 0:
		return 2
	case f&packet.PSH != 0:
		return 1
	}
	return 0
}

// before orders packets by timestamp, then sequence number (serial
// arithmetic), for noting packets taken out of order (Summary.Reordered);
// it does not apply precedes's finer order within a timestamp (for which
// it would need the flags of the last packet summarised).
func before(ts int64, seq uint32, ts2 int64, seq2 uint32) bool {
	if ts != ts2 {
		return ts < ts2
	}
	return int32(seq-seq2) < 0
}

// summarise takes the next packet in order into the summary.
func (e *entry) summarise(ts int64, p heldPacket, v4 bool) {
	idx := e.n
	if idx == 0 {
		e.first = ts
		if p.flags&(packet.SYN|packet.ACK) == packet.SYN {
			e.state |= stFirstIsSYN
		}
	}
	e.lcTs, e.lcSeq = ts, p.seq
	e.n++
	f := p.flags
	if f&packet.SYN != 0 {
		e.bump(cntSYNs, 2)
	}
	if f&packet.FIN != 0 {
		e.state |= stFIN
	}
	seenRST := e.count(cntRSTs)+e.count(cntRSTACKs) > 0
	if f&packet.RST != 0 {
		if f&packet.ACK != 0 {
			e.bump(cntRSTACKs, 2)
		} else {
			e.bump(cntRSTs, 2)
			switch {
			case e.state&stPlainRST == 0:
				e.state |= stPlainRST
				e.rstAck = p.ack
			case p.ack != e.rstAck:
				e.state |= stRSTAckDiff
			}
			if p.ack == 0 {
				e.state |= stRSTAckZero
			}
		}
		if e.state&stHaveRef != 0 {
			if absDiff(p.ttl, e.refTTL) > 1 {
				if e.state&stRefFirst != 0 {
					e.state |= stTTLJumpFirst
				} else {
					e.state |= stTTLJump
				}
			}
			if v4 && p.ipid != 0 && e.refID != 0 && ipidDistance(p.ipid, e.refID) > 1 {
				e.state |= stIPIDJump
			}
		}
		return
	}
	e.refTTL, e.refID = p.ttl, p.ipid
	e.state |= stHaveRef
	if idx == 0 {
		e.state |= stRefFirst
	} else {
		e.state &^= stRefFirst
	}
	if seenRST {
		return
	}
	e.bump(cntPre, 3)
	if e.count(cntPre) == 2 && idx == 1 &&
		f&packet.ACK != 0 && f&(packet.SYN|packet.FIN|packet.RST|packet.PSH) == 0 {
		e.state |= stSecondPureACK
	}
	if idx > 0 && f&packet.ACK == 0 {
		e.state |= stNonACK
	}
	if f&packet.FIN != 0 {
		e.state |= stFINBeforeRST
	}
	if f&packet.PSH != 0 {
		e.bump(cntData, 2)
		if e.count(cntData) == 1 {
			e.state |= stDataLast
			if f&packet.ACK != 0 {
				e.state |= stDataACK
			}
			return
		}
	}
	e.state &^= stDataLast
}

// summary exports the entry's summary (the held packet must have been
// summarised).
func (e *entry) summary() Summary {
	s := Summary{
		Packets:          int(e.n),
		FirstSeen:        e.first,
		LastSeen:         e.lcTs,
		FirstIsSYN:       e.state&stFirstIsSYN != 0,
		SYNs:             e.count(cntSYNs),
		RSTs:             e.count(cntRSTs),
		RSTACKs:          e.count(cntRSTACKs),
		FIN:              e.state&stFIN != 0,
		FINBeforeRST:     e.state&stFINBeforeRST != 0,
		Pre:              e.count(cntPre),
		Data:             e.count(cntData),
		DataLast:         e.state&stDataLast != 0,
		DataACK:          e.state&stDataACK != 0,
		SecondPureACK:    e.state&stSecondPureACK != 0,
		NonACK:           e.state&stNonACK != 0,
		TTLJump:          e.state&stTTLJump != 0,
		TTLJumpFromFirst: e.state&stTTLJumpFirst != 0,
		IPIDJump:         e.state&stIPIDJump != 0,
		Reordered:        e.state&stReordered != 0,
	}
	if e.state&stPlainRST != 0 {
		s.RSTAcks = RSTAcks{First: e.rstAck, AllSame: e.state&stRSTAckDiff == 0, AnyZero: e.state&stRSTAckZero != 0}
	}
	return s
}

func absDiff(a, b uint8) int {
	if a > b {
		return int(a - b)
	}
	return int(b - a)
}

// ipidDistance is the distance of two IP IDs on the 16-bit circle.
func ipidDistance(a, b uint16) int {
	d := int(a - b)
	if d > 1<<15 {
		d = 1<<16 - d
	}
	return d
}
