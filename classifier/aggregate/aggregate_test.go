package aggregate_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/geo"
	"github.com/connscope/connscope/classifier/geo/geotest"
)

func conn(client string, port uint16, first time.Time) *flow.Conn {
	c := &flow.Conn{}
	a := netip.MustParseAddr(client)
	c.ClientIP, c.IPVersion = a.As16(), 6
	if a.Is4() {
		c.IPVersion = 4
	}
	c.ServerIP = netip.MustParseAddr("192.0.2.1").As16()
	c.ClientPort, c.ServerPort = 40000, port
	c.Summary.FirstSeen = first.UnixNano()
	c.Summary.LastSeen = first.Add(time.Second).UnixNano()
	c.Summary.Packets = 2
	return c
}

func TestBucketOf(t *testing.T) {
	base := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at   time.Time
		want time.Time
	}{
		{base, base},
		{base.Add(14*time.Minute + 59*time.Second), base},
		{base.Add(15 * time.Minute), base.Add(15 * time.Minute)},
		{base.Add(-time.Nanosecond), base.Add(-15 * time.Minute)},
	} {
		if got := aggregate.BucketOf(tc.at.UnixNano()); got != tc.want.Unix() {
			t.Errorf("BucketOf(%s) = %s, want %s", tc.at, time.Unix(got, 0).UTC(), tc.want)
		}
	}
}

func TestAddCountsByDimensionAndKeepsAnomalies(t *testing.T) {
	db, err := geo.Open(geotest.Dir(t, geotest.Network{CIDR: "198.51.100.0/24", Country: "DE", ASN: 64500}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	agg := aggregate.Aggregator{Geo: db}
	d := aggregate.NewDelta(2)
	t0 := time.Date(2026, 11, 24, 10, 1, 0, 0, time.UTC)
	reset := classify.Result{Closure: classify.ClosureReset, Stage: classify.PostSYN, Tags: 1<<classify.TagReset | 1<<classify.TagSingleRST, Signature: classify.SigSYNRST}
	normal := classify.Result{Closure: classify.ClosureFIN, Stage: classify.NoMatch}
	agg.Add(d, "n1", "p", conn("198.51.100.7", 443, t0), reset)
	agg.Add(d, "n1", "p", conn("198.51.100.8", 443, t0.Add(time.Minute)), normal)
	agg.Add(d, "n1", "p", conn("203.0.113.1", 443, t0), classify.Result{Excluded: classify.NoSYN})
	agg.Add(d, "n1", "p", conn("198.51.100.7", 443, t0.Add(20*time.Minute)), reset)
	for range 3 {
		agg.Add(d, "n1", "p", conn("198.51.100.7", 443, t0), reset)
	}

	b0 := aggregate.BucketOf(t0.UnixNano())
	de := aggregate.Dims{Bucket: b0, Node: "n1", Policy: "p", Port: 443, IPVersion: 4, Country: "DE", ASN: 64500}
	c := d.Counts[de]
	if c == nil {
		t.Fatalf("no counts for %+v; have %v", de, d.Counts)
	}
	if c.Stages[classify.PostSYN] != 4 || c.Stages[classify.NoMatch] != 1 || c.Classified() != 5 {
		t.Errorf("stages %v", c.Stages)
	}
	if c.Tags[classify.TagReset] != 4 || c.Sigs[classify.SigSYNRST] != 4 || c.Sigs[classify.SigNone] != 1 {
		t.Errorf("tags %v sigs %v", c.Tags, c.Sigs)
	}
	unknown := aggregate.Dims{Bucket: b0, Node: "n1", Policy: "p", Port: 443, IPVersion: 4, Country: geo.Unknown}
	if c := d.Counts[unknown]; c == nil || c.Excluded[classify.NoSYN] != 1 || c.Classified() != 0 {
		t.Errorf("unknown client counts %+v", c)
	}
	later := de
	later.Bucket += int64(aggregate.BucketWidth / time.Second)
	if c := d.Counts[later]; c == nil || c.Stages[classify.PostSYN] != 1 {
		t.Errorf("next bucket counts %+v", c)
	}
	if d.Connections != 7 {
		t.Errorf("connections %d, want 7", d.Connections)
	}
	// 5 anomalies, bound 2: between 2 and 4 kept, the newest last.
	if n := len(d.Anomalies); n < 2 || n > 4 || d.Dropped+n != 5 {
		t.Errorf("%d anomalies kept, %d dropped", n, d.Dropped)
	}
	if a := d.Anomalies[len(d.Anomalies)-1]; a.Country != "DE" || a.ASN != 64500 || a.Stage != classify.PostSYN || a.Port != 443 {
		t.Errorf("last anomaly %+v", a)
	}
}
