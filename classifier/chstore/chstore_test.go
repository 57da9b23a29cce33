package chstore_test

// These tests run against a real ClickHouse server that each test starts
// (internal/chtest: its own process on loopback, stopped by PID). They
// skip when clickhouse-server is not installed, and fail instead under
// CONNSCOPE_REQUIRE_CLICKHOUSE=1 (make test).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/api"
	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/classifier/chstore"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/offline"
	"github.com/connscope/connscope/classifier/store"
	"github.com/connscope/connscope/internal/chclient"
	"github.com/connscope/connscope/internal/chtest"
	"github.com/connscope/connscope/packet"
)

// The engine and window settings of the tests: windows short enough that
// the synthetic capture (about 135 s) spans several, so that many
// connections cross a window's end.
var (
	flowCfg = flow.Config{PacketCap: 10, IdleTimeout: 3 * time.Second, Linger: 20 * time.Second}
	window  = 30 * time.Second
	guard   = 10 * time.Second
)

var (
	capOnce sync.Once
	capPath string
	capErr  error
)

// synthetic returns a capture of 100,000 packets (about 14,000
// connections, 135 s) written by hack/bench/gencap: the benchmark's mix of
// normal connections, scanners, middlebox drops and injected resets.
func synthetic(t *testing.T) string {
	t.Helper()
	capOnce.Do(func() {
		dir, err := os.MkdirTemp("", "connscope-chstore-cap-")
		if err != nil {
			capErr = err
			return
		}
		capPath = filepath.Join(dir, "synthetic.pcap")
		cmd := exec.Command("go", "run", "./hack/bench/gencap", "-n", "100000", "-rate", "100", "-seed", "7", "-nano", "-o", capPath)
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			capErr = fmt.Errorf("gencap: %v: %s", err, out)
		}
	})
	if capErr != nil {
		t.Fatal(capErr)
	}
	return capPath
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	sharedOnce sync.Once
	sharedSrv  *chtest.Server
	sharedErr  error
	// sharedMissing: no server binary (a skip, unless required).
	sharedMissing bool
)

// shared returns the server the tests share (each uses a database of its
// own); TestServerDownThenUp starts its own, as it stops it.
func shared(t *testing.T) *chtest.Server {
	t.Helper()
	sharedOnce.Do(func() {
		bin, err := chtest.Binary()
		if err != nil {
			sharedErr, sharedMissing = err, true
			return
		}
		dir, err := os.MkdirTemp("", "connscope-chtest-")
		if err != nil {
			sharedErr = err
			return
		}
		sharedSrv, sharedErr = chtest.StartIn(dir, bin)
	})
	if sharedErr != nil {
		if sharedMissing && os.Getenv("CONNSCOPE_REQUIRE_CLICKHOUSE") != "1" {
			t.Skip(sharedErr)
		}
		t.Fatal(sharedErr)
	}
	return sharedSrv
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedSrv != nil {
		sharedSrv.Kill()
		os.RemoveAll(sharedSrv.Dir())
	}
	if capPath != "" {
		os.RemoveAll(filepath.Dir(capPath))
	}
	os.Exit(code)
}

