package ship

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/connscope/connscope/packet"
)

func TestQueueShipsEveryRecordInOrderInBatchesOfAtMostBatchSize(t *testing.T) {
	sink := &memSink{}
	q := NewQueue(sink, QueueConfig{Capacity: 20000, BatchSize: 256, FlushInterval: 5 * time.Millisecond})
	stop := runQueue(t, q)
	recs := records(10000, 0, 1)
	for i := range recs {
		if !q.Offer(&recs[i]) {
			t.Fatalf("Offer %d refused with a ring of 20000", i)
		}
	}
	waitFor(t, "all records shipped", 10*time.Second, func() bool { return q.Stats().Shipped == 10000 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	sameRecords(t, sink.delivered(), recs)
	for i, b := range sink.batches {
		if len(b) == 0 || len(b) > 256 {
			t.Fatalf("batch %d has %d records, want 1 to 256", i, len(b))
		}
	}
	s := q.Stats()
	checkInvariant(t, s)
	if s.Offered != 10000 || s.Queued != 0 || s.Batches != uint64(len(sink.batches)) || s.SinkErrors != 0 || s.Retries != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestQueueSendsAPartialBatchAfterTheFlushInterval(t *testing.T) {
	sink := &memSink{}
	q := NewQueue(sink, QueueConfig{Capacity: 1000, BatchSize: 1000, FlushInterval: 10 * time.Millisecond})
	runQueue(t, q)
	recs := records(3, 0, 2)
	for i := range recs {
		q.Offer(&recs[i])
	}
	waitFor(t, "3 records shipped without a full batch", 10*time.Second, func() bool { return q.Stats().Shipped == 3 })
	sameRecords(t, sink.delivered(), recs)
}

func TestQueueSendsTheSameBatchAgainUntilTheSinkTakesIt(t *testing.T) {
	sink := &memSink{fail: func(call int) error {
		if call < 3 {
			return fmt.Errorf("receiver down (call %d)", call)
		}
		return nil
	}}
	q := NewQueue(sink, QueueConfig{Capacity: 100, BatchSize: 10, FlushInterval: time.Millisecond,
		MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond})
	runQueue(t, q)
	recs := records(10, 0, 3)
	for i := range recs {
		q.Offer(&recs[i])
	}
	waitFor(t, "the batch shipped after 3 failures", 10*time.Second, func() bool { return q.Stats().Shipped == 10 })
	sink.mu.Lock()
	sent := sink.sent
	sink.mu.Unlock()
	if len(sent) != 4 {
		t.Fatalf("%d Send calls, want 4", len(sent))
	}
	for i := range sent {
		sameRecords(t, sent[i], recs)
	}
	s := q.Stats()
	if s.SinkErrors != 3 || s.Retries != 3 || s.Batches != 1 {
		t.Fatalf("stats %+v, want 3 sink errors, 3 retries, 1 batch", s)
	}
	checkInvariant(t, s)
}

func TestQueueDropsARejectedBatchInsteadOfRetryingIt(t *testing.T) {
	sink := &memSink{fail: func(call int) error {
		if call == 0 {
			return fmt.Errorf("receiver says: %w", ErrRejected)
		}
		return nil
	}}
	q := NewQueue(sink, QueueConfig{Capacity: 100, BatchSize: 5, FlushInterval: time.Millisecond})
	runQueue(t, q)
	recs := records(10, 0, 4)
	for i := range recs {
		q.Offer(&recs[i])
	}
	waitFor(t, "one batch rejected, one shipped", 10*time.Second, func() bool {
		s := q.Stats()
		return s.DroppedRejected == 5 && s.Shipped == 5
	})
	s := q.Stats()
	if s.Retries != 0 || s.SinkErrors != 1 {
		t.Fatalf("stats %+v, want no retry and 1 sink error", s)
	}
	checkInvariant(t, s)
	sameRecords(t, sink.delivered(), recs[5:])
}

func TestOfferRefusesAndCountsWhenTheRingIsFull(t *testing.T) {
	q := NewQueue(discardSink{}, QueueConfig{Capacity: 8, BatchSize: 4})
	recs := records(20, 0, 5)
	accepted := 0
	for i := range recs {
		if q.Offer(&recs[i]) {
			accepted++
		}
	}
	s := q.Stats()
	if accepted != 8 || s.DroppedQueueFull != 12 || s.Queued != 8 || s.Offered != 20 {
		t.Fatalf("accepted %d, stats %+v: want 8 accepted, 12 dropped", accepted, s)
	}
	checkInvariant(t, s)
}

func TestOfferBatchTakesWhatFitsInOrderAndCountsTheRest(t *testing.T) {
	sink := &memSink{}
	q := NewQueue(sink, QueueConfig{Capacity: 8, BatchSize: 4})
	recs := records(13, 0, 5)
	if n := q.OfferBatch(recs[:5]); n != 5 {
		t.Fatalf("first batch: %d accepted, want 5", n)
	}
	if n := q.OfferBatch(recs[5:10]); n != 3 {
		t.Fatalf("second batch into 3 free cells: %d accepted, want 3", n)
	}
	if n := q.OfferBatch(recs[10:]); n != 0 {
		t.Fatalf("third batch into a full ring: %d accepted, want 0", n)
	}
	if n := q.OfferBatch(nil); n != 0 {
		t.Fatalf("an empty batch: %d accepted", n)
	}
	s := q.Stats()
	if s.DroppedQueueFull != 5 || s.Queued != 8 || s.Offered != 13 {
		t.Fatalf("stats %+v: want 8 queued, 5 dropped", s)
	}
	checkInvariant(t, s)
	q.take(8, q.tail.Load())
	sameRecords(t, q.pending, recs[:8])
	// The batch being sent keeps its cells until the sink took it.
	if n := q.OfferBatch(recs[5:6]); n != 0 {
		t.Fatalf("into a ring whose cells are all in the batch being sent: %d accepted, want 0", n)
	}
	// Freed cells take a batch that wraps around the ring's end; the
	// sender takes it in two parts, each a run of cells.
	q.release()
	if n := q.OfferBatch(recs[5:12]); n != 7 {
		t.Fatalf("after taking the ring: %d accepted, want 7", n)
	}
	q.take(8, q.tail.Load())
	sameRecords(t, q.pending, recs[5:12])
}

// A single producer decodes straight into the ring: Reserve hands it the
// free cells up to the ring's end, Commit queues the ones it filled, and
// the sender's batch is those very cells.
func TestReserveAndCommitQueueRecordsInPlace(t *testing.T) {
	q := NewQueue(discardSink{}, QueueConfig{Capacity: 8, BatchSize: 4})
	recs := records(13, 0, 8)
	dst := q.Reserve()
	if len(dst) != 8 {
		t.Fatalf("an empty ring of 8 reserved %d cells", len(dst))
	}
	copy(dst, recs[:5])
	q.Commit(5)
	if s := q.Stats(); s.Queued != 5 || s.Offered != 5 {
		t.Fatalf("stats %+v after committing 5", s)
	}
	checkInvariant(t, q.Stats())
	q.take(8, q.tail.Load())
	sameRecords(t, q.pending, recs[:5])
	if &q.pending[0] != &dst[0] {
		t.Fatal("the batch is not the cells the producer filled")
	}
	// Up to the ring's end: 3 cells, though the batch being sent holds 5.
	if dst = q.Reserve(); len(dst) != 3 {
		t.Fatalf("with 5 cells in the batch being sent, reserved %d cells, want the 3 before the ring's end", len(dst))
	}
	copy(dst, recs[5:8])
	q.Commit(3)
	if dst = q.Reserve(); len(dst) != 0 {
		t.Fatalf("a full ring reserved %d cells", len(dst))
	}
	q.Commit(0) // nothing read: nothing queued
	q.release()
	if dst = q.Reserve(); len(dst) != 5 {
		t.Fatalf("after the batch was sent, reserved %d cells, want the 5 it freed", len(dst))
	}
	copy(dst, recs[8:13])
	q.Commit(5)
	got := recs[:0:0]
	for q.take(8, q.tail.Load()); len(q.pending) > 0; q.take(8, q.tail.Load()) {
		got = append(got, q.pending...)
		q.release()
	}
	sameRecords(t, got, recs[5:13])
	s := q.Stats()
	if s.Offered != 13 || s.Queued != 13 || s.DroppedQueueFull != 0 {
		t.Fatalf("stats %+v: want 13 offered and queued (none sent: nothing ran the sink)", s)
	}

	// Committing more than was reserved is a bug, and says so.
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "Reserve did not return") {
			t.Fatalf("Commit of 9 cells of a ring of 8: recovered %v, want a panic naming the misuse", r)
		}
	}()
	q.Commit(9)
}

// Producers publish runs of records in whatever order they finish
// writing them; the sender takes a run only once every run before it is
// published, takes a run in parts when a batch is smaller, and is not
// fooled by the run ends that earlier laps left in the cells.
func TestTheSenderTakesPublishedRunsInOrderOnly(t *testing.T) {
	q := NewQueue(discardSink{}, QueueConfig{Capacity: 8, BatchSize: 4})
	recs := records(43, 0, 9)
	next := 0 // recs[next] is the record for the next position claimed
	// claim claims k positions as a producer would (the compare-and-swap
	// of OfferBatch) and writes their records, without publishing them.
	claim := func(k int) (pos uint64) {
		pos = q.tail.Load()
		if !q.tail.CompareAndSwap(pos, pos+uint64(k)) {
			t.Fatal("claim: the tail moved")
		}
		for j := range uint64(k) {
			q.recs[(pos+j)%q.n] = recs[next]
			next++
		}
		return pos
	}
	takeAll := func() (got []packet.Record) {
		for q.take(4, q.tail.Load()); len(q.pending) > 0; q.take(4, q.tail.Load()) {
			got = append(got, q.pending...)
			q.release()
		}
		return got
	}
	for lap := range 4 { // each lap fills the ring anew, over the ends of the last
		first := next
		a := claim(3)
		b := claim(3)
		q.publish(b, 3) // the later run first
		if got := takeAll(); len(got) != 0 {
			t.Fatalf("lap %d: took %d records while the run before them was unpublished", lap, len(got))
		}
		c := claim(2)
		q.publish(c, 2)
		q.publish(a, 3)
		got := takeAll() // in batches of at most 4: runs of 3 are taken in parts
		sameRecords(t, got, recs[first:next])
		if q.head.Load() != q.tail.Load() {
			t.Fatalf("lap %d: head %d, tail %d after taking everything", lap, q.head.Load(), q.tail.Load())
		}
	}
	// A run across the ring's end: the sender takes the cells up to the
	// end, then those from the start.
	if q.tail.Load()%q.n != 0 {
		t.Fatalf("tail %d: the test expects it at the ring's start", q.tail.Load())
	}
	q.publish(claim(5), 5)
	takeAll()
	first := next
	pos := claim(6) // 3 cells before the end, 3 after
	if pos%q.n != 5 {
		t.Fatalf("claimed at cell %d, want 5", pos%q.n)
	}
	q.publish(pos, 6)
	q.take(8, q.tail.Load())
	if len(q.pending) != 3 {
		t.Fatalf("took %d records at the ring's end, want the 3 before it", len(q.pending))
	}
	got := append([]packet.Record(nil), q.pending...)
	q.release()
	got = append(got, takeAll()...)
	sameRecords(t, got, recs[first:next])
}

func TestOfferDoesNotAllocate(t *testing.T) {
	rec := records(1, 0, 6)[0]
	q := NewQueue(discardSink{}, QueueConfig{Capacity: 1 << 12, BatchSize: 64})
	for _, tc := range []string{"room in the ring", "ring full"} {
		allocs := testing.AllocsPerRun(10000, func() { q.Offer(&rec) })
		if allocs != 0 {
			t.Errorf("%s: %.2f allocations per Offer, want 0", tc, allocs)
		}
		batch := records(7, 0, 6)
		if allocs := testing.AllocsPerRun(1000, func() { q.OfferBatch(batch) }); allocs != 0 {
			t.Errorf("%s: %.2f allocations per OfferBatch, want 0", tc, allocs)
		}
		if q.Stats().DroppedQueueFull == 0 && tc == "ring full" {
			t.Fatal("the ring never filled")
		}
	}
}

func TestRingMemoryIsAllocatedOnceAndFixed(t *testing.T) {
	q := NewQueue(discardSink{}, QueueConfig{Capacity: 1000, BatchSize: 100})
	if c := unsafe.Sizeof(q.recs[0]) + unsafe.Sizeof(q.ends[0]); c != 88 {
		t.Errorf("a cell is %d bytes; QueueConfig.Capacity's comment says 88", c)
	}
	recs, ends := &q.recs[0], &q.ends[0]
	rec := records(1, 0, 7)[0]
	for lap := range 3 {
		for range 1500 {
			q.Offer(&rec)
		}
		for range 1000 / 100 {
			q.take(100, q.tail.Load())
			// The batch is the ring's cells, not a copy.
			if len(q.pending) != 100 || &q.pending[0] != &q.recs[(q.head.Load()%1000)] {
				t.Fatalf("lap %d: batch of %d records, not the ring's cells at the head", lap, len(q.pending))
			}
			q.release()
		}
	}
	if len(q.recs) != 1000 || len(q.ends) != 1000 || &q.recs[0] != recs || &q.ends[0] != ends {
		t.Fatalf("ring reallocated: %d records, %d run ends", len(q.recs), len(q.ends))
	}
}

func TestConcurrentProducersLoseNothingAndKeepTheirOrder(t *testing.T) {
	const producers, each = 4, 20000
	sink := &memSink{}
	q := NewQueue(sink, QueueConfig{Capacity: 1024, BatchSize: 128, FlushInterval: time.Millisecond})
	runQueue(t, q)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := records(1, 0, uint64(p))[0]
			rec.SrcPort = uint16(p)
			for i := range each {
				rec.Seq = uint32(i)
				for !q.Offer(&rec) { // the test wants every record: wait for room
					runtime.Gosched()
				}
			}
		}()
	}
	wg.Wait()
	everyProducerShippedInOrder(t, q, sink, producers, each)
}

