// Package shiptest is a minimal receiver of the Ingest protocol
// (packet/ingestpb) for tests: a real gRPC server on 127.0.0.1 that
// records the batches agents push, and that a test can make fail, slow,
// stop and start again, or check the bearer token.
//
// It accepts a batch the way the classifier is meant to: it keeps the
// highest sequence number accepted per agent instance, stores a batch
// only if its number is higher, and acknowledges duplicates without
// storing them again. It persists nothing and is not meant for
// production.
package shiptest

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/connscope/connscope/packet"
	"github.com/connscope/connscope/packet/ingestpb"
)

// Options configure a Receiver.
type Options struct {
	// TLS, when set, makes the receiver serve TLS (a grpcs:// sink).
	TLS *tls.Config
	// Discard keeps no batches, only the counts (for benchmarks).
	Discard bool
}

// Stats count what a Receiver saw.
type Stats struct {
	// Streams counts Push streams opened.
	Streams int
	// Batches and Records count the batches accepted and stored.
	Batches, Records int
	// Duplicates counts batches acknowledged without storing: their
	// sequence number was not above the highest accepted of their agent
	// instance.
	Duplicates int
	// AuthFailures counts streams refused for their token.
	AuthFailures int
}

// Receiver is an Ingest server on 127.0.0.1 for tests.
type Receiver struct {
	ingestpb.UnimplementedIngestServer

	tb   testing.TB
	opts Options
	addr string

	mu        sync.Mutex
	srv       *grpc.Server
	served    chan struct{} // closed when the current server's Serve returns
	batches   []*ingestpb.PacketBatch
	highest   map[string]uint64
	stats     Stats
	token     string
	failWith  error
	delay     time.Duration
	hold      chan struct{} // when non-nil, batches wait until it is closed
	breakNext int
	accepted  chan struct{} // signalled after each stored batch
}

// Start serves on a free port of 127.0.0.1 until the test ends.
func Start(tb testing.TB, o Options) *Receiver {
	tb.Helper()
	r := &Receiver{tb: tb, opts: o, highest: map[string]uint64{}, accepted: make(chan struct{}, 1)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("shiptest: listen: %v", err)
	}
	r.addr = lis.Addr().String()
	r.serve(lis)
	tb.Cleanup(r.Stop)
	return r
}

// Addr is the receiver's host:port.
func (r *Receiver) Addr() string { return r.addr }

// URL is the sink URL that reaches the receiver: grpc://host:port, or
// grpcs://host:port when it serves TLS.
func (r *Receiver) URL() string {
	if r.opts.TLS != nil {
		return "grpcs://" + r.addr
	}
	return "grpc://" + r.addr
}

func (r *Receiver) serve(lis net.Listener) {
	var opts []grpc.ServerOption
	if r.opts.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(r.opts.TLS)))
	}
	srv := grpc.NewServer(opts...)
	ingestpb.RegisterIngestServer(srv, r)
	served := make(chan struct{})
	r.mu.Lock()
	r.srv, r.served = srv, served
	r.mu.Unlock()
	go func() {
		defer close(served)
		srv.Serve(lis)
	}()
}

// Stop stops serving at once, like a receiver that crashed: the listener
// and every stream are closed. It is called when the test ends.
func (r *Receiver) Stop() {
	r.mu.Lock()
	srv, served := r.srv, r.served
	r.srv = nil
	r.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Stop()
	<-served
}

// Restart serves again on the same address after Stop.
func (r *Receiver) Restart() {
	r.tb.Helper()
	r.mu.Lock()
	running := r.srv != nil
	r.mu.Unlock()
	if running {
		r.tb.Fatal("shiptest: Restart while serving")
	}
	var lis net.Listener
	var err error
	// The port was just released; another process could take it, but on
	// loopback in a test that does not happen. Retry briefly in case the
	// old listener is still closing.
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", r.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		r.tb.Fatalf("shiptest: listen again on %s: %v", r.addr, err)
	}
	r.serve(lis)
}

// RequireToken makes new streams that do not carry `authorization: Bearer
// token` fail with UNAUTHENTICATED. "" accepts any stream.
func (r *Receiver) RequireToken(token string) {
	r.mu.Lock()
	r.token = token
	r.mu.Unlock()
}

