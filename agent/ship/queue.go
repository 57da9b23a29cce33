package ship

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/connscope/connscope/packet"
)

// Defaults of QueueConfig's zero fields.
const (
	DefaultCapacity      = 1 << 16
	DefaultBatchSize     = 1024
	DefaultFlushInterval = 200 * time.Millisecond
	DefaultMinBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff    = 10 * time.Second
	DefaultDrainTimeout  = 5 * time.Second
)

// MaxBatchSize bounds QueueConfig.BatchSize: a batch of protobuf records
// (about 60 bytes each) stays well below gRPC's default 4 MiB message
// limit.
const MaxBatchSize = 16384

// QueueConfig sizes a Queue. Zero fields take the defaults above.
type QueueConfig struct {
	// Capacity is the number of records the ring holds, at least 2, the
	// batch being sent included. The ring is allocated by NewQueue:
	// Capacity × 88 bytes.
	Capacity int
	// BatchSize is the largest batch handed to the sink (1 to
	// MaxBatchSize, at most Capacity). A batch is a part of the ring, not
	// a copy: its records stay in their cells until the sink took them.
	BatchSize int
	// FlushInterval is how long Run waits for a full batch before it
	// sends what there is.
	FlushInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before a failed batch is
	// sent again: MinBackoff after the first failure, doubling up to
	// MaxBackoff, each wait drawn between half and all of its value so
	// that agents do not retry in step.
	MinBackoff, MaxBackoff time.Duration
	// DrainTimeout bounds the shipping of what is queued when Run's
	// context ends.
	DrainTimeout time.Duration
}

// withDefaults returns c with its zero fields set to the defaults.
func (c QueueConfig) withDefaults() QueueConfig {
	if c.Capacity == 0 {
		c.Capacity = DefaultCapacity
	}
	if c.BatchSize == 0 {
		c.BatchSize = min(DefaultBatchSize, c.Capacity)
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
		if c.MaxBackoff > 0 {
			c.MinBackoff = min(c.MinBackoff, c.MaxBackoff)
		}
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultMaxBackoff, c.MinBackoff)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	return c
}

// Validate reports the first field of c, after defaults, that NewQueue
// would refuse.
func (c QueueConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Capacity < 2:
		return fmt.Errorf("queue capacity %d must be at least 2", c.Capacity)
	case c.BatchSize < 1 || c.BatchSize > MaxBatchSize:
		return fmt.Errorf("batch size %d must be between 1 and %d", c.BatchSize, MaxBatchSize)
	case c.BatchSize > c.Capacity:
		return fmt.Errorf("batch size %d is larger than the queue capacity %d", c.BatchSize, c.Capacity)
	case c.FlushInterval < 0:
		return fmt.Errorf("flush interval %s is negative", c.FlushInterval)
	case c.MinBackoff < 0:
		return fmt.Errorf("minimum backoff %s is negative", c.MinBackoff)
	case c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("maximum backoff %s is below the minimum backoff %s", c.MaxBackoff, c.MinBackoff)
	case c.DrainTimeout < 0:
		return fmt.Errorf("drain timeout %s is negative", c.DrainTimeout)
	}
	return nil
}

// Stats are a Queue's counters. Each is read atomically, but a Stats is
// not one snapshot: fields may be a few records apart while records flow.
// Offered = Shipped + Queued + DroppedQueueFull + DroppedRejected.
type Stats struct {
	// Offered counts Offer calls.
	Offered uint64
	// Queued is the number of records accepted and not yet shipped: in
	// the ring and in the batch being sent.
	Queued uint64
	// Shipped counts records the sink acknowledged.
	Shipped uint64
	// DroppedQueueFull counts records Offer refused because the ring was
	// full.
	DroppedQueueFull uint64
	// DroppedRejected counts records of batches the sink rejected as
	// invalid (ErrRejected), which are not sent again.
	DroppedRejected uint64
	// SinkErrors counts failed Send calls.
	SinkErrors uint64
	// Retries counts Send calls of a batch that had failed before.
	Retries uint64
	// Batches counts batches the sink acknowledged.
	Batches uint64
}

// pad keeps the counters that producers and the consumer write on cache
// lines of their own.
type pad [64]byte

