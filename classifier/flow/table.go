package flow

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"runtime"
	"sync"
	"unsafe"

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
	hold   int64
	linger int64

	index index
	conns connPool
	ties  tiePool // tie groups of entries with a tie
	open  list    // unfinished connections, least recently active first
	done  list    // tombstones, least recently active first
	// capped lists the open connections that reached the cap with packets
	// at the clock's timestamp (stCapped): finished when the clock moves
	// on, as until then a packet with that timestamp and a lower sequence
	// number may still arrive and be among the first in order.
	capped []uint32

	stats Stats
	out   Conn
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
		hold:   int64(cfg.Hold),
		linger: int64(cfg.Linger),
	}
	t.ties.init(cfg.PacketCap)
	t.index.init()
	t.conns.init(t, cfg.MaxOpen)
	return t, nil
}

// Config returns the configuration in force (defaults filled).
func (t *Table) Config() Config { return t.cfg }

// Stats returns the counters so far.
func (t *Table) Stats() Stats { return t.stats }

// Now returns the table's clock (ns since the epoch).
func (t *Table) Now() int64 { return t.now }

// entry is one connection's state, open or finished (a tombstone): 120
// bytes, whatever the packet cap.
type entry struct {
	key Key
	// first is the timestamp of the first packet in order (of the first
	// that arrived until it is summarised); last the latest timestamp of a
	// counted packet, which is the held packet's when there is one (of any
	// packet once the entry is a tombstone); lcTs and lcSeq those of the
	// last packet summarised.
	first, last, lcTs int64
	prev, next        uint32
	// tie is the entry's tie group in Table.ties, 0 when its held packets
	// do not share a timestamp (one is held in the entry). (The
	// key's hash is not kept: the index computes it again when it needs
	// it, which is when an entry is removed or the index grows.)
	tie uint32
	// queued is lastMark(last) when the entry was put at the back of its
	// list: an entry whose last has moved on since is re-queued when it
	// reaches the front instead of expiring (lazy LRU, so that a packet
	// touches no neighbouring entries).
	queued uint32
	synSeq uint32 // the first client SYN's sequence number
	rstAck uint32 // the first summarised plain RST's ack number
	lcSeq  uint32
	pSeq   uint32 // the held packet
	pAck   uint32
	syn    SYN
	synID  uint16 // the first client SYN's IP ID
	pIPID  uint16
	refID  uint16 // the last summarised non-RST packet's IP ID and TTL
	pTTL   uint8
	refTTL uint8
	pFlags packet.Flags
	n      uint8  // packets summarised
	state  uint32 // st* bits, and above them saturating counters (cnt* shifts)
}

// Add offers one packet to the table. Packets are expected roughly in
// timestamp order (as captured); the table's clock only moves forward.
func (t *Table) Add(r *packet.Record) error {
	if r.IPVersion != 4 && r.IPVersion != 6 {
		return ErrBadPacket
	}
	k := keyOf(r)
	t.add(r, &k, t.index.seed.hash(&k), 0)
	return nil
}

// batchLen is how many packets AddBatch prepares at once: one stage of its
// pipeline.
const batchLen = 16

// probeAhead is how many slots of a probe run AddBatch looks through for
// the entry to prefetch.
const probeAhead = 8

