package ship

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/connscope/connscope/packet"
	"github.com/connscope/connscope/packet/ingestpb"
)

// reconnectBackoff replaces gRPC's default reconnection backoff (up to
// 120 s), so that a classifier that comes back is reached within seconds;
// the Queue's own backoff paces the retries above it.
var reconnectBackoff = grpc.ConnectParams{
	Backoff: backoff.Config{
		BaseDelay:  100 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   5 * time.Second,
	},
	MinConnectTimeout: 5 * time.Second,
}

var (
	errAckTimeout   = errors.New("no ack within the ack timeout")
	errStreamClosed = errors.New("stream closed")
	errSinkClosed   = errors.New("sink closed")
)

// grpcSink sends batches on one Ingest.Push stream at a time, one batch
// in flight.
type grpcSink struct {
	target   string
	opts     Options
	timeout  time.Duration
	conn     *grpc.ClientConn
	client   ingestpb.IngestClient
	instance string

	// life is cancelled by Close; every stream's context derives from it.
	life      context.Context
	endLife   context.CancelFunc
	closeOnce sync.Once
	closeErr  error

	mu           sync.Mutex // held by Send for its whole duration
	stream       ingestpb.Ingest_PushClient
	streamCtx    context.Context
	streamCancel context.CancelCauseFunc
	// acked is the sequence number of the last batch acknowledged or
	// rejected; the next batch is acked+1, also when it is a batch sent
	// again after a failure.
	acked uint64
	// frame holds the batches' fields besides the packets; wire is the
	// batch being sent, encoded by ingestpb.AppendBatch straight from the
	// records (no message per packet) into storage reused from batch to
	// batch: ingestpb.WireCodec copies it into a buffer of gRPC's own.
	frame ingestpb.Frame
	wire  ingestpb.Wire
}

func openGRPC(target string, useTLS bool, o Options) (*grpcSink, error) {
	creds := insecure.NewCredentials()
	if useTLS {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.TLSConfig != nil {
			cfg = o.TLSConfig.Clone()
		}
		if o.CAFile != "" {
			var err error
			if cfg, err = CAFileTLS(o.CAFile, target); err != nil {
				return nil, fmt.Errorf("gRPC sink %s: %w", target, err)
			}
		}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(reconnectBackoff),
		grpc.WithUserAgent("connscope-agent"),
	)
	if err != nil {
		return nil, fmt.Errorf("gRPC sink %s: %w", target, err)
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		conn.Close()
		return nil, fmt.Errorf("gRPC sink %s: draw an agent instance id: %w", target, err)
	}
	s := &grpcSink{
		target:   target,
		opts:     o,
		timeout:  o.AckTimeout,
		conn:     conn,
		client:   ingestpb.NewIngestClient(conn),
		instance: hex.EncodeToString(id[:]),
	}
	if s.timeout == 0 {
		s.timeout = DefaultAckTimeout
	}
	s.life, s.endLife = context.WithCancel(context.Background())
	s.frame.Node, s.frame.Policy, s.frame.AgentInstance = o.Node, o.Policy, s.instance
	s.frame.HasCounters = o.Counters != nil
	return s, nil
}

// Send sends batch on the open stream, opening one if there is none, and
// waits for its ack. Any failure ends the stream: the next Send opens a
// new one and sends with the same sequence number.
func (s *grpcSink) Send(ctx context.Context, batch []packet.Record) error {
	if len(batch) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.life.Err() != nil {
		return fmt.Errorf("gRPC sink %s: %w", s.target, errSinkClosed)
	}
	if s.stream == nil {
		s.streamCtx, s.streamCancel = context.WithCancelCause(s.life)
	}
	// The ack timeout and ctx end the stream, which ends a blocked
	// SendMsg or RecvMsg.
	cancel := s.streamCancel
	timer := time.AfterFunc(s.timeout, func() { cancel(errAckTimeout) })
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	seq := s.acked + 1
	err := s.roundTrip(seq, batch)
	timerStopped, ctxStopped := timer.Stop(), stop()
	if err != nil {
		return s.fail(seq, err)
	}
	s.acked = seq
	if !timerStopped || !ctxStopped {
		// The timeout or ctx ended the stream just after the ack came.
		s.closeStream()
	}
	return nil
}

