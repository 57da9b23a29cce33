package ship

// Tests of the gRPC sink and of a Queue shipping through it, against the
// real gRPC receiver of shiptest on loopback.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/connscope/connscope/agent/ship/shiptest"
	"github.com/connscope/connscope/internal/certtest"
	"github.com/connscope/connscope/packet"
)

func openSink(tb testing.TB, url string, o Options) Sink {
	tb.Helper()
	s, err := Open(url, o)
	if err != nil {
		tb.Fatalf("Open(%q): %v", url, err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func TestGRPCSinkDeliversBatchesInOrderWithTheirAcks(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	counters := Counters{PacketsLogged: 100, PacketsLostKernel: 1, ReceiveOverflows: 2, DroppedQueueFull: 3, ReadErrors: 4}
	s := openSink(t, r.URL(), Options{Node: "node-a", Policy: "edge", Counters: func() Counters { return counters }})
	var want []packet.Record
	for i, n := range []int{1, 10, 1000, 3, 1024} {
		batch := records(n, uint32(len(want)), uint64(i))
		if err := s.Send(context.Background(), batch); err != nil {
			t.Fatalf("Send batch %d: %v", i+1, err)
		}
		want = append(want, batch...)
		counters.PacketsLogged += uint64(n)
	}
	batches := r.Batches()
	if len(batches) != 5 {
		t.Fatalf("receiver has %d batches, want 5", len(batches))
	}
	instance := batches[0].AgentInstance
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(instance) {
		t.Errorf("agent instance %q, want 32 hex digits", instance)
	}
	logged := uint64(100)
	for i, b := range batches {
		if b.Sequence != uint64(i+1) || b.Node != "node-a" || b.Policy != "edge" || b.AgentInstance != instance {
			t.Errorf("batch %d: sequence %d node %q policy %q instance %q", i, b.Sequence, b.Node, b.Policy, b.AgentInstance)
		}
		c := b.Counters
		if c.PacketsLogged != logged || c.PacketsLostKernel != 1 || c.ReceiveOverflows != 2 || c.PacketsDroppedQueueFull != 3 || c.ReadErrors != 4 {
			t.Errorf("batch %d: counters %v", i, c)
		}
		logged += uint64(len(b.Packets))
	}
	sameRecords(t, r.Records(), want)
	if st := r.Stats(); st.Streams != 1 || st.Duplicates != 0 {
		t.Errorf("receiver stats %+v, want one stream and no duplicate", st)
	}
}

func TestGRPCSinkSendsTheBearerToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]Options{
		"Token":     {Token: "s3cret"},
		"TokenFile": {TokenFile: tokenFile},
	} {
		t.Run(name, func(t *testing.T) {
			r := shiptest.Start(t, shiptest.Options{})
			r.RequireToken("s3cret")
			s := openSink(t, r.URL(), o)
			if err := s.Send(context.Background(), records(3, 0, 1)); err != nil {
				t.Fatalf("Send with the right token: %v", err)
			}
			if st := r.Stats(); st.AuthFailures != 0 || st.Records != 3 {
				t.Fatalf("receiver stats %+v", st)
			}
		})
	}
}

func TestGRPCSinkReadsTheTokenFileAgainForANewStream(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	write := func(tok string) {
		if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	r := shiptest.Start(t, shiptest.Options{})
	r.RequireToken("first")
	s := openSink(t, r.URL(), Options{TokenFile: tokenFile})
	if err := s.Send(context.Background(), records(1, 0, 1)); err != nil {
		t.Fatal(err)
	}
	// The token rotates and the receiver restarts: the sink's stream
	// breaks, and the next stream must carry the new token.
	write("second")
	r.RequireToken("second")
	r.Stop()
	r.Restart()
	waitFor(t, "a Send on a new stream", 20*time.Second, func() bool {
		return s.Send(context.Background(), records(1, 1, 2)) == nil
	})
	if st := r.Stats(); st.AuthFailures != 0 || st.Records != 2 {
		t.Fatalf("receiver stats %+v, want 2 records and no refused stream", st)
	}
}

func TestWrongOrMissingTokenIsUnauthenticatedAndCountedAsASinkError(t *testing.T) {
	for name, o := range map[string]Options{"wrong token": {Token: "guess"}, "no token": {}} {
		t.Run(name, func(t *testing.T) {
			r := shiptest.Start(t, shiptest.Options{})
			r.RequireToken("right")
			s := openSink(t, r.URL(), o)
			err := s.Send(context.Background(), records(1, 0, 1))
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("Send: %v, want Unauthenticated", err)
			}
			if msg := contains(err, "refused the agent's credentials", "token"); msg != "" {
				t.Fatal(msg)
			}
			q := NewQueue(s, QueueConfig{Capacity: 100, BatchSize: 10, FlushInterval: time.Millisecond,
				MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, DrainTimeout: 20 * time.Millisecond})
			stop := runQueue(t, q)
			recs := records(5, 0, 2)
			for i := range recs {
				q.Offer(&recs[i])
			}
			waitFor(t, "sink errors", 10*time.Second, func() bool { return q.Stats().SinkErrors >= 3 })
			stop()
			st := q.Stats()
			if st.Shipped != 0 || st.Queued != 5 || st.Retries < 2 {
				t.Fatalf("queue stats %+v, want nothing shipped, 5 queued, retries", st)
			}
			if rs := r.Stats(); rs.Records != 0 || rs.AuthFailures < 4 {
				t.Fatalf("receiver stats %+v", rs)
			}
		})
	}
}

func TestQueueRetriesWhileTheReceiverIsDownAndLosesNothing(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	s := openSink(t, r.URL(), Options{AckTimeout: 5 * time.Second})
	// One batch on a live receiver first, so the stream is open when it
	// goes down.
	if err := s.Send(context.Background(), records(1, 0, 1)); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	q := NewQueue(s, QueueConfig{Capacity: 10000, BatchSize: 100, FlushInterval: 5 * time.Millisecond,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	stop := runQueue(t, q)
	recs := records(2000, 1, 2)
	for i := range recs {
		if !q.Offer(&recs[i]) {
			t.Fatalf("Offer %d refused with a ring of 10000", i)
		}
	}
	waitFor(t, "failed sends and retries", 20*time.Second, func() bool {
		st := q.Stats()
		return st.SinkErrors >= 3 && st.Retries >= 2
	})
	if st := q.Stats(); st.Shipped != 0 || st.Queued != 2000 {
		t.Fatalf("receiver down: stats %+v", st)
	}
	r.Restart()
	waitFor(t, "every record shipped", 30*time.Second, func() bool { return q.Stats().Shipped == 2000 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st := q.Stats()
	checkInvariant(t, st)
	if st.DroppedQueueFull != 0 || st.Queued != 0 {
		t.Fatalf("stats %+v", st)
	}
	sameRecords(t, r.Records()[1:], recs)
}

func TestABatchWhoseAckWasLostIsSentAgainWithItsSequenceAndStoredOnce(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	s := openSink(t, r.URL(), Options{})
	b1, b2 := records(5, 0, 1), records(5, 5, 2)
	r.BreakAfterAccept(1)
	if err := s.Send(context.Background(), b1); status.Code(err) != codes.Unavailable {
		t.Fatalf("Send when the ack is lost: %v, want Unavailable", err)
	}
	if err := s.Send(context.Background(), b1); err != nil {
		t.Fatalf("Send again: %v", err)
	}
	if err := s.Send(context.Background(), b2); err != nil {
		t.Fatal(err)
	}
	batches := r.Batches()
	if len(batches) != 2 || batches[0].Sequence != 1 || batches[1].Sequence != 2 {
		t.Fatalf("receiver stored %d batches, want sequences 1 and 2", len(batches))
	}
	if st := r.Stats(); st.Duplicates != 1 || st.Streams != 2 {
		t.Fatalf("receiver stats %+v, want 1 duplicate on 2 streams", st)
	}
	sameRecords(t, r.Records(), append(b1, b2...))
}

func TestAnAckThatDoesNotComeInTimeEndsTheStream(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	r.Hold()
	// The timeout is long enough for the stream to reach the receiver and
	// for the second round trip on a loaded machine (100ms was not: a
	// stream cancelled before the receiver saw it left one stream counted).
	s := openSink(t, r.URL(), Options{AckTimeout: time.Second})
	batch := records(3, 0, 1)
	err := s.Send(context.Background(), batch)
	if msg := contains(err, "batch 1", "no ack within 1s"); msg != "" {
		t.Fatal(msg)
	}
	r.Release()
	if err := s.Send(context.Background(), batch); err != nil {
		t.Fatalf("Send after the receiver caught up: %v", err)
	}
	sameRecords(t, r.Records(), batch)
	if st := r.Stats(); st.Streams != 2 {
		t.Fatalf("receiver stats %+v, want a second stream", st)
	}
}

func TestSendEndsWithItsContext(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	r.Hold()
	s := openSink(t, r.URL(), Options{AckTimeout: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := s.Send(ctx, records(1, 0, 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send with a cancelled context: %v, want context.Canceled", err)
	}
	r.Release()
}

func TestCloseEndsABlockedSend(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	r.Hold()
	defer r.Release()
	s := openSink(t, r.URL(), Options{AckTimeout: time.Minute})
	time.AfterFunc(50*time.Millisecond, func() { s.Close() })
	if err := s.Send(context.Background(), records(1, 0, 1)); !errors.Is(err, errSinkClosed) {
		t.Fatalf("Send while closing: %v, want the sink closed", err)
	}
	if err := s.Send(context.Background(), records(1, 0, 1)); !errors.Is(err, errSinkClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestARejectedBatchIsDroppedAndTheNextOnesShipped(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	r.FailWith(status.Error(codes.InvalidArgument, "bad batch"))
	s := openSink(t, r.URL(), Options{})
	q := NewQueue(s, QueueConfig{Capacity: 100, BatchSize: 10, FlushInterval: time.Millisecond, MinBackoff: time.Millisecond})
	runQueue(t, q)
	recs := records(10, 0, 1)
	for i := range recs {
		q.Offer(&recs[i])
	}
	waitFor(t, "the batch rejected", 10*time.Second, func() bool { return q.Stats().DroppedRejected == 10 })
	r.FailWith(nil)
	more := records(4, 10, 2)
	for i := range more {
		q.Offer(&more[i])
	}
	waitFor(t, "the next records shipped", 10*time.Second, func() bool { return q.Stats().Shipped == 4 })
	st := q.Stats()
	checkInvariant(t, st)
	if st.Retries != 0 || st.SinkErrors != 1 {
		t.Fatalf("stats %+v, want one error and no retry", st)
	}
	sameRecords(t, r.Records(), more)
	if b := r.Batches(); b[0].Sequence != 2 {
		t.Fatalf("the batch after the rejected one has sequence %d, want 2: a rejected batch uses up its number", b[0].Sequence)
	}
}

func TestASlowReceiverFillsTheRingAndOfferNeverBlocks(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	r.Hold()
	s := openSink(t, r.URL(), Options{AckTimeout: time.Minute})
	q := NewQueue(s, QueueConfig{Capacity: 1000, BatchSize: 100, FlushInterval: time.Millisecond})
	stop := runQueue(t, q)
	// The receiver holds every batch: the first one taken waits for its
	// ack, the ring fills, and Offer refuses the rest. Offer runs in the
	// test's goroutine: if it blocked, the test would not end.
	recs := records(5000, 0, 1)
	var accepted []packet.Record
	for i := range recs {
		if q.Offer(&recs[i]) {
			accepted = append(accepted, recs[i])
		}
	}
	st := q.Stats()
	checkInvariant(t, st)
	if n := len(accepted); n != 1000 {
		t.Fatalf("%d records accepted, want the ring's 1000 (the batch in flight is in the ring)", n)
	}
	if st.Offered != 5000 || st.DroppedQueueFull != 5000-uint64(len(accepted)) || st.DroppedQueueFull == 0 {
		t.Fatalf("stats %+v", st)
	}
	r.Release()
	waitFor(t, "the accepted records shipped", 30*time.Second, func() bool { return q.Stats().Shipped == uint64(len(accepted)) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(q.recs) != 1000 {
		t.Fatalf("ring of %d cells: memory is not what was configured", len(q.recs))
	}
	sameRecords(t, r.Records(), accepted)
}

func TestRunLeavesNoGoroutineBehind(t *testing.T) {
	r := shiptest.Start(t, shiptest.Options{})
	check := goroutineBaseline(t)
	s, err := Open(r.URL(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	q := NewQueue(s, QueueConfig{Capacity: 1000, BatchSize: 10, FlushInterval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- q.Run(ctx) }()
	recs := records(100, 0, 1)
	for i := range recs {
		q.Offer(&recs[i])
	}
	waitFor(t, "records shipped", 10*time.Second, func() bool { return q.Stats().Shipped == 100 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check()
}

func TestGRPCSinkOverTLS(t *testing.T) {
	serverTLS, roots := selfSigned(t)
	r := shiptest.Start(t, shiptest.Options{TLS: serverTLS})
	r.RequireToken("t0ken")

	s := openSink(t, r.URL(), Options{Token: "t0ken", TLSConfig: &tls.Config{RootCAs: roots}})
	if err := s.Send(context.Background(), records(2, 0, 1)); err != nil {
		t.Fatalf("Send over TLS: %v", err)
	}

	// The system roots do not know the test's certificate.
	s = openSink(t, r.URL(), Options{Token: "t0ken", AckTimeout: 5 * time.Second})
	if msg := contains(s.Send(context.Background(), records(1, 0, 1)), "certificate"); msg != "" {
		t.Fatal(msg)
	}
	// Plaintext to a TLS receiver fails too.
	s = openSink(t, "grpc://"+r.Addr(), Options{Token: "t0ken", AckTimeout: 5 * time.Second})
	if err := s.Send(context.Background(), records(1, 0, 1)); err == nil {
		t.Fatal("plaintext Send to a TLS receiver succeeded")
	}
	if st := r.Stats(); st.Records != 2 {
		t.Fatalf("receiver stats %+v", st)
	}
}

// TestGRPCSinkCAFile: a grpcs:// sink with a CA file trusts exactly the
// CAs in the file at each handshake: a receiver whose certificate another
// CA signed is refused (and gets no batch) until the file holds that CA,
// which a reconnection then takes without reopening the sink; and the
// certificate must hold the sink's host, since the file's CAs are checked
// by the sink's own verification, not by crypto/tls's.
func TestGRPCSinkCAFile(t *testing.T) {
	dir := t.TempDir()
	caA, caB := certtest.NewCA(t, dir, "a"), certtest.NewCA(t, dir, "b")
	r := shiptest.Start(t, shiptest.Options{TLS: caB.ServerConfig(t, "receiver")})
	r.RequireToken("t0ken")
	caFile := filepath.Join(dir, "ca.pem")
	copyFile := func(from string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(caFile+".tmp", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(caFile+".tmp", caFile); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(caA.CertFile)
	s := openSink(t, r.URL(), Options{Token: "t0ken", CAFile: caFile, AckTimeout: 5 * time.Second})
	if msg := contains(s.Send(context.Background(), records(1, 0, 1)), "not trusted by "+caFile); msg != "" {
		t.Fatal(msg)
	}
	if st := r.Stats(); st.Records != 0 {
		t.Fatalf("a receiver the CA file does not trust got %d records", st.Records)
	}
	copyFile(caB.CertFile) // the CA replaced, as a Secret's update does
	// gRPC waits out its reconnection backoff before the next handshake;
	// until then a Send fails with the last error, as the agent's retries
	// would see.
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := s.Send(context.Background(), records(2, 0, 1))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Send after the CA file changed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := r.Stats(); st.Records != 2 {
		t.Fatalf("receiver stats %+v", st)
	}

	// Signed by the trusted CA, but for another name.
	other := shiptest.Start(t, shiptest.Options{TLS: caB.ServerConfig(t, "elsewhere", "classifier.example")})
	s = openSink(t, other.URL(), Options{CAFile: caFile, AckTimeout: 5 * time.Second})
	if msg := contains(s.Send(context.Background(), records(1, 0, 1)), "127.0.0.1"); msg != "" {
		t.Fatal(msg)
	}
	if st := other.Stats(); st.Records != 0 {
		t.Fatalf("a receiver with another name got %d records", st.Records)
	}

	// A file without a certificate is refused at Open; grpc:// takes none.
	if _, err := Open(r.URL(), Options{CAFile: filepath.Join(dir, "missing.pem")}); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("missing CA file: %v", err)
	}
	if _, err := Open("grpc://"+r.Addr(), Options{CAFile: caFile}); err == nil || !strings.Contains(err.Error(), "plaintext") {
		t.Errorf("CA file with grpc://: %v", err)
	}
	if _, err := Open(r.URL(), Options{CAFile: caFile, TLSConfig: &tls.Config{}}); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("CA file with a TLS configuration: %v", err)
	}
}

// selfSigned makes a CA and a certificate it signs for 127.0.0.1, and
// returns the server's TLS configuration and a pool that trusts the CA.
func selfSigned(tb testing.TB) (*tls.Config, *x509.CertPool) {
	ca := certtest.NewCA(tb, tb.TempDir(), "shiptest")
	return ca.ServerConfig(tb, "shiptest"), ca.Pool()
}
