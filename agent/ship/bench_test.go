package ship

import (
	"runtime"
	"testing"
	"time"

	"github.com/connscope/connscope/agent/ship/shiptest"
)

// BenchmarkOffer is the cost the capture pays per record.
func BenchmarkOffer(b *testing.B) {
	rec := records(1, 0, 1)[0]
	b.Run("sender draining", func(b *testing.B) {
		q := NewQueue(discardSink{}, QueueConfig{FlushInterval: time.Millisecond})
		stop := runQueue(b, q)
		b.ReportAllocs()
		for b.Loop() {
			q.Offer(&rec)
		}
		b.StopTimer()
		stop()
		s := q.Stats()
		b.ReportMetric(float64(s.DroppedQueueFull)/float64(s.Offered), "dropped/op")
	})
	// A kernel batch of 512 records at a time into the default ring (5.6
	// MiB, larger than the cache), taken out after each batch as the
	// sender would: Offer per record against OfferBatch.
	batch := records(512, 0, 1)
	offerAndTake := func(b *testing.B, offer func(q *Queue)) {
		q := NewQueue(discardSink{}, QueueConfig{})
		b.ReportAllocs()
		for b.Loop() {
			offer(q)
			for q.take(len(batch), q.tail.Load()); len(q.pending) > 0; q.take(len(batch), q.tail.Load()) {
				q.release()
			}
		}
		if s := q.Stats(); s.DroppedQueueFull != 0 {
			b.Fatalf("%d dropped", s.DroppedQueueFull)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/record")
	}
	b.Run("512 by Offer, then taken", func(b *testing.B) {
		offerAndTake(b, func(q *Queue) {
			for i := range batch {
				q.Offer(&batch[i])
			}
		})
	})
	b.Run("512 by OfferBatch, then taken", func(b *testing.B) {
		offerAndTake(b, func(q *Queue) { q.OfferBatch(batch) })
	})
	b.Run("ring full", func(b *testing.B) {
		q := NewQueue(discardSink{}, QueueConfig{Capacity: 1024, BatchSize: 16})
		for q.Offer(&rec) {
		}
		b.ReportAllocs()
		for b.Loop() {
			q.Offer(&rec)
		}
	})
	b.Run("parallel producers", func(b *testing.B) {
		q := NewQueue(discardSink{}, QueueConfig{FlushInterval: time.Millisecond})
		stop := runQueue(b, q)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			rec := rec
			for pb.Next() {
				q.Offer(&rec)
			}
		})
		b.StopTimer()
		stop()
		s := q.Stats()
		b.ReportMetric(float64(s.DroppedQueueFull)/float64(s.Offered), "dropped/op")
	})
}

// BenchmarkQueueThroughput is records per second from Offer to an
// acknowledging sink. The producer waits for room instead of dropping, so
// every record is shipped.
func BenchmarkQueueThroughput(b *testing.B) {
	b.Run("discard sink", func(b *testing.B) {
		throughput(b, discardSink{})
	})
	b.Run("gRPC loopback", func(b *testing.B) {
		r := shiptest.Start(b, shiptest.Options{Discard: true})
		s, err := Open(r.URL(), Options{Node: "node-1", Policy: "default"})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		throughput(b, s)
		if got := r.Stats().Records; got != b.N {
			b.Fatalf("receiver stored %d records, want %d", got, b.N)
		}
	})
}

func throughput(b *testing.B, sink Sink) {
	recs := records(4096, 0, 1)
	q := NewQueue(sink, QueueConfig{FlushInterval: time.Millisecond})
	stop := runQueue(b, q)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for !q.Offer(&recs[i%len(recs)]) {
			runtime.Gosched()
		}
	}
	for q.Stats().Shipped < uint64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	s := q.Stats()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(s.Batches), "batches")
}

// BenchmarkFileSinkSend is the file sink's cost per record: a pcapng
// packet rebuilt from each record (headers only) and written, in batches
// of 1024 as the queue sends them.
func BenchmarkFileSinkSend(b *testing.B) {
	s, err := Open("file://"+b.TempDir()+"/bench.pcapng", Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	batch := records(1024, 0, 1)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Send(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/record")
}
