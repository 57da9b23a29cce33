package store_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/connscope/connscope/classifier/store"
)

func segments(t *testing.T, db string) []string {
	t.Helper()
	names, err := filepath.Glob(db + ".batches/*.seg")
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func journalData(t *testing.T, s *store.Store) string {
	t.Helper()
	var data []string
	if err := s.Journal(context.Background(), func(r store.JournalRow) error { data = append(data, string(r.Data)); return nil }); err != nil {
		t.Fatal(err)
	}
	return strings.Join(data, ",")
}

func accept(t *testing.T, s *store.Store, inst string, seq uint64, maxTS int64, data string) (dup bool) {
	t.Helper()
	dup, _, err := s.Accept(context.Background(), store.Batch{Instance: inst, Sequence: seq, Node: "n", Policy: "p", MaxTS: maxTS, Data: []byte(data)})
	if err != nil {
		t.Fatal(err)
	}
	return dup
}

func TestATornJournalEndIsCutOffAndTheRestKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	s := open(t, path, store.Options{})
	accept(t, s, "a", 1, 10, "one")
	accept(t, s, "a", 2, 20, "two")
	s.Close()
	segs := segments(t, path)
	if len(segs) != 1 {
		t.Fatalf("segments %v, want one", segs)
	}
	// A crash in the middle of writing the next group: half an entry.
	f, err := os.OpenFile(segs[0], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0, 0, 0, 200, 1, 2, 3, 4, 5})
	f.Close()
	s = open(t, path, store.Options{})
	if got := journalData(t, s); got != "one,two" {
		t.Fatalf("journal after a torn write: %q, want one,two", got)
	}
	if !accept(t, s, "a", 2, 20, "two") || accept(t, s, "a", 3, 30, "three") {
		t.Fatal("a batch after the torn end was taken for a duplicate, or the acknowledged one was not")
	}
	s.Close()
	s = open(t, path, store.Options{})
	if got := journalData(t, s); got != "one,two,three" {
		t.Fatalf("journal: %q, want one,two,three", got)
	}
}

func TestACorruptJournalSegmentIsRefusedByName(t *testing.T) {
	defer store.SetSegmentAge(0)()
	path := filepath.Join(t.TempDir(), "c.db")
	s := open(t, path, store.Options{})
	accept(t, s, "a", 1, 10, "one")
	if err := s.Commit(context.Background(), store.Commit{}); err != nil { // begins a second segment
		t.Fatal(err)
	}
	accept(t, s, "a", 2, 20, "two")
	s.Close()
	segs := segments(t, path)
	if len(segs) != 2 {
		t.Fatalf("segments %v, want two", segs)
	}
	b, _ := os.ReadFile(segs[0])
	b[len(b)-1] ^= 0xff
	os.WriteFile(segs[0], b, 0o644)
	_, err := store.Open(path, store.Options{})
	if err == nil || !strings.Contains(err.Error(), filepath.Base(segs[0])) {
		t.Fatalf("Open with a corrupt segment: %v, want an error naming %s", err, segs[0])
	}
}

func TestJournalSegmentsGoOnceCountedAndDedupeStays(t *testing.T) {
	defer store.SetSegmentAge(0)()
	path := filepath.Join(t.TempDir(), "c.db")
	ctx := context.Background()
	s := open(t, path, store.Options{})
	accept(t, s, "a", 1, 10, "one")
	accept(t, s, "a", 2, 20, "two")
	cut := []store.Cutoff{{Node: "n", Policy: "p", CountedBefore: 100, JournalBefore: 100, MaxID: 2}}
	if err := s.Commit(ctx, store.Commit{Cutoffs: cut}); err != nil {
		t.Fatal(err)
	}
	// The first segment's entries are no longer needed, but it was being
	// written: it goes at the next commit.
	if err := s.Commit(ctx, store.Commit{Cutoffs: cut}); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.JournalLen(ctx); n != 0 {
		t.Errorf("journal length %d, want 0", n)
	}
	if got := journalData(t, s); got != "" {
		t.Errorf("journal %q, want empty", got)
	}
	if segs := segments(t, path); len(segs) != 1 {
		t.Errorf("segments %v, want only the one being written", segs)
	}
	s.Close()
	s = open(t, path, store.Options{})
	if !accept(t, s, "a", 2, 20, "two") {
		t.Error("after its segment went and a reopen, batch 2 was not a duplicate")
	}
	if accept(t, s, "a", 3, 30, "three") {
		t.Error("batch 3 taken for a duplicate")
	}
	agents, err := s.Agents(ctx)
	if err != nil || len(agents) != 1 || agents[0].Highest != 3 {
		t.Errorf("agents %+v %v", agents, err)
	}
}
