// Package ingest is the classifier's receiving end of the agents' gRPC
// stream (packet/ingestpb) and its live engine: it authenticates each
// stream, makes every accepted batch durable before acknowledging it,
// assembles and classifies connections as their packets arrive, and
// writes the aggregates of finished connections to the store.
//
// The gRPC server must be made with ServerOptions: batches are received as
// their wire bytes, decoded straight into records (ingestpb.DecodeFrame,
// no message per packet) and journaled as they came.
//
// # Acceptance
//
// A stream must carry `authorization: Bearer <token>` equal (compared in
// constant time) to the configured token, else it ends with
// UNAUTHENTICATED (counted). A batch that breaks the protocol (no agent
// instance, sequence 0, a packet that is not a record) ends the stream
// with INVALID_ARGUMENT. A batch whose (agent_instance, sequence) is not
// above the highest accepted for that instance is a duplicate: it is
// acknowledged and not stored again. Otherwise the batch's packets are
// written to the journal (package store) with the new highest sequence,
// batches of several streams waiting at the same time in one write and
// one sync to disk; the ack is sent only after that sync.
// A store error ends the stream with UNAVAILABLE, and the agent sends the
// batch again.
//
// # The live engine
//
// There is one flow.Table per (node, policy) — an engine — fed in journal
// order. A ticker advances every table's clock to the wall clock minus a
// grace (Config.Grace, for the agents' batching delay), so a silent
// connection is finished Hold after its last packet even when no
// packet follows. It does so only while a stream of that engine is
// connected (or after Config.Stall without one): while an agent is away
// its packets wait in its queue, and judging its connections silent by
// the wall clock would call timeouts what are resets still on their way. Finished connections are classified and aggregated in
// memory; each tick commits them in one transaction, together with the
// identities of the counted connections and a cutoff.
//
// # What a restart keeps (the guarantee)
//
// Every acknowledged batch is in the journal until all connections it
// has packets of are counted in a committed transaction. Precisely: an
// open connection began at most (PacketCap+1)×Hold before the
// table's clock (each gap is shorter than the hold, and the cap
// bounds the packets), so at each commit every connection that began
// before C = clock − (PacketCap+1)×Hold − 1 s is finished and
// counted; C is recorded per engine. Connections counted that began at or
// after C are recorded by identity (key and first packet time). Journal
// rows whose latest packet is before C − Linger − (PacketCap+1)×Hold
// are deleted (only rows already accepted when the tick began), so a
// connection with a packet at or after C has all its packets, and its
// finished neighbour's tombstone, still journaled.
//
// On start, the journal is replayed in acceptance order into fresh tables.
// A connection finished during the replay is counted unless it began
// before its engine's C or its identity is recorded: so every connection
// of an acknowledged batch is counted exactly once, across any number of
// crashes and restarts, provided the replayed packets assemble into the
// same connections as live (they do, being the same packets in the same
// order; the clock differs only in when silence is noticed, not in the
// verdict). Aggregates of connections finished since the last tick are
// lost by a crash, but their packets are still journaled and counted
// again at replay. The agents' own queues are outside this guarantee:
// what an agent had not yet had acknowledged it sends again (ship).
//
// It does not serve HTTP (package api) or define the aggregates (package
// aggregate) or the schema (package store).
package ingest

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/geo"
	"github.com/connscope/connscope/classifier/store"
	"github.com/connscope/connscope/packet"
	"github.com/connscope/connscope/packet/ingestpb"
)

// Defaults.
const (
	DefaultGrace = 500 * time.Millisecond
	DefaultTick  = 500 * time.Millisecond
	DefaultStall = time.Minute
)

// Observer is told about every connection counted (for metrics). It is
// called with the engine lock held and must be quick.
type Observer interface {
	Classified(node, policy string, r classify.Result)
}

