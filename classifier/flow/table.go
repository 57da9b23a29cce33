package flow

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"

	"github.com/connscope/connscope/packet"
)

// Callback receives each finished connection. The Conn is reused after the
// callback returns.
type Callback func(*Conn)

// Table assembles connections. It is not safe for concurrent use.
type Table struct {
	cfg    Config
	emit   Callback
	now    int64 // the clock: the largest timestamp seen (ns)
	idle   int64
	linger int64

	index index
	conns connPool
	chnks chunkPool
	open  list // unfinished connections, least recently active first
	done  list // tombstones, least recently active first

	stats Stats
	out   Conn
	sink  uint32 // keeps AddBatch's warming loads from being optimised away
	buf   []Packet
}

// New returns a table that hands finished connections to emit.
func New(cfg Config, emit Callback) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Table{
		cfg:    cfg,
		emit:   emit,
		idle:   int64(cfg.IdleTimeout),
		linger: int64(cfg.Linger),
		buf:    make([]Packet, 0, cfg.PacketCap),
	}
	t.index.init()
	return t, nil
}

// Config returns the configuration in force (defaults filled).
func (t *Table) Config() Config { return t.cfg }

// Stats returns the counters so far.
func (t *Table) Stats() Stats { return t.stats }

// Now returns the table's clock (ns since the epoch).
func (t *Table) Now() int64 { return t.now }

// entry is one connection's state: 88 bytes.
type entry struct {
	key        Key
	first      int64 // timestamp of the first packet that arrived (ns)
	last       int64 // latest timestamp of a counted packet; of any packet once done
	prev, next uint32
	tail       uint32 // last packet chunk (0: none); chunks link backwards
	hash       uint32
	// aux is the ack number of the first plain RST while the connection is
	// open, and the SYN's sequence number once it is a tombstone.
	aux uint32
	// queued is the offset (µs after first) of last when the entry was put
	// at the back of its list: an entry whose last has moved on since is
	// re-queued when it reaches the front instead of expiring (lazy LRU, so
	// that a packet touches no neighbouring entries).
	queued int32
	syn    SYN
	n      uint8 // packets kept
	state  uint8
}

const (
	stDone uint8 = 1 << iota
	stHasSYN
	stRST
	stFIN
	stPlainRST   // a plain RST (ACK clear) was kept; rstAck holds its ack
	stRSTAckDiff // plain RSTs with different ack numbers
	stRSTAckZero // a plain RST with ack number 0
)

// chunk holds 5 packets: 64 bytes, one cache line.
type chunk struct {
	p    [chunkLen]cpkt
	next uint32
}

const chunkLen = 5

// cpkt is a packet as kept in a chunk: 12 bytes. Ack numbers matter only
// for plain RSTs and only as a set (all equal? any zero?), which the entry
// keeps.
type cpkt struct {
	off   int32 // microseconds after the entry's first packet
	seq   uint32
	ipid  uint16
	ttl   uint8
	flags packet.Flags
}

// Add offers one packet to the table. Packets are expected roughly in
// timestamp order (as captured); the table's clock only moves forward.
func (t *Table) Add(r *packet.Record) error {
	if r.IPVersion != 4 && r.IPVersion != 6 {
		return ErrBadPacket
	}
	k := keyOf(r)
	t.add(r, &k, t.index.seed.hash(&k))
	return nil
}

// batchLen is how many packets AddBatch prepares at once.
const batchLen = 16

// AddBatch adds packets in order, exactly as Add would one by one. It first
// loads the index slots, entries and packet chunks the packets will touch,
// all of a batch together, so that their cache misses overlap instead of
// following one another: with hundreds of thousands of connections open
// the table is bound by memory latency, not by work.
func (t *Table) AddBatch(rs []packet.Record) error {
	var keys [batchLen]Key
	var hs [batchLen]uint32
	var ids [batchLen]uint32
	for len(rs) > 0 {
		n := min(len(rs), batchLen)
		for i := range n {
			if v := rs[i].IPVersion; v != 4 && v != 6 {
				return ErrBadPacket
			}
		}
		var sink uint32
		slots, mask := t.index.slots, t.index.mask
		for i := range n {
			keys[i] = keyOf(&rs[i])
			hs[i] = t.index.seed.hash(&keys[i])
		}
		// Tight loops of independent loads: many misses in flight at once.
		for i := range n {
			sink += slots[hs[i]&mask]
		}
		for i := range n {
			ids[i] = 0
			if sl := slots[hs[i]&mask]; sl != 0 && sl&^idMask == slotTag(hs[i]) {
				ids[i] = sl & idMask
				e := t.conns.at(ids[i])
				sink += uint32(e.key.ClientIP[0]) + uint32(e.key.ClientPort) + uint32(e.n)
			}
		}
		for i := range n {
			if ids[i] != 0 {
				if c := t.conns.at(ids[i]).tail; c != 0 {
					sink += t.chnks.at(c).next
				}
			}
		}
		t.sink += sink
		for i := range n {
			t.add(&rs[i], &keys[i], hs[i])
		}
		rs = rs[n:]
	}
	return nil
}