// TestBatchAndSingleProducersLoseNothingAndKeepTheirOrder: producers
// offering batches of every size, beside producers offering one record at
// a time, into a small ring that a running sender drains.
func TestBatchAndSingleProducersLoseNothingAndKeepTheirOrder(t *testing.T) {
	const producers, each = 4, 20000
	sink := &memSink{}
	q := NewQueue(sink, QueueConfig{Capacity: 1000, BatchSize: 128, FlushInterval: time.Millisecond})
	runQueue(t, q)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs := records(each, 0, uint64(p))
			for i := range recs {
				recs[i].SrcPort, recs[i].Seq = uint16(p), uint32(i)
			}
			rng := rand.New(rand.NewPCG(uint64(p), 9))
			for len(recs) > 0 {
				if p == 0 {
					if q.Offer(&recs[0]) {
						recs = recs[1:]
					}
				} else {
					recs = recs[q.OfferBatch(recs[:min(len(recs), 1+rng.IntN(600))]):]
				}
				runtime.Gosched() // the test wants every record: wait for room
			}
		}()
	}
	wg.Wait()
	everyProducerShippedInOrder(t, q, sink, producers, each)
}

func TestWaitRoomWaitsForTheSenderOrForDone(t *testing.T) {
	sink := &memSink{}
	q := NewQueue(sink, QueueConfig{Capacity: 64, BatchSize: 16, FlushInterval: time.Millisecond})
	if free := q.WaitRoom(nil); free != 64 {
		t.Fatalf("WaitRoom on an empty ring of 64: %d free", free)
	}
	recs := records(64, 0, 10)
	if n := q.OfferBatch(recs[:60]); n != 60 {
		t.Fatalf("%d of 60 accepted into an empty ring of 64", n)
	}
	if free := q.WaitRoom(nil); free != 4 {
		t.Fatalf("WaitRoom with 60 of 64 cells taken: %d free", free)
	}
	q.OfferBatch(recs[60:])

	// Nothing takes from the ring: one waiter is let go by done, the
	// other waits until Run frees cells.
	done := make(chan struct{})
	gaveUp, gotRoom := make(chan int, 1), make(chan int, 1)
	go func() { gaveUp <- q.WaitRoom(done) }()
	go func() { gotRoom <- q.WaitRoom(nil) }()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-gaveUp:
		t.Fatal("WaitRoom returned while the ring was full and done open")
	case <-gotRoom:
		t.Fatal("WaitRoom returned while the ring was full")
	default:
	}
	close(done)
	if free := <-gaveUp; free != 0 {
		t.Fatalf("WaitRoom reported %d free after done was closed on a full ring", free)
	}
	runQueue(t, q)
	select {
	case free := <-gotRoom:
		if free < 1 || free > 64 {
			t.Fatalf("WaitRoom reported %d free in a ring of 64", free)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("WaitRoom still waiting 30 s after Run started")
	}
	waitFor(t, "the 64 records shipped", 30*time.Second, func() bool { return q.Stats().Shipped == 64 })
	sameRecords(t, sink.delivered(), recs)
}

