package store

// The journal of accepted batches: append-only segment files beside the
// database (<database>.batches/<first id>.seg), one write and one
// fdatasync per group of batches. A batch's packets are written once,
// sequentially, instead of into SQLite's pages and write-ahead log (which
// cost more CPU than the rest of accepting a batch).
//
// An entry is: length (4 bytes, of what follows the checksum), CRC-32C of
// what follows, then the entry id, sequence number, latest packet time,
// acceptance time and the agent's five counters (8 bytes each), then the
// node, policy and agent instance (2-byte length, bytes each), then the
// batch's data. Integers are big-endian.
//
// What it keeps and when:
//   - Dedupe: the highest sequence number per agent instance lives in
//     memory, loaded at open from the agents table and from the entries
//     in the segments. Commit writes it (and the latest counters) to the
//     agents table in its transaction, before it deletes any segment, so
//     a sequence number is always in the table or in a segment.
//   - Trimming: Commit's cutoffs mark entries as no longer needed, in
//     memory; a segment goes (unlinked after the transaction committed)
//     once all of its entries are, and it is no longer the one written.
//     Marked entries of a kept segment, or of a segment not yet unlinked
//     at a crash, are replayed after a restart: they hold only
//     connections that began before their engine's recorded cutoff, which
//     replay skips (package ingest).
//   - A crash in the middle of a write leaves a torn entry at the end of
//     the last segment, of batches never acknowledged: Open cuts it off. A
//     bad entry anywhere else is corruption and Open fails, naming it.
//   - The journal table of schema 1 and 2 is still read (its rows first)
//     and trimmed, so batches journaled by an earlier connscope are kept.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// segmentSize is the size after which a segment is closed and a new one
// begun; segmentAge is the age after which Commit does so (variables for
// tests).
var (
	segmentSize int64 = 64 << 20
	segmentAge        = 30 * time.Second
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// entryFixed is the size of an entry's fixed fields after the checksum.
const entryFixed = 9 * 8

type entryMeta struct {
	id           int64
	node, policy string
	maxTS        int64
	gone         bool // no longer needed (a cutoff passed it)
}

type segment struct {
	path    string
	entries []entryMeta
	live    int
}

// agentState is what the journal knows of an agent instance.
type agentState struct {
	node, policy string
	highest      uint64
	updated      int64
	counters     Counters
	dirty        bool // changed since the agents table was written
}

type journal struct {
	mu     sync.Mutex
	dir    string
	f      *os.File // the segment written, segs[len(segs)-1]
	size   int64
	opened time.Time
	segs   []*segment
	next   int64 // the next entry id
	live   int
	agents map[string]*agentState
	buf    []byte
	broken error // a failed write that could not be undone
}

// openJournal reads the segments in dir (creating it), cutting a torn
// entry off the last one. agents holds the agents table's instances; next
// is above every id in use.
func openJournal(dir string, agents map[string]*agentState, next int64) (*journal, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	j := &journal{dir: dir, agents: agents, next: next}
	names, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	sort.Slice(names, func(a, b int) bool { return segFirst(names[a]) < segFirst(names[b]) })
	for i, name := range names {
		seg, size, err := j.readSegment(name, i == len(names)-1)
		if err != nil {
			return nil, err
		}
		j.segs = append(j.segs, seg)
		if i == len(names)-1 {
			j.size = size
		}
	}
	// With no segment yet, the first accept begins one (opening stays
	// free of syncs to disk).
	if len(j.segs) > 0 {
		last := j.segs[len(j.segs)-1]
		if j.f, err = os.OpenFile(last.path, os.O_WRONLY, 0); err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		j.opened = time.Now()
	}
	return j, nil
}

func segFirst(name string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSuffix(filepath.Base(name), ".seg"), 10, 64)
	return n
}

// readSegment reads one segment's entries; the last segment may end in a
// torn entry, which is cut off.
func (j *journal) readSegment(name string, last bool) (*segment, int64, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, 0, fmt.Errorf("journal: %w", err)
	}
	seg := &segment{path: name}
	off := 0
	for off < len(b) {
		e, n, ok := decodeEntry(b[off:])
		if !ok {
			if !last {
				return nil, 0, fmt.Errorf("journal: segment %s is corrupt at byte %d (not its last segment: not a torn write); move it away to start, losing its batches", name, off)
			}
			if err := os.Truncate(name, int64(off)); err != nil {
				return nil, 0, fmt.Errorf("journal: cut the torn end of %s: %w", name, err)
			}
			break
		}
		empty := len(e.Data) == 0
		seg.entries = append(seg.entries, entryMeta{id: e.ID, node: e.Node, policy: e.Policy, maxTS: e.MaxTS, gone: empty})
		if !empty {
			seg.live++
			j.live++
		}
		j.next = max(j.next, e.ID+1)
		a := j.agents[e.instance]
		if a == nil {
			a = &agentState{}
			j.agents[e.instance] = a
		}
		if e.seq > a.highest {
			*a = agentState{node: e.Node, policy: e.Policy, highest: e.seq, updated: e.updated, counters: e.counters, dirty: true}
		}
		off += n
	}
	return seg, int64(off), nil
}

