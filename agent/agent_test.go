package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/connscope/connscope/agent/nflog"
	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/internal/clitest"
	"github.com/connscope/connscope/packet"
)

func TestQueueHoldsAtMostTheConfiguredCapacity(t *testing.T) {
	for _, capacity := range []int{MinQueueCapacity, 256, 1000, DefaultQueueCapacity, MaxQueueCapacity} {
		c := validConfig()
		c.QueueCapacity = capacity
		q := queueConfig(c)
		if err := q.Validate(); err != nil {
			t.Errorf("capacity %d: %v", capacity, err)
		}
		// The batch being sent is a part of the ring, and leaves at least
		// three quarters of it to the reader.
		if q.Capacity != capacity || q.BatchSize < 1 || q.BatchSize > capacity/4 {
			t.Errorf("capacity %d: ring %d, batch %d", capacity, q.Capacity, q.BatchSize)
		}
	}
}

func TestNewRefusesAnInvalidConfigAndTouchesNothing(t *testing.T) {
	c := validConfig()
	c.Probability = unsetProbability
	if _, err := New(c, Options{LookPath: func(name string) (string, error) {
		t.Errorf("New looked up %s", name)
		return "", io.EOF
	}}); err == nil || !strings.Contains(err.Error(), "--probability (probability): is required") {
		t.Fatalf("got %v", err)
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestReadinessFollowsRulesGroupAndSink(t *testing.T) {
	c := validConfig()
	c.SinkUnreadyAfter = Duration(time.Minute)
	a, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := a.Handler()
	if code, body := get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	code, body := get(t, h, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "the sampling rules are not installed") || !strings.Contains(body, "NFLOG group 5 is not bound") {
		t.Errorf("/readyz before start: %d %q", code, body)
	}
	a.rulesPresent.Store(true)
	a.nflogBound.Store(true)
	if code, body := get(t, h, "/readyz"); code != 200 {
		t.Errorf("/readyz when running: %d %q", code, body)
	}
	// A sink failing for less than SinkUnreadyAfter keeps the agent ready.
	a.sinkFailingSince.Store(time.Now().Add(-30 * time.Second).UnixNano())
	if code, _ := get(t, h, "/readyz"); code != 200 {
		t.Errorf("/readyz with the sink failing for 30s: %d", code)
	}
	a.sinkFailingSince.Store(time.Now().Add(-90 * time.Second).UnixNano())
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "the sink has been failing for 1m30s") {
		t.Errorf("/readyz with the sink failing for 90s: %d %q", code, body)
	}
	if _, body := get(t, h, "/metrics"); !strings.Contains(body, "\nconnscope_agent_ready 0\n") || !strings.Contains(body, "\nconnscope_agent_sink_failing 1\n") {
		t.Errorf("/metrics does not say not ready and failing:\n%s", body)
	}
}

// memSink keeps what it is sent.
type memSink struct{ got []packet.Record }

func (s *memSink) Send(_ context.Context, b []packet.Record) error {
	s.got = append(s.got, b...)
	return nil
}
func (s *memSink) Close() error { return nil }

func TestLoggedPacketsBecomeRecordsOrAreCounted(t *testing.T) {
	a, err := New(validConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	q := ship.NewQueue(sink, ship.QueueConfig{Capacity: 64, BatchSize: 16})
	a.queue.Store(q)

	rec := packet.Record{SrcPort: 40000, DstPort: 443, Flags: packet.SYN, Seq: 7, TTL: 64, Window: 1000, PayloadLen: 0}
	rec.SetSrc(mustAddr("192.0.2.1"))
	rec.SetDst(mustAddr("198.51.100.2"))
	good := capture.BuildPacket(&rec)
	a.handle(&nflog.Packet{Timestamp: 123, Payload: good})
	a.handle(&nflog.Packet{Timestamp: 124, Payload: good[:30]})                           // cut inside the TCP header
	a.handle(&nflog.Packet{Timestamp: 125, Payload: append([]byte{0x45}, good[1:20]...)}) // IPv4 header only
	udp := append([]byte(nil), good...)
	udp[9] = 17
	a.handle(&nflog.Packet{Timestamp: 126, Payload: udp})
	a.handle(&nflog.Packet{Timestamp: 127, Payload: []byte{0x75, 0, 0, 0}})
	if len(sink.got) != 0 || q.Stats().Offered != 0 {
		t.Fatal("a record reached the queue before its kernel batch was read")
	}
	a.offerStaged(q, nil)

	if got := [3]uint64{a.undecodable[decodeNotTCP].Load(), a.undecodable[decodeTruncated].Load(), a.undecodable[decodeMalformed].Load()}; got != [3]uint64{1, 2, 1} {
		t.Errorf("undecodable not_tcp, truncated, malformed = %v, want [1 2 1]", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := q.Run(ctx); err != nil { // ships what is queued, then returns
		t.Fatal(err)
	}
	rec.Timestamp = 123
	if len(sink.got) != 1 || sink.got[0] != rec {
		t.Fatalf("shipped %v, want the one record %v", sink.got, &rec)
	}
	if c := a.counters(); c.ReadErrors != 4 || c.DroppedQueueFull != 0 {
		t.Errorf("counters %+v", c)
	}
}

// waitUntil polls cond until it holds or timeout has passed; the caller
// checks the outcome. It waits for progress; it does not measure time.
func waitUntil(timeout time.Duration, cond func() bool) {
	for deadline := time.Now().Add(timeout); !cond() && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
}

// gateSink takes batches once open is closed, and keeps them.
type gateSink struct {
	open chan struct{}
	mu   sync.Mutex
	got  []packet.Record
}

func (s *gateSink) Send(ctx context.Context, b []packet.Record) error {
	select {
	case <-s.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, b...)
	return nil
}
func (s *gateSink) Close() error { return nil }

func (s *gateSink) records() []packet.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]packet.Record(nil), s.got...)
}

// stage decodes n logged SYNs, source ports 1000 on, as one kernel batch,
// and returns the records they make.
func stage(a *Agent, n int) []packet.Record {
	want := make([]packet.Record, n)
	for i := range want {
		r := &want[i]
		*r = packet.Record{Timestamp: int64(1000 + i), SrcPort: uint16(1000 + i), DstPort: 443, Flags: packet.SYN, Seq: 7, TTL: 64, Window: 1000}
		r.SetSrc(mustAddr("192.0.2.1"))
		r.SetDst(mustAddr("198.51.100.2"))
		a.handle(&nflog.Packet{Timestamp: r.Timestamp, Payload: capture.BuildPacket(r)})
	}
	return want
}

// gatedAgent returns an agent whose queue holds 64 records and ships them
// to a sink that takes nothing until its gate is opened (close(sink.open)).
// Nothing runs the queue: runQueue does.
func gatedAgent(t *testing.T) (*Agent, *ship.Queue, *gateSink) {
	t.Helper()
	a, err := New(validConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	sink := &gateSink{open: make(chan struct{})}
	q := ship.NewQueue(sink, ship.QueueConfig{Capacity: 64, BatchSize: 16, FlushInterval: time.Millisecond})
	a.queue.Store(q)
	return a, q, sink
}

// runQueue runs q's sender until the test ends.
func runQueue(t *testing.T, q *ship.Queue) {
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- q.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran })
}