func TestAProducerThatWaitsForRoomLosesNothingToAFullRing(t *testing.T) {
	const total = 20000
	// A sink slower than the producer: without WaitRoom most records
	// would meet a full ring.
	sink := &memSink{fail: func(int) error { time.Sleep(100 * time.Microsecond); return nil }}
	q := NewQueue(sink, QueueConfig{Capacity: 256, BatchSize: 64, FlushInterval: time.Millisecond})
	runQueue(t, q)
	recs := records(total, 0, 11)
	for left := recs; len(left) > 0; {
		free := q.WaitRoom(nil)
		if free == 0 {
			t.Fatal("WaitRoom gave up with done nil")
		}
		k := min(len(left), 100, free)
		if n := q.OfferBatch(left[:k]); n != k {
			t.Fatalf("OfferBatch took %d of %d after WaitRoom reported %d free", n, k, free)
		}
		left = left[k:]
	}
	waitFor(t, "every record shipped", 60*time.Second, func() bool { return q.Stats().Shipped == total })
	s := q.Stats()
	if s.DroppedQueueFull != 0 {
		t.Fatalf("%d dropped at a full ring", s.DroppedQueueFull)
	}
	checkInvariant(t, s)
	sameRecords(t, sink.delivered(), recs)
}

func TestRunShipsWhatIsQueuedWhenItsContextEnds(t *testing.T) {
	sink := &memSink{}
	q := NewQueue(sink, QueueConfig{Capacity: 1000, BatchSize: 1000, FlushInterval: time.Hour})
	stop := runQueue(t, q)
	recs := records(10, 0, 8)
	for i := range recs {
		q.Offer(&recs[i])
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	sameRecords(t, sink.delivered(), recs)
}

func TestRunSaysWhatItCouldNotShipAndALaterRunShipsItFirst(t *testing.T) {
	var down sync.Mutex
	isDown := true
	sink := &memSink{fail: func(int) error {
		down.Lock()
		defer down.Unlock()
		if isDown {
			return errors.New("receiver down")
		}
		return nil
	}}
	cfg := QueueConfig{Capacity: 1000, BatchSize: 4, FlushInterval: time.Millisecond,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, DrainTimeout: 50 * time.Millisecond}
	q := NewQueue(sink, cfg)
	stop := runQueue(t, q)
	recs := records(10, 0, 9)
	for i := range recs {
		q.Offer(&recs[i])
	}
	waitFor(t, "a failed send", 10*time.Second, func() bool { return q.Stats().SinkErrors > 0 })
	err := stop()
	if msg := contains(err, "10 records not shipped", "receiver down"); msg != "" {
		t.Fatal(msg)
	}
	if s := q.Stats(); s.Queued != 10 {
		t.Fatalf("stats %+v, want the 10 records still queued", s)
	}
	down.Lock()
	isDown = false
	down.Unlock()
	if err := runQueue(t, q)(); err != nil {
		t.Fatalf("second Run: %v", err)
	}
	sameRecords(t, sink.delivered(), recs)
}

func TestRunRefusesToRunTwiceAtOnce(t *testing.T) {
	q := NewQueue(discardSink{}, QueueConfig{Capacity: 10, BatchSize: 1})
	runQueue(t, q)
	waitFor(t, "Run to start", 5*time.Second, func() bool { return q.running.Load() })
	err := q.Run(context.Background())
	if msg := contains(err, "already running"); msg != "" {
		t.Fatal(msg)
	}
}

func TestBackoffDoublesUpToTheMaximumWithJitter(t *testing.T) {
	q := NewQueue(discardSink{}, QueueConfig{Capacity: 10, BatchSize: 1, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	for failures, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 50: time.Second} {
		q.failures = failures
		for range 100 {
			if d := q.backoff(); d < want/2 || d > want {
				t.Fatalf("after %d failures: backoff %s, want between %s and %s", failures, d, want/2, want)
			}
		}
	}
}

func TestQueueConfigSaysWhatIsWrong(t *testing.T) {
	for _, tc := range []struct {
		cfg  QueueConfig
		want string
	}{
		{QueueConfig{}, ""},
		{QueueConfig{Capacity: 1}, "capacity 1 must be at least 2"},
		{QueueConfig{Capacity: -5}, "capacity -5"},
		{QueueConfig{Capacity: 100, BatchSize: 200}, "batch size 200 is larger than the queue capacity 100"},
		{QueueConfig{BatchSize: MaxBatchSize + 1, Capacity: 1 << 20}, "between 1 and 16384"},
		{QueueConfig{FlushInterval: -time.Second}, "flush interval -1s is negative"},
		{QueueConfig{MinBackoff: time.Minute, MaxBackoff: time.Second}, "maximum backoff 1s is below the minimum backoff 1m0s"},
		{QueueConfig{MaxBackoff: 10 * time.Millisecond}, ""}, // the default minimum follows a small maximum
		{QueueConfig{DrainTimeout: -1}, "drain timeout"},
	} {
		err := tc.cfg.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc.cfg, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.cfg, err, tc.want)
		}
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "ship.NewQueue: batch size") {
			t.Fatalf("NewQueue with a bad config: recovered %v", r)
		}
	}()
	NewQueue(discardSink{}, QueueConfig{Capacity: 10, BatchSize: 11})
}

// everyProducerShippedInOrder waits until producers*each records were
// shipped and checks that each producer's records (SrcPort the producer,
// Seq its count) reached the sink in the order it offered them.
func everyProducerShippedInOrder(t *testing.T, q *Queue, sink *memSink, producers, each int) {
	t.Helper()
	waitFor(t, "every record shipped", 30*time.Second, func() bool { return q.Stats().Shipped == uint64(producers*each) })
	next := make([]uint32, producers)
	for i, r := range sink.delivered() {
		p := r.SrcPort
		if r.Seq != next[p] {
			t.Fatalf("record %d: producer %d's record %d came after its record %d", i, p, r.Seq, next[p]-1)
		}
		next[p]++
	}
	s := q.Stats()
	checkInvariant(t, s)
	if s.Shipped != uint64(producers*each) || s.Queued != 0 {
		t.Fatalf("stats %+v", s)
	}
}
