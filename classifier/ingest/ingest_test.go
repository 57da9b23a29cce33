package ingest_test

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/geo"
	"github.com/connscope/connscope/classifier/geo/geotest"
	"github.com/connscope/connscope/classifier/ingest"
	"github.com/connscope/connscope/classifier/store"
	"github.com/connscope/connscope/packet"
	"github.com/connscope/connscope/packet/ingestpb"
)

const idle = 100 * time.Millisecond

var base = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

// clock is the servers' Now: the test moves it with the traffic.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// traffic returns n connections' packets in time order, five kinds in
// turn: SYN→RST (post_syn), SYN ACK then silence (post_ack), SYN ACK
// PSH→RST (post_psh), a FIN close (no_match), two data packets then
// RST+ACK (later_in_flow). Packets of a connection are 5 ms apart,
// connections start 10 ms apart, so they interleave.
func traffic(n int) []packet.Record {
	var recs []packet.Record
	server := netip.MustParseAddr("192.0.2.1")
	for i := range n {
		start := base.Add(time.Duration(i) * 10 * time.Millisecond)
		client := netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 200)})
		if i%7 == 0 {
			client = netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 200)})
		}
		var flags []packet.Flags
		switch i % 5 {
		case 0:
			flags = []packet.Flags{packet.SYN, packet.RST}
		case 1:
			flags = []packet.Flags{packet.SYN, packet.ACK}
		case 2:
			flags = []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK, packet.RST}
		case 3:
			flags = []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK, packet.FIN | packet.ACK}
		case 4:
			flags = []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK, packet.PSH | packet.ACK, packet.RST | packet.ACK}
		}
		seq := uint32(1000 * (i + 1))
		for j, f := range flags {
			r := packet.Record{Timestamp: start.Add(time.Duration(j) * 5 * time.Millisecond).UnixNano(),
				SrcPort: uint16(20000 + i), DstPort: 443, Flags: f, Seq: seq, Ack: 77, Window: 64240, TTL: 60, IPID: uint16(i + j)}
			r.SetSrc(client)
			r.SetDst(server)
			if f.Has(packet.PSH) {
				r.PayloadLen = 100
			}
			if j > 0 {
				r.Seq = seq + 1
			}
			recs = append(recs, r)
		}
	}
	slices.SortStableFunc(recs, func(a, b packet.Record) int { return int(a.Timestamp - b.Timestamp) })
	return recs
}

func batches(recs []packet.Record, size int) [][]packet.Record {
	var out [][]packet.Record
	for len(recs) > 0 {
		n := min(size, len(recs))
		out = append(out, recs[:n])
		recs = recs[n:]
	}
	return out
}

type server struct {
	t     *testing.T
	st    *store.Store
	ing   *ingest.Server
	grpc  *grpc.Server
	addr  string
	clock *clock
	done  chan struct{}
}

