package ingest_test

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/ingest"
	"github.com/connscope/connscope/classifier/store"
	"github.com/connscope/connscope/packet"
	"github.com/connscope/connscope/packet/ingestpb"
)

// BenchmarkIngest measures records accepted per second through the whole
// server side (decode, journal transaction, table, commits), without the
// network: batches of 1000 records, 4 packets per connection.
func BenchmarkIngest(b *testing.B) {
	st, err := store.Open(filepath.Join(b.TempDir(), "c.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	c := &clock{}
	srv, err := ingest.New(context.Background(), ingest.Config{Store: st, Flow: flow.Config{IdleTimeout: 100 * time.Millisecond}, Now: c.Now, Grace: time.Nanosecond})
	if err != nil {
		b.Fatal(err)
	}
	const batch = 1000
	recs := make([]packet.Record, batch)
	server := netip.MustParseAddr("192.0.2.1")
	base := time.Now()
	conn := 0
	fill := func(n int) {
		for i := 0; i < batch; i += 4 {
			for j, f := range []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK, packet.RST} {
				r := &recs[i+j]
				*r = packet.Record{Timestamp: base.Add(time.Duration(n) * time.Millisecond).UnixNano(), SrcPort: uint16(conn), DstPort: 443, Flags: f, Seq: 1}
				r.SetSrc(netip.AddrFrom4([4]byte{10, byte(conn >> 16), byte(conn >> 8), byte(conn)}))
				r.SetDst(server)
			}
			conn++
		}
	}
	b.ResetTimer()
	for n := range b.N {
		fill(n)
		pb := &ingestpb.PacketBatch{Node: "n", Policy: "p", AgentInstance: "bench", Sequence: uint64(n + 1), Packets: ingestpb.AppendPackets(nil, recs)}
		if err := ingest.Accept(srv, pb); err != nil {
			b.Fatal(err)
		}
		if n%50 == 49 {
			c.Set(base.Add(time.Duration(n) * time.Millisecond))
			if err := srv.Commit(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkIngestParallel is BenchmarkIngest with 8 agents submitting at
// once: their batches share transactions (group commit).
func BenchmarkIngestParallel(b *testing.B) {
	st, err := store.Open(filepath.Join(b.TempDir(), "c.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	srv, err := ingest.New(context.Background(), ingest.Config{Store: st, Flow: flow.Config{IdleTimeout: 100 * time.Millisecond}})
	if err != nil {
		b.Fatal(err)
	}
	const batch = 1000
	var agent atomic.Int64
	b.SetParallelism(4) // 8 submitters on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := agent.Add(1)
		recs := make([]packet.Record, batch)
		base := time.Now()
		seq := uint64(0)
		for pb.Next() {
			seq++
			for i := range recs {
				r := &recs[i]
				*r = packet.Record{Timestamp: base.Add(time.Duration(seq) * time.Millisecond).UnixNano(), SrcPort: uint16(i), DstPort: 443, Flags: packet.SYN, Seq: uint32(seq)}
				r.SetSrc(netip.AddrFrom4([4]byte{10, byte(id), byte(seq >> 8), byte(seq)}))
				r.SetDst(netip.MustParseAddr("192.0.2.1"))
			}
			pb := &ingestpb.PacketBatch{Node: fmt.Sprint("n", id), Policy: "p", AgentInstance: fmt.Sprint("bench", id), Sequence: seq, Packets: ingestpb.AppendPackets(nil, recs)}
			if err := ingest.Accept(srv, pb); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(srv.Stats().Batches)/float64(max(srv.Stats().Groups, 1)), "batches/transaction")
}