func keyOf(r *packet.Record) Key {
	return Key{ClientIP: r.SrcIP, ServerIP: r.DstIP, ClientPort: r.SrcPort, ServerPort: r.DstPort, IPVersion: r.IPVersion}
}

func (t *Table) add(r *packet.Record, kp *Key, h uint32) {
	k := *kp
	t.stats.Packets++
	if r.Timestamp > t.now {
		t.now = r.Timestamp
		t.expire()
	}
	clientSYN := r.Flags&(packet.SYN|packet.ACK) == packet.SYN

	if id := t.index.find(&k, h, &t.conns); id != 0 {
		e := t.conns.at(id)
		if e.state&stDone == 0 && t.now-e.last >= t.idle {
			// Silent for the idle timeout before this packet: it timed out
			// (the lazy expiry had not reached it yet).
			t.finish(id, EndIdle)
		}
		switch {
		case e.state&stDone != 0:
			if !clientSYN || (e.state&stHasSYN != 0 && e.aux == r.Seq) {
				// A late packet of a finished connection.
				t.stats.BeyondCap++
				if r.Timestamp > e.last {
					e.last = r.Timestamp
				}
				return
			}
			t.remove(id) // a new connection on the same ports
		case clientSYN && e.state&(stRST|stFIN) != 0 && e.state&stHasSYN != 0 && t.synSeq(e) != r.Seq:
			t.finish(id, EndReused)
			t.remove(id)
		default:
			t.append(id, e, r, clientSYN)
			return
		}
	} else if !clientSYN {
		// A client SYN opens a connection whatever the other direction holds;
		// any other packet may be the server's side of a known connection.
		rk := k.reverse()
		if t.index.find(&rk, t.index.seed.hash(&rk), &t.conns) != 0 {
			t.stats.Reverse++
			return
		}
		if r.Flags.Has(packet.SYN | packet.ACK) {
			t.stats.OrphanSYNACK++
			return
		}
	}
	t.openConn(&k, h, r, clientSYN)
}

// Advance moves the clock to now (ns) if it is later, finishing connections
// that have been silent for the idle timeout. A live source calls it
// periodically so that silence is noticed when no packets arrive.
func (t *Table) Advance(now int64) {
	if now > t.now {
		t.now = now
		t.expire()
	}
}

// Flush finishes every open connection (EndInput) and forgets all state: the
// end of the input.
func (t *Table) Flush() {
	for t.open.head != 0 {
		t.finish(t.open.head, EndInput)
	}
	for t.done.head != 0 {
		t.remove(t.done.head)
	}
}

func (t *Table) openConn(k *Key, h uint32, r *packet.Record, clientSYN bool) {
	if t.stats.Held >= t.cfg.MaxOpen {
		t.evict()
	}
	id := t.conns.alloc()
	e := t.conns.at(id)
	*e = entry{key: *k, first: r.Timestamp, last: r.Timestamp, hash: h}
	t.index.insert(id, h, &t.conns)
	t.open.pushBack(&t.conns, id)
	t.stats.Opened++
	t.stats.Open++
	t.stats.Held++
	if t.stats.Open > t.stats.PeakOpen {
		t.stats.PeakOpen = t.stats.Open
	}
	if t.stats.Held > t.stats.PeakHeld {
		t.stats.PeakHeld = t.stats.Held
	}
	t.append(id, e, r, clientSYN)
}

