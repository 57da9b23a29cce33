package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/classify"
)

// Counters are an agent instance's totals as of its latest batch.
type Counters struct {
	PacketsLogged, PacketsLostKernel, ReceiveOverflows, DroppedQueueFull, ReadErrors uint64
}

// Batch is an accepted batch of one agent instance, as ingest journals it.
type Batch struct {
	Instance     string
	Sequence     uint64
	Node, Policy string
	Counters     Counters
	// MaxTS is the latest packet timestamp in the batch (ns).
	MaxTS int64
	// Data is the batch's packets, encoded by ingest.
	Data []byte
}

// Accepted is the outcome of one batch of AcceptAll.
type Accepted struct {
	// Duplicate: the sequence number was not above the highest accepted
	// for the agent instance; nothing was stored.
	Duplicate bool
	// ID is the journal row's (0 when nothing was journaled).
	ID int64
}

// Accept makes b durable, unless its sequence number is not above the
// highest accepted for its agent instance: then it reports a duplicate and
// stores nothing. The batch, with its sequence number, is written to the
// journal and synced to disk before Accept returns, so an acknowledged
// batch is in the journal. id is the journal entry's (0 when it holds no
// data).
func (s *Store) Accept(ctx context.Context, b Batch) (duplicate bool, id int64, err error) {
	res, err := s.AcceptAll(ctx, []Batch{b})
	if err != nil {
		return false, 0, err
	}
	return res[0].Duplicate, res[0].ID, nil
}

// AcceptAll accepts batches in order with one write and one sync to
// disk of the journal (group commit), as Accept does each. Either all
// outcomes hold or, on an error, none.
func (s *Store) AcceptAll(ctx context.Context, bs []Batch) ([]Accepted, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: accept batches: %w", err)
	}
	out, err := s.journal.accept(bs)
	if err != nil {
		return nil, fmt.Errorf("store: accept batches: %w", err)
	}
	return out, nil
}

// EngineCutoffs returns, per engine (node and policy), the time before
// which every connection that began has been counted.
func (s *Store) EngineCutoffs(ctx context.Context) (map[[2]string]int64, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT node, policy, counted_before_ns FROM engines")
	if err != nil {
		return nil, fmt.Errorf("store: read engine cutoffs: %w", err)
	}
	defer rows.Close()
	out := map[[2]string]int64{}
	for rows.Next() {
		var node, policy string
		var ns int64
		if err := rows.Scan(&node, &policy, &ns); err != nil {
			return nil, fmt.Errorf("store: read engine cutoffs: %w", err)
		}
		out[[2]string{node, policy}] = ns
	}
	return out, rows.Err()
}

// ConnID names one counted connection of an engine (node and policy):
// its key, encoded by ingest, and its first packet's timestamp.
type ConnID struct {
	Node, Policy string
	Key          string
	First        int64
}

// Cutoff records how far an engine (node and policy) has counted and lets
// what it no longer needs go.
type Cutoff struct {
	Node, Policy string
	// CountedBefore (ns): every connection of the engine that began before
	// it has been counted (by this commit or an earlier one). It is
	// recorded, and written connections that began before it are deleted.
	CountedBefore int64
	// JournalBefore and MaxID: journal rows with an id up to MaxID whose
	// latest packet is before JournalBefore (ns) are deleted.
	JournalBefore, MaxID int64
}

// Commit is what one transaction writes.
type Commit struct {
	// Delta holds the counts and anomalies to add (may be nil).
	Delta *aggregate.Delta
	// Written are the connections Delta counts whose packets may still
	// be in the journal.
	Written []ConnID
	// Cutoffs delete journal rows and written connections no longer needed.
	Cutoffs []Cutoff
}