// FailWith makes every batch received end its stream with err (a status
// error, e.g. status.Error(codes.Unavailable, ...)) instead of being
// accepted. nil accepts batches again.
func (r *Receiver) FailWith(err error) {
	r.mu.Lock()
	r.failWith = err
	r.mu.Unlock()
}

// SetDelay makes the receiver wait d before it accepts each batch.
func (r *Receiver) SetDelay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
}

// Hold makes batches wait, unaccepted, until Release: a receiver as slow
// as a test needs.
func (r *Receiver) Hold() {
	r.mu.Lock()
	if r.hold == nil {
		r.hold = make(chan struct{})
	}
	r.mu.Unlock()
}

// Release lets held batches and later ones through.
func (r *Receiver) Release() {
	r.mu.Lock()
	if r.hold != nil {
		close(r.hold)
		r.hold = nil
	}
	r.mu.Unlock()
}

// BreakAfterAccept makes the next n batches be accepted (stored) and
// their stream then end with UNAVAILABLE without an ack: the ack is lost.
func (r *Receiver) BreakAfterAccept(n int) {
	r.mu.Lock()
	r.breakNext = n
	r.mu.Unlock()
}

// Stats returns the counts so far.
func (r *Receiver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Batches returns the batches stored so far, in the order accepted.
func (r *Receiver) Batches() []*ingestpb.PacketBatch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*ingestpb.PacketBatch(nil), r.batches...)
}

// Records returns the records of the batches stored so far, in order.
func (r *Receiver) Records() []packet.Record {
	r.tb.Helper()
	var recs []packet.Record
	for i, b := range r.Batches() {
		var err error
		if recs, err = ingestpb.AppendRecords(recs, b.Packets); err != nil {
			r.tb.Fatalf("shiptest: batch %d (sequence %d): %v", i, b.Sequence, err)
		}
	}
	return recs
}

// WaitRecords waits until at least n records are stored and fails the
// test after timeout.
func (r *Receiver) WaitRecords(n int, timeout time.Duration) {
	r.tb.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if got := r.Stats().Records; got >= n {
			return
		}
		select {
		case <-r.accepted:
		case <-deadline.C:
			r.tb.Fatalf("shiptest: %d records stored after %s, want %d", r.Stats().Records, timeout, n)
		}
	}
}

// Push is the Ingest service.
func (r *Receiver) Push(stream ingestpb.Ingest_PushServer) error {
	ctx := stream.Context()
	r.mu.Lock()
	r.stats.Streams++
	token := r.token
	r.mu.Unlock()
	if token != "" {
		md, _ := metadata.FromIncomingContext(ctx)
		if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+token {
			r.mu.Lock()
			r.stats.AuthFailures++
			r.mu.Unlock()
			return status.Error(codes.Unauthenticated, "shiptest: missing or wrong bearer token")
		}
	}
	for {
		b, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		r.mu.Lock()
		hold, delay := r.hold, r.delay
		r.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return status.FromContextError(ctx.Err()).Err()
			}
		}
		if err := r.accept(b); err != nil {
			return err
		}
		if err := stream.Send(&ingestpb.BatchAck{Sequence: b.Sequence}); err != nil {
			return err
		}
	}
}

// accept stores b unless it is a duplicate, or returns the error the
// stream must end with.
func (r *Receiver) accept(b *ingestpb.PacketBatch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failWith != nil {
		return r.failWith
	}
	if _, err := ingestpb.AppendRecords(nil, b.Packets); err != nil {
		return status.Errorf(codes.InvalidArgument, "batch %d: %v", b.Sequence, err)
	}
	if b.Sequence <= r.highest[b.AgentInstance] {
		r.stats.Duplicates++
	} else {
		r.highest[b.AgentInstance] = b.Sequence
		r.stats.Batches++
		r.stats.Records += len(b.Packets)
		if !r.opts.Discard {
			r.batches = append(r.batches, b)
		}
		select {
		case r.accepted <- struct{}{}:
		default:
		}
	}
	if r.breakNext > 0 {
		r.breakNext--
		return status.Error(codes.Unavailable, "shiptest: stream broken after the batch was accepted, before its ack")
	}
	return nil
}

// String names the receiver in test logs.
func (r *Receiver) String() string { return fmt.Sprintf("shiptest receiver %s", r.addr) }

var _ ingestpb.IngestServer = (*Receiver)(nil)
