package store_test

import (
	"context"
	"database/sql"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/store"
)

var t0 = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

func open(t *testing.T, path string, o store.Options) *store.Store {
	t.Helper()
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dims(bucket time.Time, node string, port uint16, ipv uint8, cc string, asn uint32) aggregate.Dims {
	return aggregate.Dims{Bucket: aggregate.BucketOf(bucket.UnixNano()), Node: node, Policy: "p", Port: port, IPVersion: ipv, Country: cc, ASN: asn}
}

// sample: 10 connections in DE/64500 on n1:443 v4 (4 post_syn, 6 no_match),
// 5 in US/64501 on n2:80 v6 (5 post_psh), one bucket later 2 in DE (post_ack).
func sample() *aggregate.Delta {
	d := aggregate.NewDelta(0)
	add := func(k aggregate.Dims, r classify.Result, n int) {
		c := d.Counts[k]
		if c == nil {
			c = &aggregate.Counts{}
			d.Counts[k] = c
		}
		for range n {
			c.Add(r)
			d.Connections++
		}
	}
	de := dims(t0, "n1", 443, 4, "DE", 64500)
	add(de, classify.Result{Stage: classify.PostSYN, Tags: 1 << classify.TagTimeout, Signature: classify.SigSYNTimeout}, 4)
	add(de, classify.Result{Stage: classify.NoMatch}, 6)
	add(de, classify.Result{Excluded: classify.MultipleSYN}, 3)
	add(dims(t0, "n2", 80, 6, "US", 64501), classify.Result{Stage: classify.PostPSH, Tags: 1<<classify.TagReset | 1<<classify.TagSingleRST, Signature: classify.SigPSHRST}, 5)
	add(dims(t0.Add(15*time.Minute), "n1", 443, 4, "DE", 64500), classify.Result{Stage: classify.PostACK, Tags: 1 << classify.TagTimeout, Signature: classify.SigACKTimeout}, 2)
	return d
}

func TestCountsPersistAcrossReopenAndAdd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "connscope.db")
	s := open(t, path, store.Options{})
	ctx := context.Background()
	if err := s.Write(ctx, sample()); err != nil {
		t.Fatal(err)
	}
	if s.LastUpdated().IsZero() {
		t.Error("LastUpdated not set after a write")
	}
	s.Close()
	s = open(t, path, store.Options{})
	if s.LastUpdated().IsZero() {
		t.Error("LastUpdated unknown after reopening a store with data")
	}
	if err := s.Write(ctx, sample()); err != nil {
		t.Fatal(err)
	}
	bs, err := s.Buckets(ctx, store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 {
		t.Fatalf("%d buckets, want 2", len(bs))
	}
	c := bs[0]
	if c.Bucket != t0.Unix() || c.Stages[classify.PostSYN] != 8 || c.Stages[classify.NoMatch] != 12 || c.Stages[classify.PostPSH] != 10 {
		t.Errorf("first bucket %+v", c)
	}
	if c.Tags[classify.TagTimeout] != 8 || c.Tags[classify.TagReset] != 10 || c.Sigs[classify.SigPSHRST] != 10 || c.Sigs[classify.SigNone] != 12 {
		t.Errorf("tags %v sigs %v", c.Tags, c.Sigs)
	}
	if c.Excluded[classify.MultipleSYN] != 6 {
		t.Errorf("excluded %v", c.Excluded)
	}
	if bs[1].Stages[classify.PostACK] != 4 {
		t.Errorf("second bucket %+v", bs[1])
	}
}