// AddBatch adds packets in order, exactly as Add would one by one. It is
// pipelined so that cache misses overlap instead of following one another:
// with hundreds of thousands of connections open the table is bound by
// memory latency, not by work. While it adds the packets of one stage of
// batchLen packets, the entries of the next stage are on their way into
// the cache (prefetched from the index slots found for them), and the
// index slots of the stage after that too. A prefetch is only a hint: the
// table may change between a prefetch and the packet it was made for, and
// each packet is then looked up as Add does.
//
// A record of an unknown IP version fails the whole call (ErrBadPacket)
// before any packet is added.
func (t *Table) AddBatch(rs []packet.Record) error {
	for i := range rs {
		if v := rs[i].IPVersion; v != 4 && v != 6 {
			return ErrBadPacket
		}
	}
	var keys [3][batchLen]Key
	var hs [3][batchLen]uint32
	var hints [2][batchLen]uint32   // ids stage 2 found for stage 3
	var addrs [3 * batchLen]uintptr // up to 3 cache lines per entry
	stages := (len(rs) + batchLen - 1) / batchLen
	part := func(c int) []packet.Record { return rs[c*batchLen : min((c+1)*batchLen, len(rs))] }
	for c := 0; c < stages+2; c++ {
		if c < stages {
			// Stage 1: keys, hashes, and the index slots they lead to.
			ks, h := &keys[c%3], &hs[c%3]
			slots, mask := t.index.slots, t.index.mask
			p := part(c)
			for i := range p {
				setKey(&ks[i], &p[i])
				h[i] = t.index.seed.hash(&ks[i])
				addrs[i] = uintptr(unsafe.Pointer(&slots[h[i]&mask]))
			}
			prefetch(&addrs[0], len(p))
		}
		if c >= 1 && c-1 < stages {
			// Stage 2: the entries the slots point at (the cache lines an
			// entry spans).
			h, hint := &hs[(c-1)%3], &hints[(c-1)%2]
			slots, mask := t.index.slots, t.index.mask
			n := 0
			for i := range part(c - 1) {
				hint[i] = 0
				// The first slot of the probe run with the key's tag: with
				// linear probing at 2/3 load about half the entries are not
				// in their home slot.
				tag := slotTag(h[i])
				for j, k := h[i]&mask, 0; k < probeAhead; j, k = (j+1)&mask, k+1 {
					sl := slots[j]
					if sl == 0 {
						break
					}
					if id := sl & idMask; sl&^idMask == tag && id < t.conns.n {
						hint[i] = id
						// The cache lines the entry spans.
						e := uintptr(unsafe.Pointer(t.conns.at(id)))
						end := e + unsafe.Sizeof(entry{}) - 1
						for l := e &^ 63; l <= end; l += 64 {
							addrs[n] = l
							n++
						}
						break
					}
				}
			}
			prefetch(&addrs[0], n)
		}
		if c >= 2 {
			// Stage 3: add the packets.
			ks, h, hint := &keys[(c-2)%3], &hs[(c-2)%3], &hints[(c-2)%2]
			p := part(c - 2)
			for i := range p {
				t.add(&p[i], &ks[i], h[i], hint[i])
			}
		}
	}
	return nil
}

func keyOf(r *packet.Record) Key {
	var k Key
	setKey(&k, r)
	return k
}

// setKey fills *k from r field by field. (Assigning a Key built as a
// composite literal compiles to a temporary filled with narrow stores and
// copied with wide loads that overlap them, which makes the CPU wait for
// the stores to forward on every packet.)
func setKey(k *Key, r *packet.Record) {
	k.ClientIP, k.ServerIP = r.SrcIP, r.DstIP
	k.ClientPort, k.ServerPort, k.IPVersion = r.SrcPort, r.DstPort, r.IPVersion
}