func (t *Table) append(id uint32, e *entry, r *packet.Record, clientSYN bool) {
	off := (r.Timestamp - e.first) / 1000
	if off > 1<<31-1 {
		off = 1<<31 - 1
	} else if off < -1<<31 {
		off = -1 << 31
	}
	p := cpkt{off: int32(off), seq: r.Seq, ipid: r.IPID, ttl: r.TTL, flags: r.Flags}
	// The chunk for packet number e.n: the last one, or a new one linked
	// before it.
	if e.n%chunkLen == 0 {
		c := t.chnks.alloc()
		t.chnks.at(c).next = e.tail
		e.tail = c
	}
	t.chnks.at(e.tail).p[e.n%chunkLen] = p
	e.n++
	t.stats.Counted++
	if clientSYN && e.state&stHasSYN == 0 {
		e.state |= stHasSYN
		e.syn = SYN{Window: r.Window, NumOptions: r.NumOptions, DF: r.DF}
		if r.NumOptions > 0 {
			e.syn.FirstOption = r.Options[0]
		}
	}
	if r.Flags&packet.RST != 0 {
		e.state |= stRST
		if r.Flags&packet.ACK == 0 {
			switch {
			case e.state&stPlainRST == 0:
				e.state |= stPlainRST
				e.aux = r.Ack
			case r.Ack != e.aux:
				e.state |= stRSTAckDiff
			}
			if r.Ack == 0 {
				e.state |= stRSTAckZero
			}
		}
	}
	if r.Flags&packet.FIN != 0 {
		e.state |= stFIN
	}
	if r.Timestamp > e.last {
		e.last = r.Timestamp
	}
	if int(e.n) >= t.cfg.PacketCap {
		t.finish(id, EndCap)
	}
}

// finish hands the open connection id to the callback and turns it into a
// tombstone.
func (t *Table) finish(id uint32, end End) {
	e := t.conns.at(id)
	n := int(e.n)
	t.buf = t.buf[:n]
	lo := lastOff(e)
	// Chunks link backwards: the last one holds packets from
	// (n-1)/chunkLen*chunkLen on.
	c := e.tail
	for base := (n - 1) / chunkLen * chunkLen; base >= 0; base -= chunkLen {
		ch := t.chnks.at(c)
		for j, p := range ch.p[:min(chunkLen, n-base)] {
			ts := e.first + int64(p.off)*1000
			if p.off == 0 {
				ts = e.first
			} else if p.off == lo {
				ts = e.last
			}
			t.buf[base+j] = Packet{Timestamp: ts, Seq: p.seq, IPID: p.ipid, TTL: p.ttl, Flags: p.flags}
		}
		c = ch.next
	}
	sortPackets(t.buf)
	t.out = Conn{
		Key:     e.key,
		Packets: t.buf,
		SYN:     e.syn,
		HasSYN:  e.state&stHasSYN != 0,
		RSTAcks: RSTAcks{
			First:   e.aux,
			AllSame: e.state&stRSTAckDiff == 0,
			AnyZero: e.state&stRSTAckZero != 0,
		},
		Cap:    t.cfg.PacketCap,
		Silent: t.now-e.last >= t.idle,
		End:    end,
	}
	t.stats.Finished++
	if end == EndEvicted {
		t.stats.EvictedOpen++
	}
	t.emit(&t.out)

	// Tombstone: keep the SYN's sequence number, free the packets, move to
	// the done list.
	e.aux = t.synSeq(e)
	t.freeChunks(e)
	e.state |= stDone
	t.open.remove(&t.conns, id)
	e.queued = lastOff(e)
	t.done.pushBack(&t.conns, id)
	t.stats.Open--
}

func (t *Table) freeChunks(e *entry) {
	for c := e.tail; c != 0; {
		next := t.chnks.at(c).next
		t.chnks.free(c)
		c = next
	}
	e.tail = 0
}

// remove forgets a tombstone.
func (t *Table) remove(id uint32) {
	e := t.conns.at(id)
	t.index.delete(id, e.hash, &t.conns)
	t.done.remove(&t.conns, id)
	t.conns.free(id)
	t.stats.Held--
}

// evict makes room for one connection: the least recently active tombstone,
// or else the least recently active open connection (finished early).
func (t *Table) evict() {
	if t.done.head != 0 {
		t.remove(t.done.head)
		t.stats.EvictedTombstone++
		return
	}
	id := t.open.head
	t.finish(id, EndEvicted)
	t.remove(id)
}

// expire finishes open connections silent for the idle timeout and forgets
// tombstones silent for the linger, from the front of their lists. An entry
// at the front that had packets since it was queued is re-queued at the
// back; each entry is re-queued at most once per call, so the work is
// amortised over the packets that refreshed it.
func (t *Table) expire() {
	for t.open.head != 0 {
		id := t.open.head
		e := t.conns.at(id)
		if t.now-e.last >= t.idle {
			t.finish(id, EndIdle)
			continue
		}
		if !t.requeue(&t.open, id, e) {
			break
		}
	}
	for t.done.head != 0 {
		id := t.done.head
		e := t.conns.at(id)
		if t.now-e.last >= t.linger {
			t.remove(id)
			continue
		}
		if !t.requeue(&t.done, id, e) {
			break
		}
	}
}