// Config configures a Server.
type Config struct {
	// Store keeps the journal and the aggregates. Required.
	Store *store.Store
	// Geo resolves clients' countries and ASNs; nil means unknown.
	Geo *geo.DB
	// Flow configures the connection tables (idle timeout, hold, packet cap).
	Flow flow.Config
	// Policy, when set, is the only SamplingPolicy this classifier
	// serves: a batch of another policy is rejected (INVALID_ARGUMENT), a
	// batch without one is taken as this policy's.
	Policy string
	// Token is the bearer token agents must present; "" accepts any
	// stream (tests, or a network that only agents reach).
	Token string
	// Grace is how far the tables' clocks stay behind the wall clock.
	Grace time.Duration
	// Tick is how often clocks advance and aggregates are committed.
	Tick time.Duration
	// Stall is how long an engine without a connected stream keeps its
	// clock still before the wall clock moves it anyway (an agent that is
	// gone for good). 0 means DefaultStall.
	Stall time.Duration
	// MaxAnomalies bounds the anomalies kept per tick.
	MaxAnomalies int
	// Observer, when set, sees each counted connection.
	Observer Observer
	// Logger logs; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Stats count what the server saw since it started.
type Stats struct {
	Streams, AuthFailures, Rejected      uint64
	Batches, Duplicates, Records         uint64
	Connections, Replayed, ReplaySkipped uint64
	CommitErrors, StoreErrors            uint64
	// Groups counts the journal transactions (group commits) of batches.
	Groups                                uint64
	OpenConnections, Engines, JournalRows int
}

type engineKey struct{ node, policy string }

type engine struct {
	key    engineKey
	table  *flow.Table
	lastID int64 // the last journal row fed
	// counted is the engine's recorded cutoff (replay skips connections
	// that began before it); skip the identities counted after it.
	counted int64
	skip    map[string]bool
	replay  bool
	// streams counts the connected streams that fed this engine; idleSince
	// is when the last one ended.
	streams   int
	idleSince time.Time
}

// Server is the Ingest service and the live engine.
type Server struct {
	ingestpb.UnimplementedIngestServer

	cfg   Config
	log   *slog.Logger
	agg   aggregate.Aggregator
	span  int64 // (cap+1) × idle, ns
	token []byte

	mu      sync.Mutex // engines, delta, written, stats
	engines map[engineKey]*engine
	delta   *aggregate.Delta
	written []store.ConnID
	stats   Stats
	retry   *store.Commit // a commit that failed, tried again first
	drain   bool          // shutting down: refuse batches

	commitMu sync.Mutex // one commit at a time

	gmu     sync.Mutex // queue, leading
	queue   []*pending
	leading bool

	// afterAccept, when set (tests), runs after a batch is accepted and
	// before its ack is sent.
	afterAccept func(*ingestpb.Frame)
}

// New opens the engine and replays the journal.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("ingest: no store")
	}
	if err := cfg.Flow.Validate(); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Tick == 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.Stall == 0 {
		cfg.Stall = DefaultStall
	}
	if cfg.Grace < 0 || cfg.Tick < 0 || cfg.Stall < 0 {
		return nil, errors.New("ingest: grace and tick must not be negative")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		agg:     aggregate.Aggregator{Geo: cfg.Geo},
		span:    int64(cfg.Flow.PacketCap+1) * int64(cfg.Flow.Hold),
		engines: map[engineKey]*engine{},
		delta:   aggregate.NewDelta(cfg.MaxAnomalies),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Token != "" {
		s.token = []byte(cfg.Token)
	}
	if err := s.replay(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Register adds the Ingest service to a gRPC server, which must have been
// made with ServerOptions.
func (s *Server) Register(r grpc.ServiceRegistrar) { ingestpb.RegisterIngestServer(r, s) }

// ServerOptions are the options the gRPC server of Register needs: a codec
// that hands Push each batch as its wire bytes (ingestpb.WireCodec; other
// messages go through gRPC's protobuf codec as usual).
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(ingestpb.WireCodec{})}
}

// Stats returns the counts so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Engines = len(s.engines)
	for _, e := range s.engines {
		st.OpenConnections += e.table.Stats().Open
	}
	return st
}