// start runs a classifier's ingest on addr ("" for a free port) over the
// database at path.
func start(t *testing.T, path, addr, token string, c *clock, db *geo.DB) *server {
	t.Helper()
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ing, err := ingest.New(context.Background(), ingest.Config{
		Store: st, Geo: db, Flow: flow.Config{IdleTimeout: idle, Hold: idle, Linger: 10 * idle},
		Policy: "default", Token: token, Grace: time.Nanosecond, Tick: time.Hour, Now: c.Now,
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(ingest.ServerOptions()...)
	ing.Register(g)
	s := &server{t: t, st: st, ing: ing, grpc: g, addr: lis.Addr().String(), clock: c, done: make(chan struct{})}
	go func() { defer close(s.done); g.Serve(lis) }()
	t.Cleanup(s.crash)
	return s
}

// crash stops serving without committing anything more, like a killed
// process (what was committed stays).
func (s *server) crash() {
	if s.grpc == nil {
		return
	}
	s.grpc.Stop()
	<-s.done
	s.grpc = nil
	s.st.Close()
}

func sink(t *testing.T, addr, token string, o ship.Options) ship.Sink {
	t.Helper()
	o.Node, o.Policy, o.Token = "node-a", "default", token
	if o.AckTimeout == 0 {
		o.AckTimeout = 5 * time.Second
	}
	sk, err := ship.Open("grpc://"+addr, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sk.Close() })
	return sk
}

// send delivers b as an agent's Queue would: the same batch again until
// it is acknowledged.
func send(t *testing.T, sk ship.Sink, b []packet.Record) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := sk.Send(context.Background(), b)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch not acknowledged: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// drive sends the batches in order, committing after each as the ticker
// would, with the clock at the batch's latest packet.
func drive(t *testing.T, s *server, sk ship.Sink, bs [][]packet.Record, commitLast bool) {
	t.Helper()
	for i, b := range bs {
		s.clock.Set(time.Unix(0, b[len(b)-1].Timestamp))
		send(t, sk, b)
		if i < len(bs)-1 || commitLast {
			if err := s.ing.Commit(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// finish lets every connection go silent and commits.
func finish(t *testing.T, s *server, last time.Time) {
	t.Helper()
	s.clock.Set(last.Add(20 * idle))
	if err := s.ing.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func totals(t *testing.T, st *store.Store) (stages [6]int64, tags map[string]int64, excluded int64) {
	t.Helper()
	bs, err := st.Buckets(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	tags = map[string]int64{}
	for _, b := range bs {
		for i, n := range b.Stages {
			stages[i] += n
		}
		for tg, n := range b.Tags {
			if n > 0 {
				tags[classify.Tag(tg).String()] += n
			}
		}
		for _, n := range b.Excluded {
			excluded += n
		}
	}
	return stages, tags, excluded
}

func geoDB(t *testing.T) *geo.DB {
	db, err := geo.Open(geotest.Dir(t, geotest.Network{CIDR: "198.51.100.0/24", Country: "DE", ASN: 64500}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestAgentSinkToAggregates(t *testing.T) {
	c := &clock{}
	s := start(t, filepath.Join(t.TempDir(), "c.db"), "", "s3cret", c, geoDB(t))
	sk := sink(t, s.addr, "s3cret", ship.Options{})
	recs := traffic(100)
	drive(t, s, sk, batches(recs, 37), true)
	finish(t, s, time.Unix(0, recs[len(recs)-1].Timestamp))

	stages, tags, excluded := totals(t, s.st)
	want := [6]int64{0, 20, 20, 20, 20, 20}
	if stages != want || excluded != 0 {
		t.Errorf("stages %v excluded %d, want %v and 0", stages, excluded, want)
	}
	if tags["timeout"] != 20 || tags["reset"] != 60 {
		t.Errorf("tags %v", tags)
	}
	st := s.ing.Stats()
	if st.Batches != uint64(len(batches(recs, 37))) || st.Records != uint64(len(recs)) || st.Connections != 100 || st.AuthFailures != 0 {
		t.Errorf("stats %+v", st)
	}
	// Everything counted: the journal empties once the cutoff passes.
	if n, _ := s.st.JournalLen(context.Background()); n != 0 {
		finish(t, s, time.Unix(0, recs[len(recs)-1].Timestamp).Add(time.Minute))
		if n, _ := s.st.JournalLen(context.Background()); n != 0 {
			t.Errorf("journal still holds %d batches", n)
		}
	}
	// Geo dimensions were applied.
	de, err := s.st.Buckets(context.Background(), store.Filter{Countries: []string{"DE"}, ASNs: []uint32{64500}})
	if err != nil || len(de) == 0 {
		t.Fatal(err, de)
	}
	var n int64
	for _, b := range de {
		n += b.Classified()
	}
	if n != 100-15 { // clients 203.0.113.x (every 7th) are unknown
		t.Errorf("%d connections from DE/64500, want 85", n)
	}
	as, _ := s.st.Anomalies(context.Background(), store.Filter{}, 1000)
	if len(as) != 80 {
		t.Errorf("%d anomalies, want 80", len(as))
	}
}

func TestWrongOrMissingTokenIsRefused(t *testing.T) {
	c := &clock{}
	c.Set(base)
	s := start(t, filepath.Join(t.TempDir(), "c.db"), "", "s3cret", c, nil)
	for _, tok := range []string{"wrong", ""} {
		sk := sink(t, s.addr, tok, ship.Options{AckTimeout: 2 * time.Second})
		if err := sk.Send(context.Background(), traffic(1)); err == nil {
			t.Errorf("token %q: batch accepted", tok)
		}
	}
	// The status is UNAUTHENTICATED, also for a malformed header.
	conn, err := grpc.NewClient("passthrough:///"+s.addr, grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic s3cret")
	stream, err := ingestpb.NewIngestClient(conn).Push(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); statusCode(err) != "Unauthenticated" {
		t.Errorf("malformed authorization: %v, want Unauthenticated", err)
	}
	st := s.ing.Stats()
	if st.AuthFailures != 3 || st.Batches != 0 {
		t.Errorf("stats %+v, want 3 auth failures and no batch", st)
	}
	if n, _ := s.st.JournalLen(context.Background()); n != 0 {
		t.Errorf("journal holds %d batches after refused streams", n)
	}
}

func TestDuplicateBatchIsAckedNotCounted(t *testing.T) {
	c := &clock{}
	s := start(t, filepath.Join(t.TempDir(), "c.db"), "", "", c, nil)
	var once sync.Once
	// The first ack comes too late: the sink gives up and sends the batch
	// again with the same sequence number on a new stream.
	s.ing.SetAfterAccept(func(*ingestpb.Frame) { once.Do(func() { time.Sleep(600 * time.Millisecond) }) })
	sk := sink(t, s.addr, "", ship.Options{AckTimeout: 200 * time.Millisecond})
	recs := traffic(10)
	c.Set(time.Unix(0, recs[len(recs)-1].Timestamp))
	send(t, sk, recs)
	finish(t, s, time.Unix(0, recs[len(recs)-1].Timestamp))
	st := s.ing.Stats()
	if st.Duplicates < 1 || st.Batches != 1 || st.Connections != 10 {
		t.Errorf("stats %+v: want a duplicate, 1 batch, 10 connections", st)
	}
	stages, _, _ := totals(t, s.st)
	if want := [6]int64{0, 2, 2, 2, 2, 2}; stages != want {
		t.Errorf("stages %v, want %v", stages, want)
	}
}

func TestRestartLosesNothingAcknowledged(t *testing.T) {
	recs := traffic(400)
	bs := batches(recs, 53)
	last := time.Unix(0, recs[len(recs)-1].Timestamp)

	// One uninterrupted run.
	c := &clock{}
	ref := start(t, filepath.Join(t.TempDir(), "ref.db"), "", "", c, nil)
	drive(t, ref, sink(t, ref.addr, "", ship.Options{}), bs, true)
	finish(t, ref, last)
	wantStages, wantTags, wantExcl := totals(t, ref.st)
	if wantStages != [6]int64{0, 80, 80, 80, 80, 80} || wantExcl != 0 {
		t.Fatalf("reference run: stages %v, excluded %d", wantStages, wantExcl)
	}

	// Crash twice: once right after a batch was acknowledged and before
	// the tick committed what it finished, once after a commit; open
	// connections span the crashes.
	path := filepath.Join(t.TempDir(), "c.db")
	c2 := &clock{}
	s := start(t, path, "", "", c2, nil)
	sk := sink(t, s.addr, "", ship.Options{AckTimeout: time.Second})
	k1, k2 := len(bs)/3, 2*len(bs)/3
	drive(t, s, sk, bs[:k1], false)
	if n, _ := s.st.JournalLen(context.Background()); n == 0 {
		t.Fatal("nothing journaled before the crash")
	}
	if open := s.ing.Stats().OpenConnections; open == 0 {
		t.Fatal("no connection open at the crash: the test does not test")
	}
	s.crash()
	s = start(t, path, s.addr, "", c2, nil)
	if st := s.ing.Stats(); st.Replayed == 0 {
		t.Errorf("replay counted nothing: %+v", st)
	}
	drive(t, s, sk, bs[k1:k2], true)
	s.crash()
	s = start(t, path, s.addr, "", c2, nil)
	drive(t, s, sk, bs[k2:], true)
	finish(t, s, last)

	stages, tags, excl := totals(t, s.st)
	if stages != wantStages || excl != wantExcl {
		t.Errorf("after restarts: stages %v excluded %d, want %v and %d", stages, excl, wantStages, wantExcl)
	}
	for k, v := range wantTags {
		if tags[k] != v {
			t.Errorf("tag %s: %d, want %d", k, tags[k], v)
		}
	}
	if len(tags) != len(wantTags) {
		t.Errorf("tags %v, want %v", tags, wantTags)
	}
}

func TestBadBatchIsRejected(t *testing.T) {
	c := &clock{}
	s := start(t, filepath.Join(t.TempDir(), "c.db"), "", "", c, nil)
	conn, err := grpc.NewClient("passthrough:///"+s.addr, grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, b := range []*ingestpb.PacketBatch{
		{Node: "n", Policy: "p", Sequence: 1},
		{Node: "n", Policy: "p", AgentInstance: "x"},
		{Node: "n", Policy: "default", AgentInstance: "x", Sequence: 1, Packets: []*ingestpb.Packet{{SrcIp: []byte{1, 2, 3}, DstIp: []byte{1, 2, 3, 4}}}},
		{Node: "n", Policy: "other", AgentInstance: "x", Sequence: 1},
	} {
		stream, err := ingestpb.NewIngestClient(conn).Push(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(b); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); statusCode(err) != "InvalidArgument" {
			t.Errorf("batch %+v: %v, want InvalidArgument", b, err)
		}
	}
	if st := s.ing.Stats(); st.Rejected != 4 || st.Batches != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestConcurrentAgentsAreAllCounted(t *testing.T) {
	c := &clock{}
	s := start(t, filepath.Join(t.TempDir(), "c.db"), "", "", c, nil)
	recs := traffic(200)
	last := time.Unix(0, recs[len(recs)-1].Timestamp)
	c.Set(last)
	var wg sync.WaitGroup
	for _, node := range []string{"a", "b", "c", "d"} {
		sk, err := ship.Open("grpc://"+s.addr, ship.Options{Node: node, Policy: "default", AckTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer sk.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, b := range batches(recs, 10) {
				if err := sk.Send(context.Background(), b); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	finish(t, s, last)
	st := s.ing.Stats()
	n := uint64(len(batches(recs, 10)))
	if st.Batches != 4*n || st.Connections != 800 || st.Engines != 4 {
		t.Errorf("stats %+v, want %d batches, 800 connections, 4 engines", st, 4*n)
	}
	t.Logf("%d batches in %d transactions", st.Batches, st.Groups)
	stages, _, _ := totals(t, s.st)
	if want := [6]int64{0, 160, 160, 160, 160, 160}; stages != want {
		t.Errorf("stages %v, want %v", stages, want)
	}
}
