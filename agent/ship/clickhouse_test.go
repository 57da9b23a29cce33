package ship

// Tests of the clickhouse sink against a real ClickHouse server the test
// starts (internal/chtest). They skip without clickhouse-server, and fail
// under CONNSCOPE_REQUIRE_CLICKHOUSE=1 (make test).

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/chstore"
	"github.com/connscope/connscope/internal/chclient"
	"github.com/connscope/connscope/internal/chtest"
)

func openCHStore(t *testing.T, srv *chtest.Server, db string) *chstore.Store {
	t.Helper()
	st, err := chstore.Open(context.Background(), chclient.Config{Addr: srv.Addr(), Database: db, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func count(t *testing.T, c *chclient.Client, q string) string {
	t.Helper()
	rows, err := c.QueryTSV(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(rows[0], " ")
}

// TestClickHouseSinkRoundTrip: records inserted by the sink read back
// equal, with the node, policy and a bucket the classifier shards by.
func TestClickHouseSinkRoundTrip(t *testing.T) {
	srv := chtest.Start(t)
	st := openCHStore(t, srv, "rt")
	s, err := Open(srv.URL("rt"), Options{Node: "node-1", Policy: "web"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs := records(3000, 1, 1)
	for i := 0; i < len(recs); i += 1000 {
		if err := s.Send(context.Background(), recs[i:i+1000]); err != nil {
			t.Fatal(err)
		}
	}
	body, err := st.Client().Query(context.Background(), "SELECT "+chclient.PacketColumns+" FROM packets ORDER BY seq FORMAT RowBinary")
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	rr := chclient.NewRowReader(body)
	for i := range recs {
		var row chclient.Row
		if err := rr.Next(&row); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		if row.Rec != recs[i] {
			t.Fatalf("row %d: read %+v, inserted %+v", i, row.Rec, recs[i])
		}
		if row.Node != "node-1" || row.Policy != "web" || row.Batch != uint64(i/1000+1) || row.Idx != uint32(i%1000) {
			t.Fatalf("row %d: node %q policy %q batch %d idx %d", i, row.Node, row.Policy, row.Batch, row.Idx)
		}
	}
	var row chclient.Row
	if err := rr.Next(&row); err != io.EOF {
		t.Fatalf("more rows than inserted: %v", err)
	}
	if got := count(t, st.Client(), "SELECT count(), uniqExact(bucket) > 100, max(bucket) < 4096 FROM packets"); got != "3000 1 1" {
		t.Errorf("count, buckets spread, in range: %s", got)
	}
}

// TestClickHouseSinkDownThenUp: with ClickHouse down the queue keeps what
// fits, counts the rest as dropped and the failed sends; once ClickHouse
// is back every record kept arrives, exactly once.
func TestClickHouseSinkDownThenUp(t *testing.T) {
	srv := chtest.Start(t)
	st := openCHStore(t, srv, "outage")
	sink, err := Open(srv.URL("outage"), Options{Node: "n", Policy: "p", AckTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	q := NewQueue(sink, QueueConfig{Capacity: 1000, BatchSize: 100, FlushInterval: 10 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	defer func() { cancel(); <-done }()

	recs := records(3000, 1, 2)
	for i := range recs[:500] {
		q.Offer(&recs[i])
	}
	waitFor(t, "500 records shipped", 3*time.Minute, func() bool { return q.Stats().Shipped == 500 })

	srv.Stop()
	for i := range recs[500:] {
		q.Offer(&recs[500+i])
	}
	waitFor(t, "a failed send", 3*time.Minute, func() bool { return q.Stats().SinkErrors > 0 })
	s := q.Stats()
	if s.DroppedQueueFull == 0 || s.DroppedQueueFull > 2500-1000 {
		t.Fatalf("dropped %d while ClickHouse was down: want 1 to 1500 (2500 offered, room for 1000 and a batch)", s.DroppedQueueFull)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the queue to empty", 3*time.Minute, func() bool { return q.Stats().Queued == 0 })
	s = q.Stats()
	if s.Offered != s.Shipped+s.DroppedQueueFull+s.DroppedRejected {
		t.Fatalf("offered %d != shipped %d + dropped %d + rejected %d", s.Offered, s.Shipped, s.DroppedQueueFull, s.DroppedRejected)
	}
	want := fmt.Sprintf("%d %d", s.Shipped, s.Shipped)
	if got := count(t, st.Client(), "SELECT count(), uniqExact(agent, batch, idx) FROM packets"); got != want {
		t.Fatalf("rows, distinct rows in ClickHouse: %s, want %s (shipped)", got, want)
	}
	t.Logf("shipped %d, dropped %d while down, %d failed sends", s.Shipped, s.DroppedQueueFull, s.SinkErrors)
}

// TestClickHouseSinkBadURL: the URL's mistakes are named.
func TestClickHouseSinkBadURL(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"clickhouse://ch:8123", "names no database"},
		{"clickhouse://u:p@ch:8123/db", "no user or password"},
		{"clickhouse://ch:99999/db", "port"},
		{"clickhouse://ch:8123/my-db", "plain identifier"},
		{"clickhouse:///db", "no host"},
	} {
		_, err := Open(tc.url, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.url, err, tc.want)
		}
	}
	if _, err := Open("clickhouse://ch:8123/db", Options{Token: "x"}); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Errorf("a token with a ClickHouse sink: %v", err)
	}
	if _, err := Open("clickhouse://ch:8123/db", Options{CAFile: "/etc/ssl/ca.pem"}); err == nil || !strings.Contains(err.Error(), "use clickhouses://ch:8123/db") {
		t.Errorf("a CA file with a plain HTTP ClickHouse sink: %v", err)
	}
	if _, err := Open("clickhouses://ch/db", Options{CAFile: "/nonexistent/ca.pem"}); err == nil || !strings.Contains(err.Error(), "/nonexistent/ca.pem") {
		t.Errorf("a missing CA file: %v", err)
	}
}

// TestClickHouseSinkOverHTTPS: with clickhouses:// and the CA that signed
// ClickHouse's certificate, batches are inserted over TLS; with another
// CA the handshake fails and Send says the certificate is not trusted.
func TestClickHouseSinkOverHTTPS(t *testing.T) {
	srv := chtest.Start(t)
	st := openCHStore(t, srv, "tls")
	s, err := Open(srv.TLSURL("tls"), Options{Node: "node-1", Policy: "web", CAFile: srv.CAFile()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Send(context.Background(), records(500, 1, 1)); err != nil {
		t.Fatalf("Send over HTTPS: %v", err)
	}
	if got := count(t, st.Client(), "SELECT count() FROM packets"); got != "500" {
		t.Errorf("rows after a batch over HTTPS: %s, want 500", got)
	}

	other := chtest.Start(t) // its CA signed nothing of srv's
	bad, err := Open(srv.TLSURL("tls"), Options{CAFile: other.CAFile(), AckTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := bad.Send(context.Background(), records(10, 1, 1)); err == nil || !strings.Contains(err.Error(), "not trusted by "+other.CAFile()) {
		t.Errorf("Send with another CA: %v, want the certificate not trusted", err)
	}
	if got := count(t, st.Client(), "SELECT count() FROM packets"); got != "500" {
		t.Errorf("rows after the refused batch: %s, want 500", got)
	}
}