type entry struct {
	JournalRow
	instance string
	seq      uint64
	updated  int64
	counters Counters
}

func decodeEntry(b []byte) (e entry, n int, ok bool) {
	if len(b) < 8 {
		return e, 0, false
	}
	size := int(binary.BigEndian.Uint32(b))
	if size < entryFixed+6 || len(b) < 8+size {
		return e, 0, false
	}
	body := b[8 : 8+size]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[4:]) {
		return e, 0, false
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(body[8*i:]) }
	e.ID, e.seq, e.MaxTS, e.updated = int64(u(0)), u(1), int64(u(2)), int64(u(3))
	e.counters = Counters{u(4), u(5), u(6), u(7), u(8)}
	rest := body[entryFixed:]
	str := func() (string, bool) {
		if len(rest) < 2 {
			return "", false
		}
		l := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+l {
			return "", false
		}
		s := string(rest[2 : 2+l])
		rest = rest[2+l:]
		return s, true
	}
	var ok1, ok2, ok3 bool
	e.Node, ok1 = str()
	e.Policy, ok2 = str()
	e.instance, ok3 = str()
	if !ok1 || !ok2 || !ok3 {
		return e, 0, false
	}
	e.Data = rest
	return e, 8 + size, true
}

func appendEntry(dst []byte, id int64, b *Batch, updated int64) []byte {
	at := len(dst)
	dst = append(dst, make([]byte, 8)...)
	c := b.Counters
	for _, v := range []uint64{uint64(id), b.Sequence, uint64(b.MaxTS), uint64(updated),
		c.PacketsLogged, c.PacketsLostKernel, c.ReceiveOverflows, c.DroppedQueueFull, c.ReadErrors} {
		dst = binary.BigEndian.AppendUint64(dst, v)
	}
	for _, s := range []string{b.Node, b.Policy, b.Instance} {
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
		dst = append(dst, s...)
	}
	dst = append(dst, b.Data...)
	body := dst[at+8:]
	binary.BigEndian.PutUint32(dst[at:], uint32(len(body)))
	binary.BigEndian.PutUint32(dst[at+4:], crc32.Checksum(body, castagnoli))
	return dst
}

