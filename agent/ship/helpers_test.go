package ship

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/connscope/connscope/packet"
)

// optionSets are TCP option kinds as real stacks send them, padded to 4
// bytes, so that records survive capture.AppendPacket and packet.Decode.
var optionSets = [][]uint8{
	{},
	{1, 1, 8},          // NOP NOP timestamps (Linux data and ACK segments)
	{2, 4, 8, 1, 3},    // MSS SACK-permitted timestamps NOP window-scale (Linux SYN)
	{2, 1, 3, 1, 1, 4}, // MSS NOP WS NOP NOP SACK-permitted (Windows SYN)
	{2},                // MSS only (zmap, masscan)
}

// records makes n records of a plausible mix (IPv4 and IPv6, flags,
// options), with increasing timestamps and rec.Seq = first+i, so a test
// can tell them apart and check their order.
func records(n int, first uint32, seed uint64) []packet.Record {
	rng := rand.New(rand.NewPCG(seed, 2))
	recs := make([]packet.Record, n)
	ts := int64(1_700_000_000_000_000_000) + int64(seed)*1e9
	for i := range recs {
		r := &recs[i]
		ts += int64(rng.IntN(1e6))
		r.Timestamp = ts
		if rng.IntN(4) > 0 {
			r.SetSrc(netip.AddrFrom4([4]byte{198, 51, byte(rng.IntN(256)), byte(rng.IntN(256))}))
			r.SetDst(netip.AddrFrom4([4]byte{192, 0, 2, 10}))
			r.IPID = uint16(rng.Uint32())
			r.DF = rng.IntN(2) == 0
		} else {
			r.SetSrc(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(256))}))
			r.SetDst(netip.MustParseAddr("2001:db8::10"))
		}
		r.SrcPort = uint16(1024 + rng.IntN(60000))
		r.DstPort = 443
		r.Flags = []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK, packet.RST, packet.RST | packet.ACK, packet.FIN | packet.ACK}[rng.IntN(6)]
		r.Seq = first + uint32(i)
		r.Ack = rng.Uint32()
		r.Window = uint16(rng.Uint32())
		r.TTL = uint8(32 + rng.IntN(200))
		if r.Flags.Has(packet.PSH) {
			r.PayloadLen = uint16(1 + rng.IntN(1400))
		}
		opts := optionSets[rng.IntN(len(optionSets))]
		r.NumOptions = uint8(len(opts))
		copy(r.Options[:], opts)
	}
	return recs
}

// memSink is a Sink that keeps batches in memory, for tests of the Queue
// alone. fail, when set, decides the outcome of each call (0-based); a
// call that fails stores nothing.
type memSink struct {
	mu      sync.Mutex
	calls   int
	sent    [][]packet.Record // every batch passed to Send, failed or not
	batches [][]packet.Record // batches delivered
	fail    func(call int) error
	closed  bool
}

func (s *memSink) Send(_ context.Context, batch []packet.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := append([]packet.Record(nil), batch...)
	s.sent = append(s.sent, b)
	call := s.calls
	s.calls++
	if s.fail != nil {
		if err := s.fail(call); err != nil {
			return err
		}
	}
	s.batches = append(s.batches, b)
	return nil
}

func (s *memSink) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

func (s *memSink) delivered() []packet.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var recs []packet.Record
	for _, b := range s.batches {
		recs = append(recs, b...)
	}
	return recs
}

// discardSink delivers every batch nowhere.
type discardSink struct{}

func (discardSink) Send(context.Context, []packet.Record) error { return nil }
func (discardSink) Close() error                                { return nil }

// waitFor polls cond until it holds, and fails the test after timeout.
// It waits for progress; it does not measure time.
func waitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("still waiting after %s for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// runQueue runs q.Run in a goroutine and returns a function that cancels
// it and returns its error.
func runQueue(tb testing.TB, q *Queue) (stop func() error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				tb.Fatal("Run did not return 30 s after its context ended")
			}
		})
		return err
	}
	tb.Cleanup(func() { stop() })
	return stop
}

// checkInvariant asserts that every offered record is accounted for.
func checkInvariant(tb testing.TB, s Stats) {
	tb.Helper()
	if s.Offered != s.Shipped+s.Queued+s.DroppedQueueFull+s.DroppedRejected {
		tb.Fatalf("offered %d != shipped %d + queued %d + dropped (full) %d + dropped (rejected) %d",
			s.Offered, s.Shipped, s.Queued, s.DroppedQueueFull, s.DroppedRejected)
	}
}

// goroutineBaseline returns a check that the number of goroutines came
// back to what it is now, and prints them all when it did not.
func goroutineBaseline(tb testing.TB) func() {
	tb.Helper()
	base := runtime.NumGoroutine()
	return func() {
		tb.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				tb.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// sameRecords fails the test at the first difference.
func sameRecords(tb testing.TB, got, want []packet.Record) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			tb.Fatalf("record %d:\n got %v\nwant %v", i, &got[i], &want[i])
		}
	}
}

func contains(err error, parts ...string) string {
	if err == nil {
		return "no error"
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			return fmt.Sprintf("error %q does not contain %q", err, p)
		}
	}
	return ""
}