func (s *Server) engine(k engineKey) *engine {
	e := s.engines[k]
	if e != nil {
		return e
	}
	e = &engine{key: k, idleSince: s.cfg.Now()}
	// Config was validated in New; New only fails on a bad config.
	e.table, _ = flow.New(s.cfg.Flow, func(c *flow.Conn) { s.finished(e, c) })
	s.engines[k] = e
	return e
}

// connKey encodes a connection's key for the written set.
func connKey(k *flow.Key) string {
	var b [37]byte
	copy(b[:16], k.ClientIP[:])
	copy(b[16:32], k.ServerIP[:])
	b[32], b[33] = byte(k.ClientPort>>8), byte(k.ClientPort)
	b[34], b[35] = byte(k.ServerPort>>8), byte(k.ServerPort)
	b[36] = k.IPVersion
	return string(b[:])
}

// finished is the tables' callback; s.mu is held.
func (s *Server) finished(e *engine, c *flow.Conn) {
	key := connKey(&c.Key)
	first := c.Summary.FirstSeen
	if e.replay {
		if first < e.counted || e.skip[key+fmt.Sprint(first)] {
			s.stats.ReplaySkipped++
			return
		}
		s.stats.Replayed++
	}
	r := classify.Classify(c)
	s.agg.Add(s.delta, e.key.node, e.key.policy, c, r)
	s.written = append(s.written, store.ConnID{Node: e.key.node, Policy: e.key.policy, Key: key, First: first})
	s.stats.Connections++
	if s.cfg.Observer != nil {
		s.cfg.Observer.Classified(e.key.node, e.key.policy, r)
	}
}

