package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

func TestMigratesAVersion1Database(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(migrations[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 1; INSERT INTO journal (node, policy, max_ns, batch) VALUES ('n', 'p', 1, x'00')"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var v int
	if err := s.db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != len(migrations) {
		t.Errorf("schema version %d (%v), want %d", v, err, len(migrations))
	}
	if n, err := s.JournalLen(context.Background()); err != nil || n != 1 {
		t.Errorf("journal kept %d rows (%v), want 1", n, err)
	}
	if _, err := s.WrittenConns(context.Background()); err != nil {
		t.Errorf("written sets after migration: %v", err)
	}
}