func (s *grpcSink) roundTrip(seq uint64, batch []packet.Record) error {
	if s.stream == nil {
		ctx := s.streamCtx
		token, err := s.token()
		if err != nil {
			return err
		}
		if token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		}
		stream, err := s.client.Push(ctx, grpc.ForceCodecV2(ingestpb.WireCodec{}))
		if err != nil {
			return fmt.Errorf("open stream: %w", err)
		}
		s.stream = stream
	}
	s.frame.Sequence = seq
	if s.opts.Counters != nil {
		c := s.opts.Counters()
		s.frame.Counters.PacketsLogged = c.PacketsLogged
		s.frame.Counters.PacketsLostKernel = c.PacketsLostKernel
		s.frame.Counters.ReceiveOverflows = c.ReceiveOverflows
		s.frame.Counters.PacketsDroppedQueueFull = c.DroppedQueueFull
		s.frame.Counters.ReadErrors = c.ReadErrors
	}
	s.wire.B = ingestpb.AppendBatch(s.wire.B[:0], &s.frame, batch)
	if err := s.stream.SendMsg(&s.wire); err != nil {
		if errors.Is(err, io.EOF) {
			// The receiver ended the stream; Recv returns its status.
			_, err = s.stream.Recv()
		}
		return err
	}
	for {
		ack, err := s.stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("the receiver ended the stream without acknowledging the batch")
		}
		if err != nil {
			return err
		}
		switch {
		case ack.Sequence == seq:
			return nil
		case ack.Sequence > seq:
			return fmt.Errorf("the receiver acknowledged batch %d, which was not sent", ack.Sequence)
		}
		// An ack of an earlier batch: it is acknowledged already.
	}
}

// token returns the bearer token to send, reading the token file again.
func (s *grpcSink) token() (string, error) {
	if s.opts.TokenFile == "" {
		return s.opts.Token, nil
	}
	return ReadTokenFile(s.opts.TokenFile)
}

// ReadTokenFile reads a bearer token file as a gRPC sink does
// (Options.TokenFile): its contents without surrounding white space, which
// must not be empty. The agent calls it before it starts, so that a
// missing or unreadable file is refused instead of failing every send.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

// fail ends the stream and turns err into the error Send returns: the
// cause of a cancellation instead of gRPC's "context canceled", a hint
// for authentication errors, ErrRejected for a batch refused as invalid.
func (s *grpcSink) fail(seq uint64, err error) error {
	cause := context.Cause(s.streamCtx)
	s.closeStream()
	if cause != nil && status.Code(err) == codes.Canceled {
		switch {
		case s.life.Err() != nil:
			err = errSinkClosed
		case errors.Is(cause, errAckTimeout):
			err = fmt.Errorf("no ack within %s: %w", s.timeout, err)
		default: // ctx ended
			err = fmt.Errorf("%w (%v)", cause, err)
		}
	}
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		err = fmt.Errorf("the receiver refused the agent's credentials; check the token (file) the agent is given: %w", err)
	case codes.InvalidArgument:
		// The batch will not be sent again: its number is used up, so
		// that a sequence number always names one batch.
		s.acked = seq
		err = fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return fmt.Errorf("gRPC sink %s: batch %d: %w", s.target, seq, err)
}

func (s *grpcSink) closeStream() {
	if s.streamCancel != nil {
		s.streamCancel(errStreamClosed)
	}
	s.stream, s.streamCtx, s.streamCancel = nil, nil, nil
}

// Close ends the stream and the connection. It may be called while a Send
// is blocked, which then returns an error.
func (s *grpcSink) Close() error {
	s.closeOnce.Do(func() {
		s.endLife()
		s.mu.Lock()
		s.closeStream()
		s.mu.Unlock()
		s.closeErr = s.conn.Close()
	})
	return s.closeErr
}