// replay feeds the journal into fresh tables.
func (s *Server) replay(ctx context.Context) error {
	cuts, err := s.cfg.Store.EngineCutoffs(ctx)
	if err != nil {
		return fmt.Errorf("ingest: replay: %w", err)
	}
	written, err := s.cfg.Store.WrittenConns(ctx)
	if err != nil {
		return fmt.Errorf("ingest: replay: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	setup := func(k engineKey) *engine {
		e := s.engine(k)
		if !e.replay {
			e.replay = true
			e.counted = cuts[[2]string{k.node, k.policy}]
			e.skip = map[string]bool{}
		}
		return e
	}
	for id := range written {
		e := setup(engineKey{id.Node, id.Policy})
		e.skip[id.Key+fmt.Sprint(id.First)] = true
	}
	rows := 0
	var f ingestpb.Frame
	err = s.cfg.Store.Journal(ctx, func(r store.JournalRow) error {
		if err := ingestpb.DecodeFrame(&f, r.Data); err != nil {
			return fmt.Errorf("ingest: replay journal row %d: %w", r.ID, err)
		}
		e := setup(engineKey{r.Node, r.Policy})
		if err := e.table.AddBatch(f.Records); err != nil {
			return fmt.Errorf("ingest: replay journal row %d: %w", r.ID, err)
		}
		e.lastID = r.ID
		rows++
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range s.engines {
		e.replay, e.skip = false, nil
	}
	s.stats.JournalRows = rows
	s.log.Info("journal replayed", "batches", rows, "connections_counted", s.stats.Replayed, "connections_already_counted", s.stats.ReplaySkipped)
	return nil
}

// Push is the Ingest service: one agent's stream.
func (s *Server) Push(stream ingestpb.Ingest_PushServer) error {
	ctx := stream.Context()
	s.mu.Lock()
	s.stats.Streams++
	s.mu.Unlock()
	if err := s.authenticate(ctx); err != nil {
		s.mu.Lock()
		s.stats.AuthFailures++
		s.mu.Unlock()
		s.log.Warn("ingest stream refused", "reason", err)
		return err
	}
	fed := map[engineKey]bool{}
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for k := range fed {
			if e := s.engines[k]; e != nil {
				e.streams--
				e.idleSince = s.cfg.Now()
			}
		}
	}()
	var raw ingestpb.Wire
	var f ingestpb.Frame
	for {
		if err := stream.RecvMsg(&raw); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		b := &f
		if err := ingestpb.DecodeFrame(b, raw.B); err != nil {
			return s.reject(b.Sequence, "%v", err)
		}
		if err := s.accept(b, raw.B); err != nil {
			return err
		}
		if k := (engineKey{b.Node, b.Policy}); !fed[k] {
			fed[k] = true
			s.mu.Lock()
			s.engine(k).streams++
			s.mu.Unlock()
		}
		if s.afterAccept != nil {
			s.afterAccept(b)
		}
		if err := stream.Send(&ingestpb.BatchAck{Sequence: b.Sequence}); err != nil {
			return err
		}
	}
}

func (s *Server) authenticate(ctx context.Context) error {
	if s.token == nil {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return status.Error(codes.Unauthenticated, "no bearer token: send authorization: Bearer <token>")
	}
	tok, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		return status.Error(codes.Unauthenticated, "malformed authorization: want Bearer <token>")
	}
	if subtle.ConstantTimeCompare([]byte(tok), s.token) != 1 {
		return status.Error(codes.Unauthenticated, "wrong bearer token")
	}
	return nil
}

// reject counts a batch that breaks the protocol and returns the status
// the stream ends with.
func (s *Server) reject(seq uint64, format string, a ...any) error {
	s.mu.Lock()
	s.stats.Rejected++
	s.mu.Unlock()
	return status.Errorf(codes.InvalidArgument, "batch %d: "+format, append([]any{seq}, a...)...)
}

// accept makes b durable, journaling data (b's wire encoding), and feeds
// it to its engine, or returns the status the stream ends with. It
// returns once b's outcome is decided; b and data may be reused then.
func (s *Server) accept(b *ingestpb.Frame, data []byte) error {
	reject := func(format string, a ...any) error { return s.reject(b.Sequence, format, a...) }
	if b.AgentInstance == "" {
		return reject("no agent_instance")
	}
	if b.Sequence == 0 {
		return reject("sequence 0: sequences start at 1")
	}
	if p := s.cfg.Policy; p != "" {
		switch b.Policy {
		case p:
		case "":
			b.Policy = p
		default:
			return reject("policy %q: this classifier serves policy %q; point the agent at that policy's classifier", b.Policy, p)
		}
	}
	recs := b.Records
	var maxTS int64
	for i := range recs {
		maxTS = max(maxTS, recs[i].Timestamp)
	}
	if len(recs) == 0 {
		data = nil // nothing to journal
	}
	batch := store.Batch{
		Instance: b.AgentInstance, Sequence: b.Sequence, Node: b.Node, Policy: b.Policy,
		MaxTS: maxTS, Data: data,
	}
	if c := &b.Counters; b.HasCounters {
		batch.Counters = store.Counters{
			PacketsLogged: c.PacketsLogged, PacketsLostKernel: c.PacketsLostKernel, ReceiveOverflows: c.ReceiveOverflows,
			DroppedQueueFull: c.PacketsDroppedQueueFull, ReadErrors: c.ReadErrors,
		}
	}
	p := &pending{batch: batch, recs: recs, done: make(chan struct{})}
	s.submit(p)
	return p.err
}

// pending is a batch waiting for its group's transaction.
type pending struct {
	batch store.Batch
	recs  []packet.Record
	err   error
	done  chan struct{}
}

// submit makes p durable and feeds it to its engine, in a group with the
// batches other streams submit meanwhile (one transaction, one sync to
// disk, for all of them). The first submitter leads: it commits groups
// until none is waiting; the others wait for their outcome.
func (s *Server) submit(p *pending) {
	s.gmu.Lock()
	s.queue = append(s.queue, p)
	if s.leading {
		s.gmu.Unlock()
		<-p.done
		return
	}
	s.leading = true
	for len(s.queue) > 0 {
		group := s.queue
		s.queue = nil
		s.gmu.Unlock()
		s.commitGroup(group)
		s.gmu.Lock()
	}
	s.leading = false
	s.gmu.Unlock()
}

// commitGroup journals a group of batches in one transaction and feeds
// them to their engines in journal order. The engine lock spans both, so
// tables see batches in journal order (replay feeds them in that order).
func (s *Server) commitGroup(group []*pending) {
	defer func() {
		for _, p := range group {
			close(p.done)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drain {
		for _, p := range group {
			p.err = status.Errorf(codes.Unavailable, "batch %d: the classifier is shutting down; send it again", p.batch.Sequence)
		}
		return
	}
	bs := make([]store.Batch, len(group))
	for i, p := range group {
		bs[i] = p.batch
	}
	res, err := s.cfg.Store.AcceptAll(context.Background(), bs)
	s.stats.Groups++
	if err != nil {
		s.stats.StoreErrors += uint64(len(group))
		s.log.Error("accept batches", "batches", len(group), "err", err)
		for _, p := range group {
			p.err = status.Errorf(codes.Unavailable, "batch %d: cannot store it now: %v", p.batch.Sequence, err)
		}
		return
	}
	for i, p := range group {
		if res[i].Duplicate {
			s.stats.Duplicates++
			continue
		}
		s.stats.Batches++
		s.stats.Records += uint64(len(p.recs))
		if len(p.recs) == 0 {
			continue
		}
		e := s.engine(engineKey{p.batch.Node, p.batch.Policy})
		if err := e.table.AddBatch(p.recs); err != nil {
			// Cannot happen: AppendRecords gives IP versions 4 and 6 only.
			s.log.Error("engine refused a batch", "err", err)
		}
		e.lastID = res[i].ID
	}
}

// Drain makes the server refuse further batches (UNAVAILABLE: agents
// send them again) and returns once no batch is being accepted. A batch
// accepted whose ack is then lost to the shutdown is a duplicate when
// sent again. Streams may then be closed at once.
func (s *Server) Drain() {
	s.mu.Lock()
	s.drain = true
	s.mu.Unlock()
}

// Run advances the clocks and commits aggregates every tick until ctx
// ends, then commits once more.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return s.Commit(context.WithoutCancel(ctx))
		case <-t.C:
			if err := s.Commit(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("commit aggregates", "err", err)
			}
		}
	}
}