// Queue is a bounded queue of records between the capture and a Sink.
// Offer may be called from any number of goroutines; Run is the one
// sender.
//
// The ring is a bounded multi-producer queue after Dmitry Vyukov's: a
// producer claims positions with one compare-and-swap on the tail, when
// they are below the head plus the ring's size, and publishes the records
// it wrote as one run by storing, in the run's first cell, the position
// where the run ends (one store per run, not per record: an atomic store
// is a full barrier on amd64, and one per record was 7 % of the agent's
// CPU at a SYN flood). Offer never waits for the consumer or the sink,
// takes no lock and does not allocate.
//
// The sender hands the sink a batch that is a run of the ring's cells, not
// a copy, and frees the cells once the sink has taken it (or rejected
// it): a record is copied once on its way, into the ring, and the memory
// it passes through is the ring's alone.
type Queue struct {
	sink Sink
	cfg  QueueConfig
	// recs and ends are the ring's cells: the record at position p is in
	// recs[p%n]. A producer publishes the records it wrote at positions
	// p to e-1 (at most n of them) by storing e in ends[p%n], after the
	// records. The sender, at a position p where a run may start, may take
	// the run when ends[p%n] > p: what an earlier lap left there is at
	// most p (a run that started at p-n ended by p), and a new ring holds
	// zeros. The ends of cells inside a run are not written. A cell is
	// free for position p once the head has passed p-n: the sender frees
	// a batch's cells by moving the head alone.
	recs []packet.Record
	ends []atomic.Uint64
	n    uint64 // len(recs)

	_    pad
	tail atomic.Uint64 // next position to fill; the number of records accepted
	_    pad
	// head is the first position not freed: the first of the batch being
	// sent, if there is one, else the next to take. Written by Run only.
	head atomic.Uint64
	_    pad

	droppedFull atomic.Uint64
	shipped     atomic.Uint64
	rejected    atomic.Uint64
	sinkErrors  atomic.Uint64
	retries     atomic.Uint64
	batches     atomic.Uint64
	// lastErr is the error of the latest failed Send (nil before any).
	lastErr atomic.Pointer[error]

	// wake is signalled, without waiting, when a record is queued into an
	// empty ring and when a batch's worth of records is queued.
	wake chan struct{}
	// room is signalled, without waiting, when Run frees cells (WaitRoom).
	room    chan struct{}
	running atomic.Bool

	// pending is the batch being sent, recs[head%n:][:len(pending)],
	// kept across Run calls: a batch that failed is sent again before
	// any other. failures counts its failed sends.
	pending  []packet.Record
	failures int
	// published is the end of the runs the sender has seen published, one
	// after the other from the head on: positions head to published-1 are
	// written, and published is where the next run starts. Run only.
	published uint64
}

// NewQueue returns a queue that ships to sink, with its ring allocated.
// Zero fields of c take the defaults; NewQueue panics if c is invalid
// (check user input with QueueConfig.Validate first).
func NewQueue(sink Sink, c QueueConfig) *Queue {
	if err := c.Validate(); err != nil {
		panic("ship.NewQueue: " + err.Error())
	}
	c = c.withDefaults()
	q := &Queue{
		sink: sink,
		cfg:  c,
		recs: make([]packet.Record, c.Capacity),
		ends: make([]atomic.Uint64, c.Capacity),
		n:    uint64(c.Capacity),
		wake: make(chan struct{}, 1),
		room: make(chan struct{}, 1),
	}
	return q
}

// Config returns the queue's configuration, defaults applied.
func (q *Queue) Config() QueueConfig { return q.cfg }

// Offer copies *rec into the ring and returns true, or returns false and
// counts a drop when the ring is full. It never blocks and does not
// allocate; rec may be reused as soon as it returns.
func (q *Queue) Offer(rec *packet.Record) bool {
	return q.OfferBatch([]packet.Record{*rec}) == 1
}

// OfferBatch copies as many of recs as the ring has room for into it, in
// order, and returns how many; the rest are dropped and counted, as Offer
// drops them. Like Offer it never blocks and does not allocate, and it
// may run beside other producers.
//
// It claims the positions with one compare-and-swap and copies every
// record before it publishes any: publishing is an atomic store, which on
// amd64 waits until the stores before it have reached the cache, so
// publishing each record as it is copied would make its misses follow
// one another instead of overlapping.
func (q *Queue) OfferBatch(recs []packet.Record) int {
	if len(recs) == 0 {
		return 0
	}
	var pos, k uint64
	for {
		pos = q.tail.Load()
		// Positions below head+n are free for this lap: Run stores head
		// after it freed the cells before it.
		free := int64(q.head.Load() + q.n - pos)
		if free <= 0 {
			q.droppedFull.Add(uint64(len(recs)))
			return 0
		}
		k = min(uint64(len(recs)), uint64(free))
		if q.tail.CompareAndSwap(pos, pos+k) {
			break
		}
	}
	// Copied in at most two runs: up to the ring's end, then from its
	// start.
	c := copy(q.recs[pos%q.n:], recs[:k])
	copy(q.recs, recs[c:k])
	q.publish(pos, k)
	if d := uint64(len(recs)) - k; d > 0 {
		q.droppedFull.Add(d)
	}
	return int(k)
}