// add takes one packet with key *kp and its hash h. hint is the id of an
// entry that probably holds the key (AddBatch's guess from the index, made
// before the packets ahead of this one changed the table), or 0: it saves
// the index lookup when right, and is checked, as an id below the pool's
// high-water mark whose entry has the key is the key's entry in the index
// (an entry is in the index from its allocation to its release, a released
// entry is zeroed, and no real key has IP version 0).
func (t *Table) add(r *packet.Record, kp *Key, h uint32, hint uint32) {
	k := *kp
	t.stats.Packets++
	if r.Timestamp > t.now {
		t.finishCapped()
		t.now = r.Timestamp
		t.expire()
	}
	clientSYN := r.Flags&(packet.SYN|packet.ACK) == packet.SYN

	id := hint
	if id == 0 || id >= t.conns.n || !keyEq(&t.conns.at(id).key, &k) {
		id = t.index.find(&k, h, &t.conns)
	}
	if id != 0 {
		e := t.conns.at(id)
		if e.state&stCapped != 0 {
			if !t.overCap(e, r, clientSYN) {
				return
			}
			// A SYN of a new connection on the same ports: this one is
			// finished, as it would be had the clock moved on, and the
			// SYN is taken below as after any finished connection.
			t.finish(id, EndCap)
		}
		if e.state&stDone == 0 && t.now-e.last >= t.hold {
			// Silent for the hold before this packet: it is finished (the
			// lazy expiry had not reached it yet), and this packet is late.
			t.finish(id, EndIdle)
		}
		switch {
		case e.state&stDone != 0:
			if !clientSYN || (e.state&stHasSYN != 0 && e.synSeq == r.Seq) {
				// A late packet of a finished connection.
				t.stats.BeyondCap++
				if r.Timestamp > e.last {
					e.last = r.Timestamp
				}
				return
			}
			t.remove(id) // a new connection on the same ports
		case clientSYN && t.reopens(e, r):
			t.finish(id, EndNewSYN)
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

// Close releases the table's memory at once (otherwise it goes when the
// table is garbage: memory the garbage collector does not see, so a caller
// that makes many tables should close them). The table must not be used
// after.
func (t *Table) Close() {
	t.conns.res.release()
	t.conns.ents = nil
}

// Advance moves the clock to now (ns) if it is later, finishing connections
// that have been silent for the idle timeout. A live source calls it
// periodically so that silence is noticed when no packets arrive.
func (t *Table) Advance(now int64) {
	if now > t.now {
		t.finishCapped()
		t.now = now
		t.expire()
	}
}

// Flush finishes every open connection (EndInput) and forgets all state: the
// end of the input.
func (t *Table) Flush() {
	for id := t.open.head; id != 0; {
		e := t.conns.at(id)
		t.emitConn(e, EndInput)
		id = e.next
	}
	// Forget everything at once: cheaper than removing entries one by one.
	clear(t.index.slots)
	t.capped = t.capped[:0]
	t.index.count = 0
	t.conns.n, t.conns.freeL = 0, 0
	t.open, t.done = list{}, list{}
	t.stats.Open, t.stats.Held = 0, 0
}

func (t *Table) openConn(k *Key, h uint32, r *packet.Record, clientSYN bool) {
	if t.stats.Held >= t.cfg.MaxOpen {
		t.evict()
	}
	id := t.conns.alloc()
	e := t.conns.at(id)
	*e = entry{key: *k, first: r.Timestamp, last: r.Timestamp}
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
	t.stats.Counted++
	e.noteSYN(r, clientSYN)
	v4 := e.key.IPVersion == 4
	t.arrive(e, r.Timestamp, r, v4)
	if int(e.n)+t.heldCount(e) >= t.cfg.PacketCap {
		if e.state&stPending != 0 && e.last == t.now {
			// More packets with the clock's timestamp may come, and one
			// with a lower sequence number comes before some of those
			// held: finish when the clock moves on.
			e.state |= stCapped
			t.capped = append(t.capped, id)
			return
		}
		t.finish(id, EndCap)
	}
}

// reopens reports whether client SYN r starts a new connection on the
// ports of open connection e (EndNewSYN): its initial sequence number is
// not e's SYN's, its timestamp is later than all of e's packets (at one
// timestamp the order is precedes's, and it does not put a SYN after an
// RST), and e has a counted RST or FIN (summarised or held).
func (t *Table) reopens(e *entry, r *packet.Record) bool {
	if (e.state&stHasSYN != 0 && e.synSeq == r.Seq) || r.Timestamp <= e.last {
		return false
	}
	if e.state&stFIN != 0 || e.count(cntRSTs)+e.count(cntRSTACKs) > 0 {
		return true
	}
	const closing = packet.RST | packet.FIN
	switch {
	case e.tie != 0:
		for _, p := range t.ties.group(e.tie) {
			if p.flags&closing != 0 {
				return true
			}
		}
	case e.state&stPending != 0:
		return e.pFlags&closing != 0
	}
	return false
}

// noteSYN keeps what the scanner tags need of the connection's first client
// SYN.
func (e *entry) noteSYN(r *packet.Record, clientSYN bool) {
	if clientSYN && e.state&stHasSYN == 0 {
		e.state |= stHasSYN
		e.synSeq, e.synID = r.Seq, r.IPID
		e.syn = SYN{Window: r.Window, NumOptions: r.NumOptions, DF: r.DF}
		if r.NumOptions > 0 {
			e.syn.FirstOption = r.Options[0]
		}
	}
}

// overCap takes a packet of a connection that is at the cap with packets
// held at the clock's timestamp (stCapped). A packet with that timestamp
// that comes before the last held one in order (precedes) takes that
// packet's place, which goes beyond the cap. Any other packet is beyond
// the cap, except a client SYN with a new initial sequence number: overCap
// then returns true, and the caller finishes the connection so that the
// SYN opens a new one, as it does after a connection is finished.
// (If the packet displaced was the connection's first SYN, the SYN's
// details stay those of the displaced one: with a full group of packets
// sharing one timestamp, the SYN is last in order only when every packet
// of the group is one of its copies.)
func (t *Table) overCap(e *entry, r *packet.Record, clientSYN bool) bool {
	if r.Timestamp != e.last {
		return t.beyond(e, r, clientSYN)
	}
	// The connection's first client SYN is the SYN precedes puts first.
	e.noteSYN(r, clientSYN)
	p := heldPacket{seq: r.Seq, ack: r.Ack, ipid: r.IPID, ttl: r.TTL, flags: r.Flags}
	if e.tie == 0 {
		if !e.precedes(p, e.held()) {
			return t.beyond(e, r, clientSYN)
		}
		e.hold(r.Timestamp, p)
	} else {
		// The last in order (precedes), the last to arrive among equal
		// ones (the sort is stable).
		g := t.ties.group(e.tie)
		m := 0
		for i := 1; i < len(g); i++ {
			if !e.precedes(g[i], g[m]) {
				m = i
			}
		}
		if !e.precedes(p, g[m]) {
			return t.beyond(e, r, clientSYN)
		}
		copy(g[m:], g[m+1:])
		g[len(g)-1] = p
	}
	t.stats.BeyondCap++ // the packet displaced
	return false
}

// beyond counts a packet beyond the cap of a connection at the cap and
// reports false, or reports true for a client SYN with a new initial
// sequence number (a retransmitted SYN has the first SYN's).
func (t *Table) beyond(e *entry, r *packet.Record, clientSYN bool) bool {
	if clientSYN && (e.state&stHasSYN == 0 || e.synSeq != r.Seq) {
		return true
	}
	t.stats.BeyondCap++
	return false
}

// finishCapped finishes the connections waiting at the cap for the clock
// to move on.
func (t *Table) finishCapped() {
	for _, id := range t.capped {
		// An entry may have been evicted since, and its id reused.
		if e := t.conns.at(id); e.state&(stCapped|stDone|stFree) == stCapped {
			t.finish(id, EndCap)
		}
	}
	t.capped = t.capped[:0]
}

// finish hands the open connection id to the callback and turns it into a
// tombstone.
func (t *Table) finish(id uint32, end End) {
	e := t.conns.at(id)
	t.emitConn(e, end)

	// Tombstone: move to the done list.
	e.state |= stDone
	e.state &^= stCapped
	t.open.remove(&t.conns, id)
	e.queued = lastMark(e.last)
	t.done.pushBack(&t.conns, id)
	t.stats.Open--
}

// emitConn hands the open connection e to the callback.
func (t *Table) emitConn(e *entry, end End) {
	if e.state&stCapped != 0 {
		end = EndCap // finished by the input's end or an eviction first
	}
	t.flushHeld(e, e.key.IPVersion == 4)
	t.out = Conn{
		Key:     e.key,
		Summary: e.summary(),
		SYN:     e.syn,
		SYNIPID: e.synID,
		SYNSeq:  e.synSeq,
		HasSYN:  e.state&stHasSYN != 0,
		Cap:     t.cfg.PacketCap,
		Silent:  t.now-e.last >= t.idle,
		End:     end,
	}
	t.stats.Finished++
	if end == EndEvicted {
		t.stats.EvictedOpen++
	}
	if e.state&stReordered != 0 {
		t.stats.Reordered++
	}
	t.emit(&t.out)
}

// remove forgets a tombstone.
func (t *Table) remove(id uint32) {
	e := t.conns.at(id)
	t.index.delete(id, t.index.seed.hash(&e.key), &t.conns)
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

// expire finishes open connections silent for the hold and forgets
// tombstones silent for the linger, from the front of their lists. An entry
// at the front that had packets since it was queued is re-queued at the
// back; each entry is re-queued at most once per call, so the work is
// amortised over the packets that refreshed it.
func (t *Table) expire() {
	for t.open.head != 0 {
		id := t.open.head
		e := t.conns.at(id)
		if t.now-e.last >= t.hold {
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
	m := lastMark(e.last)
	if m == e.queued {
		return false
	}
	e.queued = m
	l.moveToBack(&t.conns, id)
	return true
}

// lastMark is a timestamp in units of 1024 ns, cut to 32 bits: it tells
// whether an entry's last packet time moved since it was queued. It wraps
// every 73 minutes, and only equality is asked of it, so a connection
// active for hours never looks unchanged (a saturating offset did, after
// 36 minutes, and then stopped the expiry behind it); it would look
// unchanged only if its last packet moved by an exact multiple of the
// wrap, and then it merely waits at the front until it expires.
func lastMark(last int64) uint32 { return uint32(last >> 10) }

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
// (every new connection, and its reverse key) reads no entry at all. It
// doubles when it would be more than 2/3 full: with 16 slots to a cache
// line, probes stay short, and the index costs 6 to 12 bytes per held
// connection.
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
	if (x.count+1)*3 > len(x.slots)*2 { // at most 2/3 full
		x.grow(p, id)
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
		home := x.seed.hash(&p.at(s&idMask).key) & x.mask
		// The entry at j may move to i if home is not cyclically in (i, j].
		if (j-home)&x.mask >= (j-i)&x.mask {
			x.slots[i] = s
			i = j
		}
	}
	x.slots[i] = 0
	x.count--
}

// grow doubles the index and inserts every held entry again except skip
// (the one being inserted). It walks the pool in id order, so that the
// hashes are read sequentially rather than one cache miss per slot.
func (x *index) grow(p *connPool, skip uint32) {
	x.slots = makeSlots(len(x.slots) * 2)
	x.mask = uint32(len(x.slots) - 1)
	for id := uint32(1); id < p.n; id++ {
		e := p.at(id)
		if id == skip || e.state&stFree != 0 {
			continue
		}
		h := x.seed.hash(&e.key)
		i := h & x.mask
		for x.slots[i] != 0 {
			i = (i + 1) & x.mask
		}
		x.slots[i] = id | slotTag(h)
	}
}

// makeSlots allocates an index of n slots; a large one is advised for huge
// pages.
func makeSlots(n int) []uint32 {
	s := make([]uint32, n)
	if n*4 >= 2*hugePageSize {
		adviseHuge(unsafe.Pointer(&s[0]), uintptr(n)*4)
	}
	return s
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

// The pool: entries live in one reservation of address space for MaxOpen
// of them (mapped, not touched: the kernel gives memory to the pages that
// are written, so the table's memory is its high-water mark), addressed by
// a 32-bit id (0 is nil), with an intrusive free list. One flat array
// makes an entry's address one multiply-add away from its id.
type connPool struct {
	ents  []entry
	n     uint32 // ids handed out so far, including 0
	freeL uint32
	res   *reservation
}

// reservation is the pool's memory, freed once: by Table.Close or,
// failing that, once the table is garbage.
type reservation struct {
	free func()
	once sync.Once
}

func (r *reservation) release() { r.once.Do(r.free) }

// init reserves room for max entries besides id 0 (see reserve). Beyond
// the first smallEntries, the reservation is advised for huge pages (see
// adviseHuge), so that a small table stays small and a large one is cheap
// to reach.
func (p *connPool) init(t *Table, max int) {
	mem, free := reserve(uintptr(max+1) * unsafe.Sizeof(entry{}))
	p.res = &reservation{free: free}
	p.ents = unsafe.Slice((*entry)(unsafe.Pointer(&mem[0])), max+1)
	if max+1 > smallEntries {
		adviseHuge(unsafe.Pointer(&p.ents[smallEntries]), uintptr(max+1-smallEntries)*unsafe.Sizeof(entry{}))
	}
	runtime.AddCleanup(t, (*reservation).release, p.res)
}

// smallEntries is how many entries a table holds before its memory is
// advised for huge pages: about 2 MiB.
const smallEntries = 16 << 10

func (p *connPool) at(id uint32) *entry { return &p.ents[id] }

// alloc hands out an id; the table never holds more than MaxOpen entries,
// so the reservation is never exceeded.
func (p *connPool) alloc() uint32 {
	if p.freeL != 0 {
		id := p.freeL
		p.freeL = p.at(id).next
		return id
	}
	if p.n == 0 {
		p.n = 1 // id 0 is nil
	}
	id := p.n
	p.n++
	return id
}

func (p *connPool) free(id uint32) {
	*p.at(id) = entry{next: p.freeL, state: stFree}
	p.freeL = id
}