func TestAFullQueueMakesTheReaderWaitInsteadOfDropping(t *testing.T) {
	a, q, sink := gatedAgent(t)
	runQueue(t, q)

	want := stage(a, 200) // a kernel batch larger than the whole queue
	offered := make(chan struct{})
	go func() { a.offerStaged(q, nil); close(offered) }()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-offered:
		t.Fatal("offerStaged returned with 200 records for a queue of 64 whose sink takes nothing")
	default:
	}
	close(sink.open)
	select {
	case <-offered:
	case <-time.After(30 * time.Second):
		t.Fatal("offerStaged still waiting 30 s after the sink opened")
	}
	waitUntil(30*time.Second, func() bool { return q.Stats().Shipped >= 200 })
	if s := q.Stats(); s.Shipped != 200 || s.DroppedQueueFull != 0 {
		t.Fatalf("queue stats %+v: want the 200 records shipped, none dropped", s)
	}
	if got := sink.records(); !slices.Equal(got, want) {
		t.Fatalf("shipped %d records, not the 200 staged in order", len(got))
	}
}

// The reader decodes a kernel batch straight into the queue's free cells
// (Queue.Reserve), skipping what it cannot decode without leaving a hole,
// and stages what does not fit; the records reach the sink whole and in
// order.
func TestTheReaderDecodesIntoTheQueueAndStagesWhatDoesNotFit(t *testing.T) {
	a, q, sink := gatedAgent(t)

	a.dst, a.nDst = q.Reserve(), 0
	if len(a.dst) != 64 {
		t.Fatalf("reserved %d cells of an empty queue of 64", len(a.dst))
	}
	want := stage(a, 40)
	a.handle(&nflog.Packet{Payload: []byte{0x45, 0, 0}}) // truncated: not a record, no hole
	want = append(want, stage(a, 60)...)
	if a.nDst != 64 || len(a.staged) != 36 {
		t.Fatalf("%d records in the queue's cells and %d staged, want 64 and 36", a.nDst, len(a.staged))
	}
	q.Commit(a.nDst)
	a.dst, a.nDst = nil, 0

	runQueue(t, q)
	close(sink.open)
	a.offerStaged(q, nil) // waits for the room the sender makes
	waitUntil(30*time.Second, func() bool { return q.Stats().Shipped >= 100 })
	if s := q.Stats(); s.Shipped != 100 || s.DroppedQueueFull != 0 {
		t.Fatalf("queue stats %+v: want the 100 records shipped, none dropped", s)
	}
	if got := sink.records(); !slices.Equal(got, want) {
		t.Fatalf("shipped %d records, not the 100 decoded, in order", len(got))
	}
	if n := a.undecodableTotal(); n != 1 {
		t.Fatalf("%d packets counted undecodable, want the 1 truncated", n)
	}
}

