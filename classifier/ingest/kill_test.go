package ingest_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/ingest"
	"github.com/connscope/connscope/classifier/store"
)

// childEnv, set to a database path, makes the test binary a classifier's
// ingest serving that database (serveChild) instead of running tests.
const childEnv = "CONNSCOPE_INGEST_TEST_CHILD_DB"

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		if err := serveChild(path); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

// serveChild serves ingest over the database at path on a free port,
// printed as "listening ADDR", until the process is killed. Its clock
// stays at the traffic's start and its tick is an hour: nothing it
// accepts is counted before it dies, so all of it must come back from
// the journal.
func serveChild(path string) error {
	st, err := store.Open(path, store.Options{})
	if err != nil {
		return err
	}
	ing, err := ingest.New(context.Background(), ingest.Config{
		Store: st, Flow: flow.Config{IdleTimeout: idle, Hold: idle, Linger: 10 * idle},
		Policy: "default", Grace: time.Nanosecond, Tick: time.Hour, Now: func() time.Time { return base },
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	g := grpc.NewServer(ingest.ServerOptions()...)
	ing.Register(g)
	go ing.Run(context.Background())
	fmt.Printf("listening %s\n", lis.Addr())
	return g.Serve(lis)
}

// TestKill9AfterAckLosesNothing runs ingest in a process of its own
// (this test binary, re-executed), sends it every batch of the traffic
// with the agent's sink, each acknowledged, and kills it with SIGKILL
// right after the last ack, before it committed anything. A classifier
// started on the same database must count every connection exactly once.
func TestKill9AfterAckLosesNothing(t *testing.T) {
	recs := traffic(400)
	bs := batches(recs, 53)
	last := time.Unix(0, recs[len(recs)-1].Timestamp)
	path := filepath.Join(t.TempDir(), "c.db")

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		t.Fatalf("the child did not say where it listens: %q, %v", line, err)
	}

	sk := sink(t, addr, "", ship.Options{})
	for _, b := range bs {
		send(t, sk, b) // returns once acknowledged
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	killed = true
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the child did not die of SIGKILL: %v", err)
	}

	c := &clock{}
	c.Set(base)
	s := start(t, path, "", "", c, nil)
	if st := s.ing.Stats(); st.JournalRows != len(bs) {
		t.Errorf("the journal holds %d batches after the kill, want all %d acknowledged", st.JournalRows, len(bs))
	}
	// No agent comes back: the engine's clock moves on its own once it
	// has been without a stream for the stall time.
	c.Set(last.Add(ingest.DefaultStall + time.Second))
	if err := s.ing.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	stages, _, excluded := totals(t, s.st)
	if want := [6]int64{0, 80, 80, 80, 80, 80}; stages != want || excluded != 0 {
		t.Errorf("after kill -9 and a restart: stages %v, excluded %d; want %v and 0 (every connection of the traffic once)", stages, excluded, want)
	}
	if st := s.ing.Stats(); st.Connections != 400 || st.ReplaySkipped != 0 {
		t.Errorf("the restarted classifier counted %d connections and skipped %d as counted before, want 400 and 0 (the killed one committed nothing): %+v",
			st.Connections, st.ReplaySkipped, st)
	}
}