// publish hands the sender the k records written at positions pos on, as
// one run (which may wrap around the ring's end), and wakes it when they
// are the first in an empty ring or make a batch.
func (q *Queue) publish(pos, k uint64) {
	q.ends[pos%q.n].Store(pos + k)
	if n := pos + k - q.head.Load(); n <= k || n >= uint64(q.cfg.BatchSize) {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// Reserve returns the free cells that follow the records queued, up to
// the ring's end, for a producer to decode records into in place; Commit
// then queues the first of them. Reserve and Commit are for a queue with
// one producer, which uses no other method to offer: the cells are not
// claimed until Commit, so a record offered between the two would take
// one. (The agent's NFLOG reader decodes each kernel batch straight into
// the ring so: every record is written once on its way to the sink.)
func (q *Queue) Reserve() []packet.Record {
	pos := q.tail.Load()
	i := pos % q.n
	k := q.runFree(pos)
	return q.recs[i : i+k : i+k]
}

// runFree is how many cells from position pos on are free, up to the
// ring's end.
func (q *Queue) runFree(pos uint64) uint64 {
	return min(q.head.Load()+q.n-pos, q.n-pos%q.n)
}

// Commit queues the first k cells of the latest Reserve, filled with
// records. It panics if k is more than Reserve returned or another
// producer offered since.
func (q *Queue) Commit(k int) {
	if k <= 0 {
		return
	}
	pos := q.tail.Load()
	if uint64(k) > q.runFree(pos) || !q.tail.CompareAndSwap(pos, pos+uint64(k)) {
		panic("ship: Queue.Commit of cells that Reserve did not return")
	}
	q.publish(pos, uint64(k))
}

// Room returns how many records the ring has room for now, without
// waiting.
func (q *Queue) Room() int { return int(q.head.Load() + q.n - q.tail.Load()) }

// WaitRoom waits until the ring has room and returns how many records it
// has room for (at least 1), or returns 0 as soon as done is closed. A
// single producer that offers at most that many has none dropped: instead
// of producing records only to have them dropped at a full ring, it waits.
// The agent waits so, and what it cannot ship yet stays in the NFLOG
// socket's receive buffer, where it costs no CPU; what the buffer cannot
// hold is lost in the kernel, counted by NFLOG's sequence numbers.
func (q *Queue) WaitRoom(done <-chan struct{}) int {
	for {
		if free := q.Room(); free > 0 {
			return free
		}
		select {
		case <-q.room:
		case <-done:
			return 0
		}
	}
}

// Stats returns the counters; safe to call from any goroutine.
func (q *Queue) Stats() Stats {
	// Shipped and rejected first: they never exceed the tail read after.
	s := Stats{
		Shipped:          q.shipped.Load(),
		DroppedRejected:  q.rejected.Load(),
		SinkErrors:       q.sinkErrors.Load(),
		Retries:          q.retries.Load(),
		Batches:          q.batches.Load(),
		DroppedQueueFull: q.droppedFull.Load(),
	}
	tail := q.tail.Load()
	s.Queued = tail - s.Shipped - s.DroppedRejected
	s.Offered = tail + s.DroppedQueueFull
	return s
}

// LastError is the error of the latest failed Send, nil if none failed
// yet. It stays after later successes: read it when Stats shows new sink
// errors.
func (q *Queue) LastError() error {
	if p := q.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// take makes the pending batch, which must be empty, of up to max records
// that are ready, at positions before end, in cells that follow one
// another in the ring: a batch stops at the ring's end, and the next one
// starts at its beginning. Run only.
func (q *Queue) take(max int, end uint64) {
	head := q.head.Load()
	// Follow the runs published since the last look, one after the other:
	// a run not yet published (its producer is still writing it) stops
	// the walk, as the runs after it must wait for it.
	p, c := q.published, q.published%q.n // c: p's cell, kept without a division per run
	for p < end {
		e := q.ends[c].Load()
		if e <= p {
			break
		}
		if c += e - p; c >= q.n {
			c -= q.n
		}
		p = e
	}
	q.published = p
	i := head % q.n
	k := min(uint64(max), q.n-i, min(end, q.published)-head)
	q.pending = q.recs[i : i+k : i+k]
}

// release frees the cells of the pending batch, which the sink has taken
// or rejected, for the producers. Run only.
func (q *Queue) release() {
	k := uint64(len(q.pending))
	if k == 0 {
		return
	}
	q.pending = nil
	q.head.Store(q.head.Load() + k)
	select {
	case q.room <- struct{}{}:
	default:
	}
}

// ready is the number of positions claimed and not yet taken (some may
// still be being written), when no batch is pending.
func (q *Queue) ready() uint64 { return q.tail.Load() - q.head.Load() }

// Run is the sender loop. It sends a batch as soon as BatchSize records
// are queued, or what there is FlushInterval after the previous send (or,
// after a time with nothing queued, after the first record: an idle queue
// sleeps until Offer wakes it, without a timer); a
// batch the sink fails is sent again, after a backoff, until it is
// delivered (or rejected: then it is dropped and counted). Records offered
// meanwhile fill the ring.
//
// When ctx ends, Run ships what was queued at that moment (and the batch
// being sent) within DrainTimeout, and returns nil if it all went, or an
// error saying how many records were left; they stay queued, and a later
// Run sends them first. Run returns an error at once if another Run of the
// queue is running. It starts no goroutine that outlives it.
func (q *Queue) Run(ctx context.Context) error {
	if !q.running.CompareAndSwap(false, true) {
		return errors.New("ship: Queue.Run is already running")
	}
	defer q.running.Store(false)

	flush := time.NewTimer(q.cfg.FlushInterval)
	defer flush.Stop()
	var wait *time.Timer // the backoff
	defer func() {
		if wait != nil {
			wait.Stop()
		}
	}()
	batch := uint64(q.cfg.BatchSize)
	for {
		if ctx.Err() != nil {
			return q.drain()
		}
		if len(q.pending) == 0 {
			if q.ready() == 0 {
				select {
				case <-ctx.Done():
					return q.drain()
				case <-q.wake:
				}
				flush.Reset(q.cfg.FlushInterval)
				continue
			}
			if q.ready() < batch {
				select {
				case <-ctx.Done():
					return q.drain()
				case <-q.wake:
					continue
				case <-flush.C:
				}
			}
			q.take(q.cfg.BatchSize, q.tail.Load())
			flush.Reset(q.cfg.FlushInterval)
			if len(q.pending) == 0 {
				continue
			}
		}
		if q.send(ctx) == nil || len(q.pending) == 0 {
			continue
		}
		if ctx.Err() != nil {
			return q.drain()
		}
		d := q.backoff()
		if wait == nil {
			wait = time.NewTimer(d)
		} else {
			wait.Reset(d)
		}
		select {
		case <-ctx.Done():
			return q.drain()
		case <-wait.C:
		}
	}
}

// send hands the pending batch to the sink once and accounts for the
// outcome. The batch stays pending when it failed and was not rejected.
func (q *Queue) send(ctx context.Context) error {
	if q.failures > 0 {
		q.retries.Add(1)
	}
	err := q.sink.Send(ctx, q.pending)
	n := uint64(len(q.pending))
	switch {
	case err == nil:
		q.shipped.Add(n)
		q.batches.Add(1)
	case errors.Is(err, ErrRejected):
		q.lastErr.Store(&err)
		q.sinkErrors.Add(1)
		q.rejected.Add(n)
	default:
		q.lastErr.Store(&err)
		q.sinkErrors.Add(1)
		q.failures++
		return err
	}
	q.release()
	q.failures = 0
	return err
}

// backoff returns the wait before sending a batch again after its
// q.failures-th failure: MinBackoff doubled per earlier failure, capped at
// MaxBackoff, drawn between half and all of that.
func (q *Queue) backoff() time.Duration {
	d := q.cfg.MinBackoff
	for i := 1; i < q.failures && d < q.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, q.cfg.MaxBackoff)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// drain ships what was queued when it was called, within DrainTimeout.
func (q *Queue) drain() error {
	ctx, cancel := context.WithTimeout(context.Background(), q.cfg.DrainTimeout)
	defer cancel()
	end := q.tail.Load()
	var lastErr error
	for {
		if len(q.pending) == 0 {
			q.take(q.cfg.BatchSize, end)
			if len(q.pending) == 0 {
				if q.head.Load() >= end {
					return nil
				}
				// A producer claimed a position before end and has not
				// written it yet: it will in a moment.
				if !sleep(ctx, time.Millisecond) {
					break
				}
				continue
			}
		}
		if err := q.send(ctx); err != nil {
			lastErr = err
			if !sleep(ctx, q.backoff()) {
				break
			}
		}
	}
	left := end - q.head.Load() // the pending batch's records included
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return fmt.Errorf("ship: %d records not shipped within the drain timeout %s: %w", left, q.cfg.DrainTimeout, lastErr)
}

// sleep waits d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return ctx.Err() == nil
	}
}