// requeue moves the entry at the front of l to the back if it had packets
// since it was queued, and reports whether it did.
func (t *Table) requeue(l *list, id uint32, e *entry) bool {
	lo := lastOff(e)
	if lo == e.queued {
		return false
	}
	e.queued = lo
	l.moveToBack(&t.conns, id)
	return true
}

// lastOff is the offset of e.last after e.first in µs, saturated.
func lastOff(e *entry) int32 {
	off := (e.last - e.first) / 1000
	if off > 1<<31-1 {
		return 1<<31 - 1
	}
	return int32(off)
}

// synSeq returns the sequence number of the first client SYN kept by an
// open connection (0 if none).
func (t *Table) synSeq(e *entry) uint32 {
	if e.state&stHasSYN == 0 {
		return 0
	}
	// Chunks link backwards: the earliest SYN is the last one found.
	n := int(e.n)
	var seq uint32
	c := e.tail
	for base := (n - 1) / chunkLen * chunkLen; base >= 0; base -= chunkLen {
		ch := t.chnks.at(c)
		for j := min(chunkLen, n-base) - 1; j >= 0; j-- {
			if p := &ch.p[j]; p.flags&(packet.SYN|packet.ACK) == packet.SYN {
				seq = p.seq
			}
		}
		c = ch.next
	}
	return seq
}

// sortPackets orders packets by timestamp, then sequence number (serial
// arithmetic), keeping arrival order for ties. Insertion sort: n <= 64 and
// usually already in order.
func sortPackets(p []Packet) {
	for i := 1; i < len(p); i++ {
		for j := i; j > 0 && before(&p[j], &p[j-1]); j-- {
			p[j], p[j-1] = p[j-1], p[j]
		}
	}
}

func before(a, b *Packet) bool {
	if a.Timestamp != b.Timestamp {
		return a.Timestamp < b.Timestamp
	}
	return int32(a.Seq-b.Seq) < 0
}

// hashSeed keys the hash of connection keys with random secrets, so that
// clients cannot choose 5-tuples that collide (the live classifier hashes
// attacker-chosen keys).
type hashSeed [6]uint64

func newHashSeed() hashSeed {
	var s hashSeed
	for i := range s {
		s[i] = rand.Uint64()
	}
	return s
}

// hash hashes the 37 meaningful bytes of a key (two 16-byte addresses, two
// ports and the IP version) as five words, wyhash-style: each pair of
// seeded words folded by a 64x64->128-bit multiplication.
func (s *hashSeed) hash(k *Key) uint32 {
	le := binary.LittleEndian
	a := mum(le.Uint64(k.ClientIP[:8])^s[0], le.Uint64(k.ClientIP[8:])^s[1])
	b := mum(le.Uint64(k.ServerIP[:8])^s[2], le.Uint64(k.ServerIP[8:])^s[3])
	w := uint64(k.ClientPort) | uint64(k.ServerPort)<<16 | uint64(k.IPVersion)<<32
	h := mum(a^b^s[4], w^s[5])
	return uint32(h ^ h>>32)
}

func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// keyEq compares two keys word by word.
func keyEq(a, b *Key) bool {
	le := binary.LittleEndian
	x := le.Uint64(a.ClientIP[:8]) ^ le.Uint64(b.ClientIP[:8])
	x |= le.Uint64(a.ClientIP[8:]) ^ le.Uint64(b.ClientIP[8:])
	x |= le.Uint64(a.ServerIP[:8]) ^ le.Uint64(b.ServerIP[:8])
	x |= le.Uint64(a.ServerIP[8:]) ^ le.Uint64(b.ServerIP[8:])
	y := (uint32(a.ClientPort) | uint32(a.ServerPort)<<16) ^ (uint32(b.ClientPort) | uint32(b.ServerPort)<<16)
	return x == 0 && y == 0 && a.IPVersion == b.IPVersion
}

// index is an open-addressing hash table (linear probing, backward-shift
// deletion) from keys to entry ids. A slot holds an entry id in its low
// idBits and the top bits of the key's hash above them (0: empty), so that a
// probe touches an entry only when those bits match: a lookup that misses
// (every new connection, and its reverse key) reads no entry at all.
type index struct {
	slots []uint32
	mask  uint32
	count int
	seed  hashSeed
}

const (
	idBits = 24 // at most 16 M entries
	idMask = 1<<idBits - 1
	// MaxMaxOpen is the largest MaxOpen a table accepts.
	MaxMaxOpen = idMask - 1
)