// TestOpenOverHTTPS: the store creates its database and tables, and
// reads them back, over ClickHouse's HTTPS interface with the server's CA.
func TestOpenOverHTTPS(t *testing.T) {
	srv := chtest.Start(t)
	pem, err := os.ReadFile(srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	cfg, err := chclient.ParseURL(srv.TLSURL("overtls"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS, cfg.Timeout = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, time.Minute
	st, err := chstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open over HTTPS: %v", err)
	}
	defer st.Close()
	rows, err := st.Client().QueryTSV(context.Background(), "SELECT count() FROM system.tables WHERE database = 'overtls' AND name = 'packets'")
	if err != nil || len(rows) != 1 || rows[0][0] != "1" {
		t.Fatalf("the packets table over HTTPS: %v %v", rows, err)
	}
	// Without the CA the system's roots do not know the server's.
	cfg.TLS = nil
	if _, err := chstore.Open(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Open with the system's roots: %v, want a certificate error", err)
	}
}

func readRecords(t *testing.T, path string) []packet.Record {
	t.Helper()
	recs, err := capture.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return recs
}

// insert writes recs into the packets table as an agent would, in batches.
func insert(t *testing.T, c *chclient.Client, recs []packet.Record, agent uint64, node string) {
	t.Helper()
	const batch = 5000
	var buf []byte
	for i := 0; i < len(recs); i += batch {
		buf = buf[:0]
		for j := i; j < min(i+batch, len(recs)); j++ {
			row := chclient.Row{Rec: recs[j], Node: node, Policy: "web", Agent: agent, Batch: uint64(i / batch), Idx: uint32(j - i)}
			buf = chclient.AppendRow(buf, &row)
		}
		if err := c.Insert(context.Background(), "INSERT INTO packets ("+chclient.PacketColumns+") FORMAT RowBinary", buf); err != nil {
			t.Fatal(err)
		}
	}
}

// judgement is what a connection was judged.
type judgement struct {
	Stage, Tags, Signature, Excluded string
}

type connID struct {
	Client, Server         string
	ClientPort, ServerPort uint16
	First                  int64
}

// offlineResults runs the offline engine over the capture.
func offlineResults(t *testing.T, path string) map[connID]judgement {
	t.Helper()
	out := map[connID]judgement{}
	_, err := offline.Run([]string{path}, flowCfg, func(c *flow.Conn, r classify.Result) {
		id := connID{c.Client().String(), c.Server().String(), c.ClientPort, c.ServerPort, c.Summary.FirstSeen}
		if _, dup := out[id]; dup {
			t.Errorf("offline: connection %v twice", id)
		}
		out[id] = judgement{r.Stage.String(), strings.Join(r.Tags.Names(), ","), r.Signature.String(), r.Excluded.String()}
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// chResults reads the committed connections; it fails the test on a
// connection written twice.
func chResults(t *testing.T, c *chclient.Client) map[connID]judgement {
	t.Helper()
	body, err := c.Query(context.Background(), `SELECT client, server, client_port, server_port, first_seen, stage, tags, signature, excluded
		FROM connections WHERE (win, part, run) IN (SELECT win, part, argMin(run, committed_at) FROM commits GROUP BY win, part) FORMAT JSONEachRow`)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	out := map[connID]judgement{}
	for {
		var row struct {
			Client     string      `json:"client"`
			Server     string      `json:"server"`
			ClientPort uint16      `json:"client_port"`
			ServerPort uint16      `json:"server_port"`
			FirstSeen  json.Number `json:"first_seen"`
			Stage      string      `json:"stage"`
			Tags       []string    `json:"tags"`
			Signature  string      `json:"signature"`
			Excluded   string      `json:"excluded"`
		}
		err := dec.Decode(&row)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		first, _ := strconv.ParseInt(strings.Trim(row.FirstSeen.String(), `"`), 10, 64)
		id := connID{row.Client, row.Server, row.ClientPort, row.ServerPort, first}
		if _, dup := out[id]; dup {
			t.Errorf("ClickHouse: connection %v counted twice", id)
		}
		out[id] = judgement{row.Stage, strings.Join(row.Tags, ","), row.Signature, row.Excluded}
	}
	return out
}

// compare checks that ClickHouse judged every connection the offline
// engine judged, the same way, once; connections the offline engine
// leaves incomplete at the end of its input may be judged by ClickHouse
// (its windows go on) or still be carried.
func compare(t *testing.T, off, ch map[connID]judgement) {
	t.Helper()
	judged, bad := 0, 0
	for id, j := range off {
		got, ok := ch[id]
		if j.Excluded == "incomplete" {
			continue
		}
		judged++
		if !ok {
			if bad++; bad <= 10 {
				t.Errorf("connection %v judged %+v offline is missing in ClickHouse", id, j)
			}
			continue
		}
		if got != j {
			if bad++; bad <= 10 {
				t.Errorf("connection %v: ClickHouse %+v, offline %+v", id, got, j)
			}
		}
	}
	for id, j := range ch {
		if _, ok := off[id]; !ok {
			if bad++; bad <= 10 {
				t.Errorf("connection %v judged %+v in ClickHouse is unknown offline", id, j)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d differences between ClickHouse and the offline engine (%d connections judged offline)", bad, judged)
	}
	if judged < 10000 {
		t.Fatalf("only %d connections judged offline: the capture is not what the test expects", judged)
	}
	t.Logf("%d connections judged offline, %d in ClickHouse, all equal", judged, len(ch))
}

// countsOf sums what the connections say, to compare with the counts.
func countsOf(ch map[connID]judgement) aggregate.Counts {
	var c aggregate.Counts
	for _, j := range ch {
		var r classify.Result
		for _, e := range classify.Exclusions {
			if e.String() == j.Excluded {
				r.Excluded = e
			}
		}
		for _, st := range classify.Stages {
			if st.String() == j.Stage {
				r.Stage = st
			}
		}
		if j.Tags != "" {
			for _, n := range strings.Split(j.Tags, ",") {
				tg, _ := classify.TagByName(n)
				r.Tags |= 1 << tg
			}
		}
		r.Signature, _ = classify.SignatureByName(j.Signature)
		c.Add(r)
	}
	return c
}

func totals(t *testing.T, s *chstore.Store) aggregate.Counts {
	t.Helper()
	bs, err := s.Buckets(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var c aggregate.Counts
	for _, b := range bs {
		c.Merge(&b.Counts)
	}
	return c
}

func openStore(t *testing.T, srv *chtest.Server, db string) *chstore.Store {
	t.Helper()
	s, err := chstore.Open(context.Background(), chclient.Config{Addr: srv.Addr(), Database: db, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// clockAt returns a clock fixed at ns.
func clockAt(ns *int64) func() time.Time { return func() time.Time { return time.Unix(0, *ns) } }

func newClassifier(t *testing.T, s *chstore.Store, replica string, parts int, now *int64) *chstore.Classifier {
	t.Helper()
	k, err := chstore.NewClassifier(s, chstore.ClassifierConfig{
		Window: window, Guard: guard, Delay: time.Second, Parts: parts, Replica: replica,
		Flow: flowCfg, Now: clockAt(now), Poll: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// runAll runs the replicas until every window closed at now is committed.
func runAll(t *testing.T, ks ...*chstore.Classifier) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(ks))
	for i, k := range ks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A replica returns when the next window's remaining parts
			// are claimed by another; call it until nothing is left.
			for ctx.Err() == nil {
				n, err := k.RunOnce(ctx)
				if err != nil {
					errs[i] = err
					return
				}
				if n == 0 {
					idle, err := pending(ctx, k)
					if err != nil {
						errs[i] = err
						return
					}
					if !idle {
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// pending reports whether a closed window is still being classified by
// another replica.
func pending(ctx context.Context, k *chstore.Classifier) (bool, error) {
	return k.Pending(ctx)
}

func endOf(recs []packet.Record) int64 { return recs[len(recs)-1].Timestamp }

// loaded opens database db on the shared server with the synthetic
// capture inserted by agent 1 of node-a, and returns it with the
// capture's path, its records, and a clock three windows past its end
// (every window closed).
func loaded(t *testing.T, db string) (s *chstore.Store, path string, recs []packet.Record, now int64) {
	t.Helper()
	path = synthetic(t)
	recs = readRecords(t, path)
	s = openStore(t, shared(t), db)
	insert(t, s.Client(), recs, 1, "node-a")
	return s, path, recs, endOf(recs) + int64(3*window)
}

// TestWindowsEqualOffline: packets inserted, windows classified by one
// replica in 4 parts; every connection is judged as the offline engine
// judges the same capture, exactly once, also those that cross a window's
// end (carried), and the aggregates sum the connections.
func TestWindowsEqualOffline(t *testing.T) {
	s, path, _, now := loaded(t, "eq")

	k := newClassifier(t, s, "r0", 4, &now)
	runAll(t, k)

	off := offlineResults(t, path)
	ch := chResults(t, s.Client())
	compare(t, off, ch)
	if got, want := totals(t, s), countsOf(ch); got != want {
		t.Errorf("counts differ from the connections:\n got  %+v\n want %+v", got, want)
	}
	rows, err := s.Client().QueryTSV(context.Background(), "SELECT sum(carried_connections), sum(carried_rows), uniqExact(win) FROM commits")
	if err != nil {
		t.Fatal(err)
	}
	carried, _ := strconv.Atoi(rows[0][0])
	windows, _ := strconv.Atoi(rows[0][2])
	if carried == 0 || windows < 4 {
		t.Fatalf("%d connections carried over %d windows: the test does not cross window ends", carried, windows)
	}
	t.Logf("%d windows, %d connections carried across a window's end, %s carried packet rows", windows, carried, rows[0][1])
}

// TestDuplicateBatchReadOnce: a batch inserted twice (an agent's retry
// after a lost answer) is counted once.
func TestDuplicateBatchReadOnce(t *testing.T) {
	srv := shared(t)
	path := synthetic(t)
	recs := readRecords(t, path)
	s := openStore(t, srv, "dup")
	insert(t, s.Client(), recs, 9, "node-a")
	insert(t, s.Client(), recs[:20000], 9, "node-a") // the same batches again
	now := endOf(recs) + int64(3*window)
	runAll(t, newClassifier(t, s, "r0", 2, &now))
	compare(t, offlineResults(t, path), chResults(t, s.Client()))
	rows, err := s.Client().QueryTSV(context.Background(), "SELECT sum(duplicates) FROM commits")
	if err != nil {
		t.Fatal(err)
	}
	if rows[0][0] != "20000" {
		t.Fatalf("duplicates read: %s, want 20000", rows[0][0])
	}
}

// TestReplicasIdenticalTotals: one replica, and two replicas of which the
// second joins halfway, give the same connections and counts, nothing
// twice.
func TestReplicasIdenticalTotals(t *testing.T) {
	srv := shared(t)
	path := synthetic(t)
	recs := readRecords(t, path)

	one := openStore(t, srv, "one")
	insert(t, one.Client(), recs, 1, "node-a")
	now := endOf(recs) + int64(3*window)
	runAll(t, newClassifier(t, one, "solo", 8, &now))

	two := openStore(t, srv, "two")
	insert(t, two.Client(), recs, 1, "node-a")
	half := recs[0].Timestamp + (endOf(recs)-recs[0].Timestamp)/2
	a := newClassifier(t, two, "a", 8, &half)
	runAll(t, a) // a alone for the first half
	b := newClassifier(t, two, "b", 8, &now)
	a = newClassifier(t, two, "a", 8, &now)
	runAll(t, a, b)

	chOne, chTwo := chResults(t, one.Client()), chResults(t, two.Client())
	if len(chOne) != len(chTwo) {
		t.Errorf("1 replica: %d connections, 2 replicas: %d", len(chOne), len(chTwo))
	}
	for id, j := range chOne {
		if chTwo[id] != j {
			t.Errorf("connection %v: 1 replica %+v, 2 replicas %+v", id, j, chTwo[id])
			break
		}
	}
	if t1, t2 := totals(t, one), totals(t, two); t1 != t2 {
		t.Errorf("totals differ:\n 1 replica  %+v\n 2 replicas %+v", t1, t2)
	}
	compare(t, offlineResults(t, path), chTwo)
	sa, sb := a.Stats(), b.Stats()
	if sa.Parts == 0 || sb.Parts == 0 {
		t.Fatalf("parts classified after b joined: a %d, b %d: the work was not shared", sa.Parts, sb.Parts)
	}
	t.Logf("after b joined: a classified %d parts, b %d", sa.Parts, sb.Parts)
}

// TestResumeAfterCrash: a replica that dies after writing a part's rows
// but before committing it is restarted; it resumes at that part, and the
// rows of the dead run are never counted.
func TestResumeAfterCrash(t *testing.T) {
	s, path, _, now := loaded(t, "resume")

	k := newClassifier(t, s, "r0", 4, &now)
	n := 0
	crash := errors.New("crash before commit")
	chstore.SetBeforeCommit(k, func() error {
		if n++; n == 7 { // the 3rd part of the 2nd window
			return crash
		}
		return nil
	})
	if _, err := k.RunOnce(context.Background()); !errors.Is(err, crash) {
		t.Fatalf("first run: %v, want the crash", err)
	}
	rows, err := s.Client().QueryTSV(context.Background(), "SELECT count() FROM commits")
	if err != nil {
		t.Fatal(err)
	}
	if rows[0][0] != "6" {
		t.Fatalf("%s parts committed before the crash, want 6", rows[0][0])
	}
	// The restarted replica (same name, a new process).
	runAll(t, newClassifier(t, s, "r0", 4, &now))
	ch := chResults(t, s.Client())
	compare(t, offlineResults(t, path), ch)
	if got, want := totals(t, s), countsOf(ch); got != want {
		t.Errorf("counts differ from the connections after the restart:\n got  %+v\n want %+v", got, want)
	}
	rows, err = s.Client().QueryTSV(context.Background(), "SELECT count() FROM connections WHERE (win, part, run) NOT IN (SELECT win, part, argMin(run, committed_at) FROM commits GROUP BY win, part)")
	if err != nil {
		t.Fatal(err)
	}
	if rows[0][0] == "0" {
		t.Fatal("the crashed run wrote no rows: the test does not test what it says")
	}
}

// TestServerDownThenUp: with ClickHouse down the replica fails and writes
// nothing; once it is back it resumes and the result is complete.
func TestServerDownThenUp(t *testing.T) {
	srv := chtest.Start(t)
	path := synthetic(t)
	recs := readRecords(t, path)
	s := openStore(t, srv, "down")
	insert(t, s.Client(), recs, 1, "node-a")
	now := endOf(recs) + int64(3*window)
	k := newClassifier(t, s, "r0", 4, &now)

	// Classify the first half, then stop the server.
	half := recs[0].Timestamp + (endOf(recs)-recs[0].Timestamp)/2
	runAll(t, newClassifier(t, s, "r0", 4, &half))
	srv.Stop()
	if _, err := k.RunOnce(context.Background()); err == nil {
		t.Fatal("RunOnce with ClickHouse down: no error")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	runAll(t, k)
	compare(t, offlineResults(t, path), chResults(t, s.Client()))
}

// TestAPIReadsClickHouse: the Radar API served from the ClickHouse store
// answers what the counts hold.
func TestAPIReadsClickHouse(t *testing.T) {
	s, _, recs, now := loaded(t, "api")
	runAll(t, newClassifier(t, s, "r0", 2, &now))
	want := totals(t, s)

	h := api.New(api.Config{Store: s, Now: func() time.Time { return time.Unix(0, now) }})
	ts := httptest.NewServer(h)
	defer ts.Close()
	start := time.Unix(0, recs[0].Timestamp).UTC().Add(-time.Hour).Format(time.RFC3339)
	end := time.Unix(0, now).UTC().Add(time.Hour).Format(time.RFC3339)
	resp, err := http.Get(ts.URL + "/api/v1/signatures/summary?dateStart=" + start + "&dateEnd=" + end)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("signatures summary: %d %s", resp.StatusCode, b)
	}
	for sig := classify.Signature(1); sig < classify.NumSignatures; sig++ {
		if want.Sigs[sig] == 0 {
			continue
		}
		if !strings.Contains(string(b), fmt.Sprintf("%q:%d", sig.String(), want.Sigs[sig])) {
			t.Errorf("signatures summary lacks %q:%d: %s", sig.String(), want.Sigs[sig], b)
		}
	}
	resp, err = http.Get(ts.URL + "/api/v1/anomalies?limit=5&dateStart=" + start + "&dateEnd=" + end)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "post_") {
		t.Fatalf("anomalies: %d %s", resp.StatusCode, b)
	}
	resp, err = http.Get(ts.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("readyz: %d", resp.StatusCode)
	}
}

// TestRetentionDropsDays: Retain drops whole day partitions older than
// the cutoff and keeps the others.
func TestRetentionDropsDays(t *testing.T) {
	srv := shared(t)
	s := openStore(t, srv, "ret")
	day := int64(24 * time.Hour)
	base := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC).UnixNano()
	var recs []packet.Record
	for d := range 5 {
		r := packet.Record{Timestamp: base + int64(d)*day, IPVersion: 4, SrcPort: 1000, DstPort: 80, Flags: packet.SYN}
		recs = append(recs, r)
	}
	insert(t, s.Client(), recs, 1, "n")
	n, err := s.Retain(context.Background(), time.Unix(0, base+2*day))
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("dropped %d partitions, want 2 (Nov 1 and 2)", n)
	}
	rows, err := s.Client().QueryTSV(context.Background(), "SELECT toString(day) FROM packets ORDER BY day")
	if err != nil {
		t.Fatal(err)
	}
	var days []string
	for _, r := range rows {
		days = append(days, r[0])
	}
	if got := strings.Join(days, " "); got != "2026-11-03 2026-11-04 2026-11-05" {
		t.Errorf("days left: %s", got)
	}
}

// TestMigrationsIdempotent: opening a database again (another replica, a
// restart) applies nothing twice and keeps the data.
func TestMigrationsIdempotent(t *testing.T) {
	srv := shared(t)
	s := openStore(t, srv, "mig")
	insert(t, s.Client(), []packet.Record{{Timestamp: 1e18, IPVersion: 4, Flags: packet.SYN}}, 1, "n")
	s2 := openStore(t, srv, "mig")
	v, err := s2.SchemaVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := chstore.Migrations()
	if v != ms[len(ms)-1].Version {
		t.Errorf("schema version %d, want %d", v, ms[len(ms)-1].Version)
	}
	rows, err := s2.Client().QueryTSV(context.Background(), "SELECT count() FROM schema_migrations")
	if err != nil {
		t.Fatal(err)
	}
	if rows[0][0] != strconv.Itoa(len(ms)) {
		t.Errorf("schema_migrations holds %s rows, want %d", rows[0][0], len(ms))
	}
	rows, err = s2.Client().QueryTSV(context.Background(), "SELECT count() FROM packets")
	if err != nil {
		t.Fatal(err)
	}
	if rows[0][0] != "1" {
		t.Errorf("packets after reopening: %s, want 1", rows[0][0])
	}
}