// rotate begins a new segment, its directory entry synced so that what
// is acknowledged from it is found after a crash.
func (j *journal) rotate() error {
	path := filepath.Join(j.dir, fmt.Sprintf("%020d.seg", j.next))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := syncDir(j.dir); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("journal: %w", err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.size, j.opened = f, 0, time.Now()
	j.segs = append(j.segs, &segment{path: path})
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// accept journals the batches that are not duplicates, with one write and
// one fdatasync, and returns their outcomes; all or nothing.
func (j *journal) accept(bs []Batch) ([]Accepted, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.broken != nil {
		return nil, j.broken
	}
	if j.f == nil || j.size >= segmentSize {
		if err := j.rotate(); err != nil {
			return nil, err
		}
	}
	out := make([]Accepted, len(bs))
	now := time.Now().UnixNano()
	j.buf = j.buf[:0]
	highest := map[string]uint64{} // within this group
	id := j.next
	for i := range bs {
		b := &bs[i]
		h, ok := highest[b.Instance]
		if !ok {
			if a := j.agents[b.Instance]; a != nil {
				h = a.highest
			}
		}
		if b.Sequence <= h {
			out[i].Duplicate = true
			continue
		}
		highest[b.Instance] = b.Sequence
		j.buf = appendEntry(j.buf, id, b, now)
		out[i].ID = id
		id++
	}
	if len(j.buf) == 0 {
		return out, nil
	}
	if _, err := j.f.WriteAt(j.buf, j.size); err != nil {
		return nil, j.undo(err)
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return nil, j.undo(err)
	}
	j.size += int64(len(j.buf))
	j.next = id
	seg := j.segs[len(j.segs)-1]
	for i := range bs {
		b := &bs[i]
		if out[i].Duplicate {
			continue
		}
		// An entry without data is there for its sequence number only:
		// nothing waits for a cutoff to let it go.
		empty := len(b.Data) == 0
		seg.entries = append(seg.entries, entryMeta{id: out[i].ID, node: b.Node, policy: b.Policy, maxTS: b.MaxTS, gone: empty})
		if !empty {
			seg.live++
			j.live++
		}
		a := j.agents[b.Instance]
		if a == nil {
			a = &agentState{}
			j.agents[b.Instance] = a
		}
		*a = agentState{node: b.Node, policy: b.Policy, highest: b.Sequence, updated: now, counters: b.Counters, dirty: true}
		if len(b.Data) == 0 {
			out[i].ID = 0 // nothing to replay
		}
	}
	return out, nil
}

// undo cuts off what a failed write or sync may have left, so that the
// segment ends with a whole entry; if it cannot, the journal refuses
// every later batch.
func (j *journal) undo(err error) error {
	err = fmt.Errorf("journal: %w", err)
	if terr := j.f.Truncate(j.size); terr != nil {
		j.broken = fmt.Errorf("%w; and cutting it off failed: %v; restart the classifier", err, terr)
		return j.broken
	}
	return err
}

// dirtyAgents returns the instances changed since the last call, for the
// agents table.
func (j *journal) dirtyAgents() []Agent {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Agent
	for inst, a := range j.agents {
		if a.dirty {
			out = append(out, Agent{Instance: inst, Node: a.node, Policy: a.policy, Highest: a.highest,
				Updated: time.Unix(0, a.updated), Counters: a.counters})
			a.dirty = false
		}
	}
	return out
}

// redirty marks instances changed again (their write failed).
func (j *journal) redirty(as []Agent) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, a := range as {
		if st := j.agents[a.Instance]; st != nil {
			st.dirty = true
		}
	}
}

// trim marks the entries cuts let go and removes the segments all of
// whose entries went, except the one written; it also begins a new
// segment when the one written is old enough, so that it can go later.
func (j *journal) trim(cuts []Cutoff) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	byEngine := map[[2]string]Cutoff{}
	for _, c := range cuts {
		byEngine[[2]string{c.Node, c.Policy}] = c
	}
	for _, seg := range j.segs {
		for i := range seg.entries {
			e := &seg.entries[i]
			c, ok := byEngine[[2]string{e.node, e.policy}]
			if !e.gone && ok && e.id <= c.MaxID && e.maxTS < c.JournalBefore {
				e.gone = true
				seg.live--
				j.live--
			}
		}
	}
	if j.f != nil && j.size > 0 && time.Since(j.opened) >= segmentAge {
		if err := j.rotate(); err != nil {
			return err
		}
	}
	if len(j.segs) == 0 {
		return nil
	}
	var err error
	current := j.segs[len(j.segs)-1]
	j.segs = slices.DeleteFunc(j.segs, func(seg *segment) bool {
		if seg.live > 0 || seg == current {
			return false
		}
		if rerr := os.Remove(seg.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
			return false
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("journal: remove a segment: %w", err)
	}
	return nil
}

// forget drops instances not heard of since before (retention); their
// batches are long gone.
func (j *journal) forget(before int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for inst, a := range j.agents {
		if a.updated < before && !a.dirty {
			delete(j.agents, inst)
		}
	}
}

// each calls fn for every entry with data not yet let go, in order.
func (j *journal) each(fn func(JournalRow) error) error {
	j.mu.Lock()
	segs := slices.Clone(j.segs)
	size := j.size
	j.mu.Unlock()
	for i, seg := range segs {
		b, err := os.ReadFile(seg.path)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if i == len(segs)-1 {
			b = b[:min(int64(len(b)), size)]
		}
		k := 0 // seg.entries[k] is the next entry's
		for off := 0; off < len(b); {
			e, n, ok := decodeEntry(b[off:])
			if !ok {
				return fmt.Errorf("journal: segment %s is corrupt at byte %d", seg.path, off)
			}
			off += n
			for k < len(seg.entries) && seg.entries[k].id < e.ID {
				k++
			}
			if k < len(seg.entries) && seg.entries[k].id == e.ID && seg.entries[k].gone {
				continue
			}
			if len(e.Data) > 0 {
				if err := fn(e.JournalRow); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (j *journal) len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.live
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
