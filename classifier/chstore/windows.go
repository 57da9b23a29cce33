package chstore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/geo"
	"github.com/connscope/connscope/classifier/store"
	"github.com/connscope/connscope/internal/chclient"
	"github.com/connscope/connscope/packet"
)

// Defaults of ClassifierConfig.
const (
	DefaultWindow   = 15 * time.Minute
	DefaultGuard    = 10 * time.Second
	DefaultDelay    = 30 * time.Second
	DefaultParts    = 8
	DefaultClaimTTL = 10 * time.Minute
	DefaultPoll     = 5 * time.Second
	// MaxParts bounds ClassifierConfig.Parts: a part is at least one of
	// the chclient.Buckets hash buckets.
	MaxParts = chclient.Buckets
)

// ClassifierConfig configures a classifier replica.
type ClassifierConfig struct {
	// Window is the length of the windows queried (the seed's 15
	// minutes). Windows start at multiples of Window since the epoch. All
	// replicas of a database must use the same.
	Window time.Duration
	// Guard: a connection the engine has not finished (no cap) whose last
	// packet is within Guard of the window's end is not judged in that
	// window: its packets are carried into the next one (the seed excludes
	// flows whose last packet is within 10 s of the cutoff). At least the
	// flow's hold (flow.Config.Hold), after which a silent connection is
	// finished anyway.
	Guard time.Duration
	// Delay is how long after a window's end it is queried, so that the
	// agents' batches (their flush interval, retries) have arrived.
	// Packets inserted later than that are not counted.
	Delay time.Duration
	// Parts is the number of parts a window is classified in when this
	// replica is the first to claim one of its parts; a window keeps the
	// part count of its first claim. Replicas share the parts of a window.
	Parts int
	// Replica names the replica in claims and commits (a pod name).
	Replica string
	// ClaimTTL is how long a claim holds: a part claimed by a replica that
	// died is taken over after it.
	ClaimTTL time.Duration
	// Poll is how often Run looks for closed windows.
	Poll time.Duration
	// Start is the first window classified when the database has no commit
	// yet (zero: the window of the oldest packet).
	Start time.Time
	// Flow is the engine's configuration (packet cap, idle timeout, hold).
	Flow flow.Config
	// Geo resolves clients' countries and ASNs; nil means unknown.
	Geo *geo.DB
	// Logger logs progress and errors; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Validate fills defaults and checks the configuration.
func (c *ClassifierConfig) Validate() error {
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.Guard == 0 {
		c.Guard = DefaultGuard
	}
	if c.Delay == 0 {
		c.Delay = DefaultDelay
	}
	if c.Parts == 0 {
		c.Parts = DefaultParts
	}
	if c.ClaimTTL == 0 {
		c.ClaimTTL = DefaultClaimTTL
	}
	if c.Poll == 0 {
		c.Poll = DefaultPoll
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if err := c.Flow.Validate(); err != nil {
		return err
	}
	var errs []error
	if c.Window < time.Second || c.Window > 24*time.Hour || (24*time.Hour)%c.Window != 0 {
		errs = append(errs, fmt.Errorf("window %s: want a divisor of 24h of at least 1s, e.g. 15m", c.Window))
	}
	if c.Guard < c.Flow.Hold {
		errs = append(errs, fmt.Errorf("window guard %s is shorter than the hold %s (a connection silent for less may still get packets)", c.Guard, c.Flow.Hold))
	}
	if c.Guard >= c.Window || c.Flow.Linger >= c.Window {
		errs = append(errs, fmt.Errorf("window %s must be longer than the guard %s and the linger %s", c.Window, c.Guard, c.Flow.Linger))
	}
	if c.Delay < 0 {
		errs = append(errs, fmt.Errorf("window delay %s is negative", c.Delay))
	}
	if c.Parts < 1 || c.Parts > MaxParts {
		errs = append(errs, fmt.Errorf("parts %d: want 1 to %d", c.Parts, MaxParts))
	}
	if c.Replica == "" {
		errs = append(errs, errors.New("no replica name"))
	}
	if c.ClaimTTL < time.Second {
		errs = append(errs, fmt.Errorf("claim TTL %s is shorter than 1s", c.ClaimTTL))
	}
	return errors.Join(errs...)
}

// Classifier is one classifier replica over a Store.
//
// # Windows
//
// Window w covers packets with timestamps in [w, w+Window). It is closed,
// and may be classified, once the clock is past w+Window+Delay. Windows are
// classified in order: window w only once every part of w-Window is
// committed, so that it can take their carried packets.
//
// # Shards
//
// A window is split into parts: part p of P holds the connections whose
// endpoint bucket (chclient.Bucket, computed by the agent at insert) is p
// modulo P. A replica claims a part (the earliest live claim of a part
// wins; a claim expires after ClaimTTL, so the part of a replica that died
// is taken over), classifies it, and commits it. With n replicas each takes
// about P/n parts of every window; adding or removing a replica changes
// who takes which part of the next windows, never what a part holds, and a
// part is counted once whoever classifies it: its rows count only under
// the run of its earliest commit.
//
// # Judging a part
//
// The part's carried packets (from the previous window's committed runs)
// and its packets of the window go, in timestamp order, through a fresh
// flow table, whose clock is then advanced to the window's end and
// flushed. Each connection the engine hands back is then:
//   - already counted in an earlier window (its key and first packet are in
//     the carried "done" list): not counted again;
//   - not finished by the engine (no cap, no port reuse) and last seen
//     within Guard of the window's end: not judged; carried;
//   - otherwise judged (classify) and counted (aggregate), and written.
//
// The packets of every connection (both directions, by endpoint pair)
// with a packet within max(Guard, Linger) of the window's end are carried
// into the next window, with the list of those of its connections already
// counted, so that the next window rebuilds them exactly as a single pass
// over all packets would have them: open connections continue, and late
// packets of finished ones are recognised as such rather than opening
// connections without a SYN. The result is the offline engine's on the
// same packets (tested), except that the offline engine judges what is
// open at the end of its input as incomplete, whereas here it waits for
// the next window.
//
// A batch an agent inserted twice (the insert succeeded, the answer was
// lost, the agent sent it again) is read once: rows are named by (agent,
// batch, row) and read in that order after the timestamp.
type Classifier struct {
	s   *Store
	cfg ClassifierConfig
	agg aggregate.Aggregator

	// Stats of the parts this replica classified; Stats may be called
	// from any goroutine (a metrics scrape).
	statsMu sync.Mutex
	stats   Stats

	// beforeCommit, when set (tests), runs between a part's writes and
	// its commit; an error aborts the part there.
	beforeCommit func() error
}

// Stats count what a replica did.
type Stats struct {
	Windows, Parts, Packets, Duplicates, Connections, Carried int64
	// Busy is the time spent classifying parts (reading, judging, writing).
	Busy time.Duration
}

// NewClassifier returns a replica over s.
func NewClassifier(s *Store, cfg ClassifierConfig) (*Classifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ClickHouse classifier: %w", err)
	}
	return &Classifier{s: s, cfg: cfg, agg: aggregate.Aggregator{Geo: cfg.Geo}}, nil
}

// Stats returns the replica's counters.
func (k *Classifier) Stats() Stats {
	k.statsMu.Lock()
	defer k.statsMu.Unlock()
	return k.stats
}

// Run classifies closed windows until ctx ends. ClickHouse errors are
// logged and retried after Poll; the replica then resumes from the last
// committed window.
func (k *Classifier) Run(ctx context.Context) error {
	for {
		n, err := k.RunOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			k.cfg.Logger.Warn("ClickHouse classifier: will retry", "err", err, "after", k.cfg.Poll)
		}
		if n > 0 && err == nil {
			continue
		}
		t := time.NewTimer(k.cfg.Poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// RunOnce classifies every closed window it can and returns the number of
// parts it classified. It returns early when the next window's parts are
// all claimed by others but not committed yet (call again later).
func (k *Classifier) RunOnce(ctx context.Context) (int, error) {
	done := 0
	for ctx.Err() == nil {
		w, ok, err := k.nextWindow(ctx)
		if err != nil || !ok {
			return done, err
		}
		if k.cfg.Now().UnixNano() < w+int64(k.cfg.Window)+int64(k.cfg.Delay) {
			return done, nil // not closed yet
		}
		n, complete, err := k.window(ctx, w)
		done += n
		if err != nil {
			return done, err
		}
		if !complete {
			return done, nil
		}
		k.statsMu.Lock()
		k.stats.Windows++
		k.statsMu.Unlock()
	}
	return done, ctx.Err()
}

// Pending reports whether a closed window is not completely committed yet
// (its remaining parts may be claimed by other replicas).
func (k *Classifier) Pending(ctx context.Context) (bool, error) {
	w, ok, err := k.nextWindow(ctx)
	if err != nil || !ok {
		return false, err
	}
	return k.cfg.Now().UnixNano() >= w+int64(k.cfg.Window)+int64(k.cfg.Delay), nil
}

// nextWindow returns the first window not completely committed.
func (k *Classifier) nextWindow(ctx context.Context) (int64, bool, error) {
	// The latest window with every part committed. Windows complete in
	// order, so the next one follows it.
	rows, err := k.s.c.QueryTSV(ctx, `SELECT win FROM commits GROUP BY win HAVING uniqExact(part) >= max(parts) ORDER BY win DESC LIMIT 1`)
	if err != nil {
		return 0, false, fmt.Errorf("read commits: %w", err)
	}
	if len(rows) == 1 {
		w, err := strconv.ParseInt(rows[0][0], 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("read commits: %w", err)
		}
		return w + int64(k.cfg.Window), true, nil
	}
	if !k.cfg.Start.IsZero() {
		return k.windowOf(k.cfg.Start.UnixNano()), true, nil
	}
	rows, err = k.s.c.QueryTSV(ctx, "SELECT min(ts), count() FROM packets")
	if err != nil {
		return 0, false, fmt.Errorf("read packets: %w", err)
	}
	if len(rows) != 1 || len(rows[0]) != 2 || rows[0][1] == "0" {
		return 0, false, nil // nothing yet
	}
	ts, err := strconv.ParseInt(rows[0][0], 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("read packets: %w", err)
	}
	return k.windowOf(ts), true, nil
}

func (k *Classifier) windowOf(ns int64) int64 {
	w := int64(k.cfg.Window)
	s := ns - ns%w
	if ns < 0 && ns%w != 0 {
		s -= w
	}
	return s
}

// window classifies the parts of window w this replica can claim. It
// reports whether every part of w is committed afterwards.
func (k *Classifier) window(ctx context.Context, w int64) (int, bool, error) {
	parts, err := k.partsOf(ctx, w)
	if err != nil {
		return 0, false, err
	}
	committed, err := k.committedParts(ctx, w)
	if err != nil {
		return 0, false, err
	}
	// Start at a part that depends on the replica's name, so that
	// replicas starting together mostly claim different parts.
	h := fnv.New32a()
	h.Write([]byte(k.cfg.Replica))
	off := int(h.Sum32() % uint32(parts))
	n := 0
	for i := range parts {
		p := (off + i) % parts
		if committed[p] {
			continue
		}
		run, ok, err := k.claim(ctx, w, p, parts)
		if err != nil {
			return n, false, err
		}
		if !ok {
			continue
		}
		if err := k.part(ctx, w, p, parts, run); err != nil {
			return n, false, fmt.Errorf("window %s part %d/%d: %w", time.Unix(0, w).UTC().Format(time.RFC3339), p, parts, err)
		}
		n++
	}
	committed, err = k.committedParts(ctx, w)
	if err != nil {
		return n, false, err
	}
	return n, len(committed) >= parts, nil
}

// partsOf returns the part count of window w: that of its earliest claim,
// or this replica's configuration.
func (k *Classifier) partsOf(ctx context.Context, w int64) (int, error) {
	rows, err := k.s.c.QueryTSV(ctx, fmt.Sprintf("SELECT parts FROM claims WHERE win = %d ORDER BY claimed_at, run LIMIT 1", w))
	if err != nil {
		return 0, fmt.Errorf("read claims: %w", err)
	}
	if len(rows) == 1 {
		p, err := strconv.Atoi(rows[0][0])
		if err == nil && p >= 1 && p <= MaxParts {
			return p, nil
		}
	}
	return k.cfg.Parts, nil
}

func (k *Classifier) committedParts(ctx context.Context, w int64) (map[int]bool, error) {
	rows, err := k.s.c.QueryTSV(ctx, fmt.Sprintf("SELECT DISTINCT part FROM commits WHERE win = %d", w))
	if err != nil {
		return nil, fmt.Errorf("read commits: %w", err)
	}
	out := map[int]bool{}
	for _, r := range rows {
		p, _ := strconv.Atoi(r[0])
		out[p] = true
	}
	return out, nil
}

// claim tries to claim part p of window w. It returns the run id to write
// under and true when this replica holds the earliest live claim.
func (k *Classifier) claim(ctx context.Context, w int64, p, parts int) (string, bool, error) {
	now := k.cfg.Now().UnixNano()
	run := newRun()
	earliest := func() ([]string, error) {
		// Claims of this replica's name other than run are its own from
		// before a restart: they do not hold it off.
		rows, err := k.s.c.QueryTSV(ctx, fmt.Sprintf("SELECT replica, run FROM claims WHERE win = %d AND part = %d AND expires > %d AND (replica != %s OR run = %s) ORDER BY claimed_at, run LIMIT 1",
			w, p, now, chclient.Quote(k.cfg.Replica), chclient.Quote(run)))
		if err != nil {
			return nil, fmt.Errorf("read claims: %w", err)
		}
		if len(rows) == 0 {
			return nil, nil
		}
		return rows[0], nil
	}
	cur, err := earliest()
	if err != nil {
		return "", false, err
	}
	if cur != nil {
		return "", false, nil // another replica holds it
	}
	var b rowbin
	b.day(w)
	b.i64(w)
	b.u16(uint16(p))
	b.u16(uint16(parts))
	b.str(k.cfg.Replica)
	b.str(run)
	b.i64(now)
	b.i64(now + int64(k.cfg.ClaimTTL))
	if err := k.s.c.Insert(ctx, "INSERT INTO claims (day, win, part, parts, replica, run, claimed_at, expires) FORMAT RowBinary", b); err != nil {
		return "", false, fmt.Errorf("claim: %w", err)
	}
	cur, err = earliest()
	if err != nil {
		return "", false, err
	}
	return run, cur != nil && cur[1] == run, nil
}

func newRun() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// pairKey names a connection's two endpoints in a fixed order.
type pairKey struct {
	a, b [18]byte
}

func pairOf(ip1 [16]byte, p1 uint16, ip2 [16]byte, p2 uint16) pairKey {
	var k pairKey
	copy(k.a[:], ip1[:])
	binary.BigEndian.PutUint16(k.a[16:], p1)
	copy(k.b[:], ip2[:])
	binary.BigEndian.PutUint16(k.b[16:], p2)
	if string(k.a[:]) > string(k.b[:]) {
		k.a, k.b = k.b, k.a
	}
	return k
}

type pairInfo struct {
	last         int64
	node, policy string
}

type doneKey struct {
	key   flow.Key
	first int64
}

// part classifies part p of window w under run and commits it.
func (k *Classifier) part(ctx context.Context, w int64, p, parts int, run string) error {
	start := time.Now()
	end := w + int64(k.cfg.Window)
	prev, err := k.prevRuns(ctx, w-int64(k.cfg.Window))
	if err != nil {
		return err
	}
	shard := fmt.Sprintf("bucket %% %d = %d", parts, p)

	// The rows: carried ones first (all older than w), then the window's.
	var rows []chclient.Row
	done := map[doneKey]bool{}
	if len(prev) > 0 {
		runs := "(" + strings.Join(prev, ", ") + ")"
		if rows, err = k.readRows(ctx, rows, fmt.Sprintf("SELECT %s FROM carry WHERE win = %d AND %s AND run IN %s ORDER BY ts, agent, batch, idx FORMAT RowBinary",
			chclient.PacketColumns, w, shard, runs)); err != nil {
			return fmt.Errorf("read carried packets: %w", err)
		}
		if err := k.readDone(ctx, done, fmt.Sprintf("SELECT client_ip, server_ip, client_port, server_port, ip_version, first_seen FROM carry_done WHERE win = %d AND %s AND run IN %s FORMAT RowBinary",
			w, shard, runs)); err != nil {
			return fmt.Errorf("read carried connections: %w", err)
		}
	}
	carriedIn := len(rows)
	if rows, err = k.readRows(ctx, rows, fmt.Sprintf("SELECT %s FROM packets WHERE day >= %s AND day <= %s AND ts >= %d AND ts < %d AND %s ORDER BY ts, agent, batch, idx FORMAT RowBinary",
		chclient.PacketColumns, dateLiteral(w), dateLiteral(end-1), w, end, shard)); err != nil {
		return fmt.Errorf("read packets: %w", err)
	}
	// A batch inserted twice: identical rows, adjacent in this order.
	dups := 0
	if len(rows) > carriedIn {
		out := carriedIn + 1
		for i := carriedIn + 1; i < len(rows); i++ {
			a, b := &rows[out-1], &rows[i]
			if a.Rec.Timestamp == b.Rec.Timestamp && a.Agent == b.Agent && a.Batch == b.Batch && a.Idx == b.Idx {
				dups++
				continue
			}
			rows[out] = rows[i]
			out++
		}
		rows = rows[:out]
	}

	pairs := make(map[pairKey]*pairInfo, len(rows)/4+1)
	recs := make([]packet.Record, len(rows))
	for i := range rows {
		r := &rows[i].Rec
		recs[i] = *r
		pk := pairOf(r.SrcIP, r.SrcPort, r.DstIP, r.DstPort)
		pi := pairs[pk]
		if pi == nil {
			pi = &pairInfo{node: rows[i].Node, policy: rows[i].Policy}
			pairs[pk] = pi
		}
		pi.last = max(pi.last, r.Timestamp)
	}
	keep := end - max(int64(k.cfg.Guard), int64(k.cfg.Flow.Linger))
	guard := end - int64(k.cfg.Guard)

	delta := aggregate.NewDelta(1)
	var conns rowbin
	var doneOut rowbin
	nConns, nCarried := 0, 0
	emit := func(c *flow.Conn) {
		pi := pairs[pairOf(c.ClientIP, c.ClientPort, c.ServerIP, c.ServerPort)]
		dk := doneKey{key: c.Key, first: c.Summary.FirstSeen}
		carried := pi != nil && pi.last >= keep
		counted := func() {
			if carried {
				appendDone(&doneOut, end, run, &c.Key, c.Summary.FirstSeen)
			}
		}
		if done[dk] {
			counted()
			return
		}
		if (c.End == flow.EndIdle || c.End == flow.EndInput) && c.Summary.LastSeen >= guard {
			nCarried++
			return
		}
		node, policy := "", ""
		if pi != nil {
			node, policy = pi.node, pi.policy
		}
		r := classify.Classify(c)
		k.agg.Add(delta, node, policy, c, r)
		appendConn(&conns, w, p, run, node, policy, c, r, k.cfg.Geo)
		nConns++
		counted()
	}
	tab, err := flow.New(k.cfg.Flow, emit)
	if err != nil {
		return err
	}
	defer tab.Close()
	for i := 0; i < len(recs); i += 256 {
		if err := tab.AddBatch(recs[i:min(i+256, len(recs))]); err != nil {
			return fmt.Errorf("engine: %w", err)
		}
	}
	tab.Advance(end)
	tab.Flush()

	// Carried packets.
	var carry rowbin
	nCarryRows := 0
	for i := range rows {
		r := &rows[i].Rec
		if pairs[pairOf(r.SrcIP, r.SrcPort, r.DstIP, r.DstPort)].last < keep {
			continue
		}
		carry.i64(end)
		carry.str(run)
		carry = chclient.AppendRow(carry, &rows[i])
		nCarryRows++
	}

	var counts rowbin
	for d, c := range delta.Counts {
		add := func(kind, name string, n int64) {
			if n == 0 {
				return
			}
			counts.day(d.Bucket * int64(time.Second))
			counts.i64(w)
			counts.u16(uint16(p))
			counts.str(run)
			counts.i64(d.Bucket)
			counts.str(d.Node)
			counts.str(d.Policy)
			counts.u16(d.Port)
			counts.u8(d.IPVersion)
			counts.str(d.Country)
			counts.u32(d.ASN)
			counts.str(kind)
			counts.str(name)
			counts.i64(n)
		}
		for _, st := range classify.Stages {
			add(store.KindStage, st.String(), c.Stages[st])
		}
		for t := classify.Tag(0); t < classify.NumTags; t++ {
			add(store.KindTag, t.String(), c.Tags[t])
		}
		for sig := classify.Signature(0); sig < classify.NumSignatures; sig++ {
			add(store.KindSignature, sig.String(), c.Sigs[sig])
		}
		for _, e := range classify.Exclusions {
			add(store.KindExcluded, e.String(), c.Excluded[e])
		}
	}

	inserts := []struct {
		what, q string
		data    rowbin
	}{
		{"connections", "INSERT INTO connections (day, win, part, run, first_seen, last_seen, node, policy, client, client_port, server, server_port, ip_version, packets, stage, tags, signature, excluded, country, asn) FORMAT RowBinary", conns},
		{"counts", "INSERT INTO counts (day, win, part, run, bucket, node, policy, port, ipv, country, asn, kind, name, n) FORMAT RowBinary", counts},
		{"carry", "INSERT INTO carry (win, run, " + chclient.PacketColumns + ") FORMAT RowBinary", carry},
		{"carry_done", "INSERT INTO carry_done (win, run, day, bucket, client_ip, server_ip, client_port, server_port, ip_version, first_seen) FORMAT RowBinary", doneOut},
	}
	for _, in := range inserts {
		if len(in.data) == 0 {
			continue
		}
		if err := k.s.c.Insert(ctx, in.q, in.data); err != nil {
			return fmt.Errorf("write %s: %w", in.what, err)
		}
	}
	if k.beforeCommit != nil {
		if err := k.beforeCommit(); err != nil {
			return err
		}
	}
	// Commit, unless another replica committed the part meanwhile (its
	// claim expired and this one took over, or the other way round): the
	// earliest commit counts anyway, this only saves a useless row.
	rs, err := k.s.c.QueryTSV(ctx, fmt.Sprintf("SELECT count() FROM commits WHERE win = %d AND part = %d", w, p))
	if err != nil {
		return fmt.Errorf("read commits: %w", err)
	}
	if len(rs) == 1 && rs[0][0] != "0" {
		k.cfg.Logger.Info("ClickHouse classifier: part committed by another replica meanwhile; dropping this run", "window", time.Unix(0, w).UTC(), "part", p)
		return nil
	}
	var cb rowbin
	cb.day(w)
	cb.i64(w)
	cb.u16(uint16(p))
	cb.u16(uint16(parts))
	cb.str(run)
	cb.str(k.cfg.Replica)
	cb.i64(k.cfg.Now().UnixNano())
	cb.u64(uint64(len(rows) - carriedIn))
	cb.u64(uint64(dups))
	cb.u64(uint64(nConns))
	cb.u64(uint64(nCarried))
	cb.u64(uint64(nCarryRows))
	if err := k.s.c.Insert(ctx, "INSERT INTO commits (day, win, part, parts, run, replica, committed_at, packets, duplicates, connections, carried_connections, carried_rows) FORMAT RowBinary", cb); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	k.statsMu.Lock()
	k.stats.Parts++
	k.stats.Packets += int64(len(rows) - carriedIn)
	k.stats.Duplicates += int64(dups)
	k.stats.Connections += int64(nConns)
	k.stats.Carried += int64(nCarried)
	k.stats.Busy += time.Since(start)
	k.statsMu.Unlock()
	k.cfg.Logger.Debug("ClickHouse classifier: part committed", "window", time.Unix(0, w).UTC(), "part", p, "parts", parts,
		"packets", len(rows)-carriedIn, "connections", nConns, "carried", nCarried)
	return nil
}

// prevRuns returns the committed runs (quoted) of window w's parts.
func (k *Classifier) prevRuns(ctx context.Context, w int64) ([]string, error) {
	rows, err := k.s.c.QueryTSV(ctx, fmt.Sprintf("SELECT argMin(run, committed_at) FROM commits WHERE win = %d GROUP BY part ORDER BY part", w))
	if err != nil {
		return nil, fmt.Errorf("read commits: %w", err)
	}
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		out = append(out, chclient.Quote(r[0]))
	}
	sort.Strings(out)
	return out, nil
}

func (k *Classifier) readRows(ctx context.Context, rows []chclient.Row, q string) ([]chclient.Row, error) {
	body, err := k.s.c.Query(ctx, q)
	if err != nil {
		return rows, err
	}
	defer body.Close()
	rr := chclient.NewRowReader(body)
	for {
		var row chclient.Row
		err := rr.Next(&row)
		if err == io.EOF {
			return rows, nil
		}
		if err != nil {
			return rows, err
		}
		rows = append(rows, row)
	}
}

func (k *Classifier) readDone(ctx context.Context, done map[doneKey]bool, q string) error {
	body, err := k.s.c.Query(ctx, q)
	if err != nil {
		return err
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	const size = 16 + 16 + 2 + 2 + 1 + 8
	if len(b)%size != 0 {
		return fmt.Errorf("carry_done: %d bytes is not a whole number of rows", len(b))
	}
	for ; len(b) > 0; b = b[size:] {
		var dk doneKey
		copy(dk.key.ClientIP[:], b[0:16])
		copy(dk.key.ServerIP[:], b[16:32])
		dk.key.ClientPort = binary.LittleEndian.Uint16(b[32:])
		dk.key.ServerPort = binary.LittleEndian.Uint16(b[34:])
		dk.key.IPVersion = b[36]
		dk.first = int64(binary.LittleEndian.Uint64(b[37:]))
		done[dk] = true
	}
	return nil
}

func appendDone(b *rowbin, win int64, run string, key *flow.Key, first int64) {
	b.i64(win)
	b.str(run)
	b.day(first)
	rec := packet.Record{SrcIP: key.ClientIP, DstIP: key.ServerIP, SrcPort: key.ClientPort, DstPort: key.ServerPort}
	b.u16(chclient.Bucket(&rec))
	b.fixed(key.ClientIP[:])
	b.fixed(key.ServerIP[:])
	b.u16(key.ClientPort)
	b.u16(key.ServerPort)
	b.u8(key.IPVersion)
	b.i64(first)
}

func appendConn(b *rowbin, w int64, p int, run, node, policy string, c *flow.Conn, r classify.Result, g *geo.DB) {
	first := c.Summary.FirstSeen
	client := c.Client()
	b.day(first)
	b.i64(w)
	b.u16(uint16(p))
	b.str(run)
	b.i64(first)
	b.i64(c.Summary.LastSeen)
	b.str(node)
	b.str(policy)
	b.str(client.String())
	b.u16(c.ClientPort)
	b.str(c.Server().String())
	b.u16(c.ServerPort)
	b.u8(c.IPVersion)
	b.u16(uint16(c.Summary.Packets))
	b.str(r.Stage.String())
	b.strs(r.Tags.Names())
	b.str(r.Signature.String())
	b.str(r.Excluded.String())
	b.str(g.Country(client))
	b.u32(g.ASN(client))
}