// Commit advances every table's clock to now minus the grace and commits
// the connections finished so far, with each engine's cutoff.
func (s *Server) Commit(ctx context.Context) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if s.retry != nil {
		if err := s.cfg.Store.Commit(ctx, *s.retry); err != nil {
			s.mu.Lock()
			s.stats.CommitErrors++
			s.mu.Unlock()
			return err
		}
		s.retry = nil
	}
	wall := s.cfg.Now()
	now := wall.Add(-s.cfg.Grace).UnixNano()
	linger := int64(s.cfg.Flow.Linger)
	s.mu.Lock()
	var cuts []store.Cutoff
	for _, e := range s.engines {
		to := e.table.Now() + 1 // at least expire what the clock already allows
		if e.streams > 0 || wall.Sub(e.idleSince) >= s.cfg.Stall {
			to = max(to, now)
		}
		if e.table.Now() == 0 && to < now {
			continue // nothing yet
		}
		e.table.Advance(to)
		counted := e.table.Now() - s.span - int64(time.Second)
		cuts = append(cuts, store.Cutoff{
			Node: e.key.node, Policy: e.key.policy,
			CountedBefore: counted,
			JournalBefore: counted - linger - s.span,
			MaxID:         e.lastID,
		})
	}
	c := store.Commit{Delta: s.delta, Written: s.written, Cutoffs: cuts}
	s.delta = aggregate.NewDelta(s.cfg.MaxAnomalies)
	s.written = nil
	s.mu.Unlock()
	if err := s.cfg.Store.Commit(ctx, c); err != nil {
		s.mu.Lock()
		s.stats.CommitErrors++
		s.mu.Unlock()
		s.retry = &c
		return err
	}
	if n, err := s.cfg.Store.JournalLen(ctx); err == nil {
		s.mu.Lock()
		s.stats.JournalRows = n
		s.mu.Unlock()
	}
	return nil
}