func TestAReaderToldToStopWhileTheQueueIsFullCountsWhatItDrops(t *testing.T) {
	a, q, _ := gatedAgent(t) // nothing runs the queue: it takes 64 records, then is full
	stage(a, 200)
	stop := make(chan struct{})
	close(stop)
	a.offerStaged(q, stop)
	if s := q.Stats(); s.Offered != 200 || s.Queued != 64 || s.DroppedQueueFull != 136 {
		t.Fatalf("queue stats %+v: want 200 offered, 64 queued, 136 dropped and counted", s)
	}
	if c := a.counters(); c.DroppedQueueFull != 136 {
		t.Fatalf("the agent's counters say %d dropped at the queue, want 136", c.DroppedQueueFull)
	}
	if len(a.staged) != 0 {
		t.Fatalf("%d records still staged", len(a.staged))
	}
}

func TestReaderWaitSecondsCountsTheCurrentWaitAndNeverDecreases(t *testing.T) {
	a, err := New(validConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-2 * time.Second).UnixNano()
	a.readerWaitingSince.Store(start) // a wait that began 2 s ago
	during := a.readerWaitSeconds()
	if during < 2 {
		t.Fatalf("%.3f s reported 2 s into a wait", during)
	}
	// The wait ends as offerStaged ends it: not waiting any more, then
	// added to the total. A scrape in between must not go back.
	a.readerWaitingSince.Store(0)
	if between := a.readerWaitSeconds(); between < during {
		t.Fatalf("%.3f s reported after %.3f s: the counter went back", between, during)
	}
	a.readerWaitNanos.Add(time.Now().UnixNano() - start)
	if after := a.readerWaitSeconds(); after < during || after > during+1 {
		t.Fatalf("%.3f s reported once the wait was added, after %.3f s during it", after, during)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestRunRefusesUnusableSinkFilesBeforeNetfilter: a gRPC sink's token
// file that is missing, unreadable or empty, and a grpcs:// sink's CA file
// that is missing or holds no PEM certificate, stop the start with a
// message naming the flag, the file key and the file, before any iptables
// program is looked up (nothing in netfilter is touched).
func TestRunRefusesUnusableSinkFilesBeforeNetfilter(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("MIIB...not a PEM block\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token := func(f string) func(*Config) {
		return func(c *Config) { c.Sink, c.SinkTokenFile = "grpc://127.0.0.1:1", f }
	}
	ca := func(f string) func(*Config) {
		return func(c *Config) { c.Sink, c.SinkCAFile = "grpcs://127.0.0.1:1", f }
	}
	for _, tc := range []struct {
		name, flag, file, want string
		set                    func(string) func(*Config)
	}{
		{"token missing", "--sink-token-file (sinkTokenFile) ", filepath.Join(dir, "missing"), "no such file or directory", token},
		{"token a directory", "--sink-token-file (sinkTokenFile) ", dir, "is a directory", token},
		{"token empty", "--sink-token-file (sinkTokenFile) ", empty, "is empty", token},
		{"CA missing", "--sink-ca-file (sinkCAFile) ", filepath.Join(dir, "missing.pem"), "no such file or directory", ca},
		{"CA not PEM", "--sink-ca-file (sinkCAFile) ", notPEM, "holds no PEM certificate", ca},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.set(tc.file)(&c)
			c.MetricsAddr = ""
			a, err := New(c, Options{LookPath: func(name string) (string, error) {
				t.Errorf("Run looked up %s before refusing the file", name)
				return "", io.EOF
			}})
			if err != nil {
				t.Fatal(err)
			}
			err = a.Run(context.Background())
			if err == nil {
				t.Fatal("Run started with an unusable file")
			}
			for _, want := range []string{tc.flag + tc.file, tc.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

// failingSink fails every Send with err.
type failingSink struct{ err error }

func (s failingSink) Send(context.Context, []packet.Record) error { return s.err }
func (s failingSink) Close() error                                { return nil }

// TestSinkFailingWarningSaysWhy: when the sink starts failing, the one
// warning says why (the sink's error), and retries do not repeat it.
func TestSinkFailingWarningSaysWhy(t *testing.T) {
	var logs clitest.Buffer
	a, err := New(validConfig(), Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	cause := errors.New("gRPC sink 127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused")
	q := ship.NewQueue(failingSink{cause}, ship.QueueConfig{Capacity: 64, BatchSize: 1, FlushInterval: time.Millisecond,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, DrainTimeout: time.Millisecond})
	var rec packet.Record
	q.Offer(&rec)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = q.Run(ctx) }()
	go func() { defer wg.Done(); a.watchSink(ctx, q) }()
	waitUntil(30*time.Second, func() bool { return strings.Contains(logs.String(), "the sink is failing") })
	time.Sleep(2 * sinkPoll) // more retries, more polls
	cancel()
	wg.Wait()
	out := logs.String()
	if n := strings.Count(out, "the sink is failing"); n != 1 {
		t.Fatalf("%d warnings that the sink is failing, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "connect: connection refused") {
		t.Errorf("the warning does not say why the sink fails:\n%s", out)
	}
	if q.Stats().SinkErrors < 2 {
		t.Errorf("only %d sink errors: the test did not retry", q.Stats().SinkErrors)
	}
}

// TestLossMetricsSayWhenTheyAreCounted: the HELP of the kernel loss
// counters tells an operator that sequence gaps are counted when the
// group's next packet arrives and ENOBUFS at once, as the README says.
func TestLossMetricsSayWhenTheyAreCounted(t *testing.T) {
	a, err := New(validConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, body := get(t, a.Handler(), "/metrics")
	for _, want := range []string{
		"# HELP connscope_agent_packets_lost_total Packets lost before reaching the sink: kernel_seq_gap (the kernel could not queue them on the socket, from NFLOG sequence gaps, counted when the group's next packet arrives)",
		"# HELP connscope_agent_nflog_enobufs_total Times the NFLOG socket reported that its receive buffer overflowed (ENOBUFS), counted at once;",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}

// rejectSink refuses every batch as invalid (ship.ErrRejected).
type rejectSink struct{}

func (rejectSink) Send(context.Context, []packet.Record) error {
	return fmt.Errorf("the classifier says: bad batch: %w", ship.ErrRejected)
}
func (rejectSink) Close() error { return nil }

// TestRejectedBatchesAreCountedAsLost: records of batches the sink refuses
// as invalid are not sent again, and /metrics counts them as lost
// (reason rejected), so that no logged packet goes uncounted.
func TestRejectedBatchesAreCountedAsLost(t *testing.T) {
	a, err := New(validConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	q := ship.NewQueue(rejectSink{}, ship.QueueConfig{Capacity: 64, BatchSize: 16, FlushInterval: time.Millisecond})
	a.queue.Store(q)
	runQueue(t, q)
	recs := make([]packet.Record, 10)
	if n := q.OfferBatch(recs); n != 10 {
		t.Fatalf("offered 10, queued %d", n)
	}
	const want = `connscope_agent_packets_lost_total{reason="rejected"} 10`
	var body string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, body = get(t, a.Handler(), "/metrics"); strings.Contains(body, want) {
			return
		}
	}
	t.Fatalf("/metrics lacks %q:\n%s", want, body)
}