// Commit writes c in one transaction, with the agent instances' highest
// sequence numbers and counters accepted since the last, then lets go of
// the journal's segments that c's cutoffs no longer need.
func (s *Store) Commit(ctx context.Context, c Commit) error {
	agents := s.journal.dirtyAgents()
	if err := s.commit(ctx, c, agents); err != nil {
		s.journal.redirty(agents)
		return err
	}
	if err := s.journal.trim(c.Cutoffs); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

func (s *Store) commit(ctx context.Context, c Commit, agents []Agent) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	defer tx.Rollback()
	for _, a := range agents {
		k := a.Counters
		if _, err := tx.ExecContext(ctx, `INSERT INTO agents (instance, node, policy, highest, updated_ns,
			packets_logged, packets_lost_kernel, receive_overflows, packets_dropped_queue_full, read_errors)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (instance) DO UPDATE SET highest = MAX(highest, excluded.highest), updated_ns = excluded.updated_ns,
			packets_logged = excluded.packets_logged, packets_lost_kernel = excluded.packets_lost_kernel,
			receive_overflows = excluded.receive_overflows, packets_dropped_queue_full = excluded.packets_dropped_queue_full,
			read_errors = excluded.read_errors`,
			a.Instance, a.Node, a.Policy, int64(a.Highest), a.Updated.UnixNano(),
			int64(k.PacketsLogged), int64(k.PacketsLostKernel), int64(k.ReceiveOverflows), int64(k.DroppedQueueFull), int64(k.ReadErrors)); err != nil {
			return fmt.Errorf("store: record agents: %w", err)
		}
	}
	if d := c.Delta; d != nil {
		if err := writeCounts(ctx, tx, d); err != nil {
			return err
		}
		if err := s.writeAnomalies(ctx, tx, d); err != nil {
			return err
		}
	}
	if err := writeSets(ctx, tx, c.Written); err != nil {
		return err
	}
	for _, cut := range c.Cutoffs {
		if _, err := tx.ExecContext(ctx, "DELETE FROM journal WHERE node = ? AND policy = ? AND id <= ? AND max_ns < ?",
			cut.Node, cut.Policy, cut.MaxID, cut.JournalBefore); err != nil {
			return fmt.Errorf("store: trim journal: %w", err)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM written_sets WHERE node = ? AND policy = ? AND max_first_ns < ?", cut.Node, cut.Policy, cut.CountedBefore); err != nil {
			return fmt.Errorf("store: trim written connections: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO engines (node, policy, counted_before_ns) VALUES (?, ?, ?)
			ON CONFLICT (node, policy) DO UPDATE SET counted_before_ns = MAX(counted_before_ns, excluded.counted_before_ns)`,
			cut.Node, cut.Policy, cut.CountedBefore); err != nil {
			return fmt.Errorf("store: record engine cutoff: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	if c.Delta != nil && !c.Delta.Empty() {
		s.lastUpdated.Store(time.Now().UnixNano())
	}
	return nil
}

func writeCounts(ctx context.Context, tx *sql.Tx, d *aggregate.Delta) error {
	st, err := tx.PrepareContext(ctx, `INSERT INTO counts (bucket, node, policy, port, ipv, country, asn, kind, name, n)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (bucket, node, policy, port, ipv, country, asn, kind, name) DO UPDATE SET n = n + excluded.n`)
	if err != nil {
		return fmt.Errorf("store: write counts: %w", err)
	}
	defer st.Close()
	for dims, c := range d.Counts {
		put := func(kind, name string, n int64) error {
			if n == 0 {
				return nil
			}
			_, err := st.ExecContext(ctx, dims.Bucket, dims.Node, dims.Policy, int(dims.Port), int(dims.IPVersion),
				dims.Country, int64(dims.ASN), kind, name, n)
			return err
		}
		var err error
		for _, stg := range classify.Stages {
			err = firstErr(err, put(KindStage, stg.String(), c.Stages[stg]))
		}
		for t := classify.Tag(0); t < classify.NumTags; t++ {
			err = firstErr(err, put(KindTag, t.String(), c.Tags[t]))
		}
		for sig := classify.SigNone; sig < classify.NumSignatures; sig++ {
			err = firstErr(err, put(KindSignature, sig.String(), c.Sigs[sig]))
		}
		for _, e := range classify.Exclusions {
			err = firstErr(err, put(KindExcluded, e.String(), c.Excluded[e]))
		}
		if err != nil {
			return fmt.Errorf("store: write counts: %w", err)
		}
	}
	return nil
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func (s *Store) writeAnomalies(ctx context.Context, tx *sql.Tx, d *aggregate.Delta) error {
	as := d.Anomalies
	if n := min(s.maxAnomalies, s.perCommit); len(as) > n {
		as = as[len(as)-n:]
	}
	if len(as) == 0 {
		return nil
	}
	st, err := tx.PrepareContext(ctx, `INSERT INTO anomalies (time_ns, last_ns, node, policy, client, client_port, server, port, ipv,
		country, asn, stage, tags, signature, packets) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("store: write anomalies: %w", err)
	}
	defer st.Close()
	for _, a := range as {
		if _, err := st.ExecContext(ctx, a.Time, a.LastSeen, a.Node, a.Policy, a.Client.String(), int(a.ClientPort),
			a.Server.String(), int(a.Port), int(a.IPVersion), a.Country, int64(a.ASN),
			int(a.Stage), int64(a.Tags), int(a.Signature), a.Packets); err != nil {
			return fmt.Errorf("store: write anomalies: %w", err)
		}
	}
	// The ring: keep the newest maxAnomalies rows.
	if _, err := tx.ExecContext(ctx, "DELETE FROM anomalies WHERE id <= (SELECT MAX(id) FROM anomalies) - ?", s.maxAnomalies); err != nil {
		return fmt.Errorf("store: bound anomalies: %w", err)
	}
	return nil
}

// JournalRow is one journaled batch.
type JournalRow struct {
	ID           int64
	Node, Policy string
	MaxTS        int64
	Data         []byte
}

// Journal calls fn for every journaled batch in the order they were
// accepted: the rows of the journal table (kept by an earlier connscope),
// then the journal's segments. fn must not use the store.
func (s *Store) Journal(ctx context.Context, fn func(JournalRow) error) error {
	if err := s.journalTable(ctx, fn); err != nil {
		return err
	}
	return s.journal.each(fn)
}

func (s *Store) journalTable(ctx context.Context, fn func(JournalRow) error) error {
	rows, err := s.db.QueryContext(ctx, "SELECT id, node, policy, max_ns, batch FROM journal ORDER BY id")
	if err != nil {
		return fmt.Errorf("store: read journal: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r JournalRow
		if err := rows.Scan(&r.ID, &r.Node, &r.Policy, &r.MaxTS, &r.Data); err != nil {
			return fmt.Errorf("store: read journal: %w", err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return rows.Err()
}

// JournalLen returns the number of journaled batches still needed.
func (s *Store) JournalLen(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM journal").Scan(&n)
	return n + s.journal.len(), err
}

// writeSets records counted connections, one row per engine.
func writeSets(ctx context.Context, tx *sql.Tx, ws []ConnID) error {
	type set struct {
		maxFirst int64
		buf      []byte
	}
	sets := map[[2]string]*set{}
	for _, w := range ws {
		k := [2]string{w.Node, w.Policy}
		st := sets[k]
		if st == nil {
			st = &set{maxFirst: w.First}
			sets[k] = st
		}
		st.maxFirst = max(st.maxFirst, w.First)
		st.buf = binary.BigEndian.AppendUint16(st.buf, uint16(len(w.Key)))
		st.buf = append(st.buf, w.Key...)
		st.buf = binary.BigEndian.AppendUint64(st.buf, uint64(w.First))
	}
	for k, st := range sets {
		if _, err := tx.ExecContext(ctx, "INSERT INTO written_sets (node, policy, max_first_ns, conns) VALUES (?, ?, ?, ?)",
			k[0], k[1], st.maxFirst, st.buf); err != nil {
			return fmt.Errorf("store: commit written connections: %w", err)
		}
	}
	return nil
}

// WrittenConns returns the counted connections still recorded, of every
// engine. A connection that began before its engine's cutoff may be
// among them (sets go as a whole once all of theirs began before it).
func (s *Store) WrittenConns(ctx context.Context) (map[ConnID]bool, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT node, policy, conns FROM written_sets")
	if err != nil {
		return nil, fmt.Errorf("store: read written connections: %w", err)
	}
	defer rows.Close()
	out := map[ConnID]bool{}
	for rows.Next() {
		var node, policy string
		var b []byte
		if err := rows.Scan(&node, &policy, &b); err != nil {
			return nil, fmt.Errorf("store: read written connections: %w", err)
		}
		for len(b) > 0 {
			if len(b) < 2 {
				return nil, errors.New("store: read written connections: truncated set")
			}
			n := int(binary.BigEndian.Uint16(b))
			if len(b) < 2+n+8 {
				return nil, errors.New("store: read written connections: truncated set")
			}
			id := ConnID{Node: node, Policy: policy, Key: string(b[2 : 2+n]), First: int64(binary.BigEndian.Uint64(b[2+n:]))}
			out[id] = true
			b = b[2+n+8:]
		}
	}
	return out, rows.Err()
}

// Agent is what the store knows of an agent instance.
type Agent struct {
	Instance, Node, Policy string
	Highest                uint64
	Updated                time.Time
	Counters               Counters
}

// Agents returns the known agent instances.
func (s *Store) Agents(ctx context.Context) ([]Agent, error) {
	s.journal.mu.Lock()
	out := make([]Agent, 0, len(s.journal.agents))
	for inst, a := range s.journal.agents {
		out = append(out, Agent{Instance: inst, Node: a.node, Policy: a.policy, Highest: a.highest,
			Updated: time.Unix(0, a.updated), Counters: a.counters})
	}
	s.journal.mu.Unlock()
	slices.SortFunc(out, func(a, b Agent) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.Policy, b.Policy), cmp.Compare(a.Instance, b.Instance))
	})
	return out, nil
}

// loadAgents reads the agents table.
func (s *Store) loadAgents(ctx context.Context) (map[string]*agentState, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT instance, node, policy, highest, updated_ns, packets_logged, packets_lost_kernel,
		receive_overflows, packets_dropped_queue_full, read_errors FROM agents`)
	if err != nil {
		return nil, fmt.Errorf("read agents: %w", err)
	}
	defer rows.Close()
	out := map[string]*agentState{}
	for rows.Next() {
		var inst string
		var a agentState
		var hi, c1, c2, c3, c4, c5 int64
		if err := rows.Scan(&inst, &a.node, &a.policy, &hi, &a.updated, &c1, &c2, &c3, &c4, &c5); err != nil {
			return nil, fmt.Errorf("read agents: %w", err)
		}
		a.highest = uint64(hi)
		a.counters = Counters{uint64(c1), uint64(c2), uint64(c3), uint64(c4), uint64(c5)}
		out[inst] = &a
	}
	return out, rows.Err()
}