func TestFiltersSelectDimensions(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "c.db"), store.Options{})
	ctx := context.Background()
	if err := s.Write(ctx, sample()); err != nil {
		t.Fatal(err)
	}
	classified := func(f store.Filter) int64 {
		bs, err := s.Buckets(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, b := range bs {
			n += b.Classified()
		}
		return n
	}
	for _, tc := range []struct {
		name string
		f    store.Filter
		want int64
	}{
		{"all", store.Filter{}, 17},
		{"country", store.Filter{Countries: []string{"DE"}}, 12},
		{"not country", store.Filter{NotCountries: []string{"DE"}}, 5},
		{"asn", store.Filter{ASNs: []uint32{64501}}, 5},
		{"not asn", store.Filter{NotASNs: []uint32{64501}}, 12},
		{"node", store.Filter{Nodes: []string{"n2"}}, 5},
		{"port", store.Filter{Ports: []uint16{443, 80}}, 17},
		{"ip version", store.Filter{IPVersions: []uint8{6}}, 5},
		{"policy", store.Filter{Policies: []string{"other"}}, 0},
		{"start", store.Filter{Start: t0.Add(time.Minute)}, 2},
		{"end", store.Filter{End: t0.Add(15 * time.Minute)}, 15},
		{"combined", store.Filter{Countries: []string{"DE"}, Start: t0, End: t0.Add(15 * time.Minute)}, 10},
	} {
		if got := classified(tc.f); got != tc.want {
			t.Errorf("%s: %d classified, want %d", tc.name, got, tc.want)
		}
	}
	d, err := s.Dimensions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(d.Nodes, ",") != "n1,n2" || strings.Join(d.Countries, ",") != "DE,US" || len(d.ASNs) != 2 || len(d.Ports) != 2 || len(d.IPVersions) != 2 || !d.First.Equal(t0) {
		t.Errorf("dimensions %+v", d)
	}
}

func anomaly(i int, node string) aggregate.Anomaly {
	return aggregate.Anomaly{
		Time: t0.Add(time.Duration(i) * time.Second).UnixNano(), Node: node, Policy: "p",
		Client: netip.MustParseAddr("198.51.100.7"), Server: netip.MustParseAddr("192.0.2.1"),
		ClientPort: uint16(40000 + i), Port: 443, IPVersion: 4, Country: "DE", ASN: 64500,
		Stage: classify.PostPSH, Tags: 1 << classify.TagReset, Signature: classify.SigPSHRST, Packets: 3,
	}
}