func slotTag(h uint32) uint32 { return h &^ idMask }

func (x *index) init() {
	x.seed = newHashSeed()
	x.slots = make([]uint32, 1024)
	x.mask = 1023
}

func (x *index) find(k *Key, h uint32, p *connPool) uint32 {
	tag := slotTag(h)
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		s := x.slots[i]
		if s == 0 {
			return 0
		}
		if s&^idMask == tag {
			id := s & idMask
			if e := p.at(id); keyEq(&e.key, k) {
				return id
			}
		}
	}
}

func (x *index) insert(id, h uint32, p *connPool) {
	if (x.count+1)*2 > len(x.slots) {
		x.grow(p)
	}
	i := h & x.mask
	for x.slots[i] != 0 {
		i = (i + 1) & x.mask
	}
	x.slots[i] = id | slotTag(h)
	x.count++
}

func (x *index) delete(id, h uint32, p *connPool) {
	want := id | slotTag(h)
	i := h & x.mask
	for x.slots[i] != want {
		i = (i + 1) & x.mask
	}
	// Backward-shift deletion: move later members of the probe run into the
	// hole when their home slot allows it.
	for j := i; ; {
		j = (j + 1) & x.mask
		s := x.slots[j]
		if s == 0 {
			break
		}
		home := p.at(s&idMask).hash & x.mask
		// The entry at j may move to i if home is not cyclically in (i, j].
		if (j-home)&x.mask >= (j-i)&x.mask {
			x.slots[i] = s
			i = j
		}
	}
	x.slots[i] = 0
	x.count--
}

func (x *index) grow(p *connPool) {
	old := x.slots
	x.slots = make([]uint32, len(old)*2)
	x.mask = uint32(len(x.slots) - 1)
	for _, s := range old {
		if s == 0 {
			continue
		}
		i := p.at(s&idMask).hash & x.mask
		for x.slots[i] != 0 {
			i = (i + 1) & x.mask
		}
		x.slots[i] = s
	}
}

// list is a doubly linked list of entries through their prev/next fields.
type list struct{ head, tail uint32 }

func (l *list) pushBack(p *connPool, id uint32) {
	e := p.at(id)
	e.prev, e.next = l.tail, 0
	if l.tail != 0 {
		p.at(l.tail).next = id
	} else {
		l.head = id
	}
	l.tail = id
}

func (l *list) remove(p *connPool, id uint32) {
	e := p.at(id)
	if e.prev != 0 {
		p.at(e.prev).next = e.next
	} else {
		l.head = e.next
	}
	if e.next != 0 {
		p.at(e.next).prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = 0, 0
}

func (l *list) moveToBack(p *connPool, id uint32) {
	if l.tail == id {
		return
	}
	l.remove(p, id)
	l.pushBack(p, id)
}

// Pools: entries and chunks live in pages of fixed size, addressed by a
// 32-bit id (0 is nil), with an intrusive free list. Pages are never
// returned: the table's memory is its high-water mark.
const (
	pageBits = 12
	pageSize = 1 << pageBits
)

type connPool struct {
	pages []*[pageSize]entry
	n     uint32 // ids handed out so far, including 0
	freeL uint32
}

func (p *connPool) at(id uint32) *entry { return &p.pages[id>>pageBits][id&(pageSize-1)] }

func (p *connPool) alloc() uint32 {
	if p.freeL != 0 {
		id := p.freeL
		p.freeL = p.at(id).next
		return id
	}
	if p.n == 0 {
		p.n = 1 // id 0 is nil
	}
	if int(p.n>>pageBits) == len(p.pages) {
		p.pages = append(p.pages, new([pageSize]entry))
	}
	id := p.n
	p.n++
	return id
}

func (p *connPool) free(id uint32) {
	*p.at(id) = entry{next: p.freeL}
	p.freeL = id
}

type chunkPool struct {
	pages []*[pageSize]chunk
	n     uint32
	freeL uint32
}

func (p *chunkPool) at(id uint32) *chunk { return &p.pages[id>>pageBits][id&(pageSize-1)] }

func (p *chunkPool) alloc() uint32 {
	if p.freeL != 0 {
		id := p.freeL
		c := p.at(id)
		p.freeL = c.next
		c.next = 0
		return id
	}
	if p.n == 0 {
		p.n = 1
	}
	if int(p.n>>pageBits) == len(p.pages) {
		p.pages = append(p.pages, new([pageSize]chunk))
	}
	id := p.n
	p.n++
	return id
}

func (p *chunkPool) free(id uint32) {
	p.at(id).next = p.freeL
	p.freeL = id
}