func TestAnomaliesAreABoundedRing(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "c.db"), store.Options{MaxAnomalies: 5})
	ctx := context.Background()
	for batch := range 3 {
		d := aggregate.NewDelta(0)
		for i := range 4 {
			d.Anomalies = append(d.Anomalies, anomaly(batch*4+i, "n1"))
		}
		d.Anomalies[0].Node = "n2"
		if err := s.Write(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Anomalies(ctx, store.Filter{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 {
		t.Fatalf("%d anomalies kept, want 5", len(got))
	}
	if got[0].ClientPort != 40011 || got[4].ClientPort != 40007 {
		t.Errorf("kept %d..%d, want the newest 40011..40007", got[0].ClientPort, got[4].ClientPort)
	}
	a := got[0]
	if a.Client != netip.MustParseAddr("198.51.100.7") || a.Stage != classify.PostPSH || !a.Tags.Has(classify.TagReset) || a.Signature != classify.SigPSHRST || a.Country != "DE" || a.ASN != 64500 {
		t.Errorf("round trip %+v", a)
	}
	n2, err := s.Anomalies(ctx, store.Filter{Nodes: []string{"n2"}}, 100)
	if err != nil || len(n2) != 1 || n2[0].ClientPort != 40008 {
		t.Errorf("node filter: %v %+v", err, n2)
	}
	lim, _ := s.Anomalies(ctx, store.Filter{}, 2)
	if len(lim) != 2 {
		t.Errorf("limit 2 gave %d", len(lim))
	}
}

func TestRetentionDeletesOldBuckets(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "c.db"), store.Options{})
	ctx := context.Background()
	d := sample()
	d.Anomalies = []aggregate.Anomaly{anomaly(0, "n1"), anomaly(1000, "n1")}
	if err := s.Write(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Retain(ctx, t0.Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	bs, _ := s.Buckets(ctx, store.Filter{})
	if len(bs) != 1 || bs[0].Bucket != t0.Add(15*time.Minute).Unix() {
		t.Errorf("buckets after retention: %+v", bs)
	}
	as, _ := s.Anomalies(ctx, store.Filter{}, 10)
	if len(as) != 1 {
		t.Errorf("%d anomalies after retention, want 1", len(as))
	}
}

func TestAcceptDedupesAndJournals(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	s := open(t, path, store.Options{})
	ctx := context.Background()
	b := store.Batch{Instance: "a1", Sequence: 1, Node: "n1", Policy: "p", MaxTS: 100, Data: []byte("one"), Counters: store.Counters{PacketsLogged: 7}}
	for i, want := range []bool{false, true} {
		dup, _, err := s.Accept(ctx, b)
		if err != nil || dup != want {
			t.Fatalf("accept #%d: duplicate %v, %v; want %v", i, dup, err, want)
		}
	}
	b.Sequence, b.MaxTS, b.Data = 2, 200, []byte("two")
	if dup, _, err := s.Accept(ctx, b); err != nil || dup {
		t.Fatal(dup, err)
	}
	b.Instance, b.Sequence, b.Data = "a2", 1, []byte("other")
	if dup, _, err := s.Accept(ctx, b); err != nil || dup {
		t.Fatal(dup, err)
	}
	s.Close()
	s = open(t, path, store.Options{})
	b.Instance, b.Sequence = "a1", 2
	if dup, _, err := s.Accept(ctx, b); err != nil || !dup {
		t.Fatalf("after reopen: duplicate %v, %v", dup, err)
	}
	var data []string
	if err := s.Journal(ctx, func(r store.JournalRow) error { data = append(data, string(r.Data)); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(data, ",") != "one,two,other" {
		t.Errorf("journal %v", data)
	}
	agents, err := s.Agents(ctx)
	if err != nil || len(agents) != 2 || agents[0].Highest != 2 || agents[0].Counters.PacketsLogged != 7 {
		t.Errorf("agents %+v %v", agents, err)
	}

	// A commit counts, records written connections and trims the journal.
	w := []store.ConnID{{Node: "n1", Policy: "p", Key: "k1", First: 50}, {Node: "n1", Policy: "p", Key: "k2", First: 150}}
	if err := s.Commit(ctx, store.Commit{Delta: sample(), Written: w, Cutoffs: []store.Cutoff{{Node: "n1", Policy: "p", CountedBefore: 150, JournalBefore: 150, MaxID: 100}}}); err != nil {
		t.Fatal(err)
	}
	data = nil
	s.Journal(ctx, func(r store.JournalRow) error { data = append(data, string(r.Data)); return nil })
	if strings.Join(data, ",") != "two,other" {
		t.Errorf("journal after cutoff %v", data)
	}
	written, err := s.WrittenConns(ctx)
	if err != nil || len(written) != 2 || !written[w[0]] || !written[w[1]] {
		t.Errorf("written %v %v (a set stays while one of it began at or after the cutoff)", written, err)
	}
	cuts, err := s.EngineCutoffs(ctx)
	if err != nil || cuts[[2]string{"n1", "p"}] != 150 {
		t.Errorf("engine cutoffs %v %v", cuts, err)
	}
	// A row beyond MaxID stays whatever its time.
	if err := s.Commit(ctx, store.Commit{Cutoffs: []store.Cutoff{{Node: "n1", Policy: "p", CountedBefore: 100, JournalBefore: 1000, MaxID: 1}}}); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.JournalLen(ctx); n != 2 {
		t.Errorf("journal has %d rows, want 2 (ids above MaxID kept)", n)
	}
	if cuts, _ := s.EngineCutoffs(ctx); cuts[[2]string{"n1", "p"}] != 150 {
		t.Errorf("engine cutoff moved back: %v", cuts)
	}
	if err := s.Commit(ctx, store.Commit{Cutoffs: []store.Cutoff{{Node: "n1", Policy: "p", CountedBefore: 151}}}); err != nil {
		t.Fatal(err)
	}
	if written, _ := s.WrittenConns(ctx); len(written) != 0 {
		t.Errorf("written %v after a cutoff past all of them", written)
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	s := open(t, path, store.Options{})
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := store.Open(path, store.Options{}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("opening a newer schema: %v", err)
	}
}

func TestACommitWritesOnlyItsLatestAnomalies(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "c.db"), store.Options{MaxAnomalies: 10, AnomaliesPerCommit: 2})
	d := aggregate.NewDelta(0)
	for i := range 4 {
		d.Anomalies = append(d.Anomalies, anomaly(i, "n1"))
	}
	if err := s.Write(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Anomalies(context.Background(), store.Filter{}, 10)
	if len(got) != 2 || got[0].ClientPort != 40003 || got[1].ClientPort != 40002 {
		t.Errorf("kept %+v, want the latest two", got)
	}
}
