// Package store keeps the classifier's state in an embedded SQLite
// database (modernc.org/sqlite, no cgo): the aggregates (counts per
// 15-minute bucket and dimension, package aggregate), the bounded list of
// recent anomalous connections, and what ingest needs to acknowledge a
// batch only once it is durable — the highest sequence accepted per agent
// instance, a journal of accepted batches not yet fully classified, and
// the connections already counted whose packets are still journaled.
//
// The journal is not in SQLite: it is append-only segment files beside
// the database, synced once per group of batches (journal.go says how).
//
// The schema is created and migrated in code (migrations, PRAGMA
// user_version) when the store opens. The database runs in WAL mode with
// synchronous=FULL: a committed transaction survives a crash of the
// process and of the machine. Retain deletes what is older than the
// retention.
//
// It does not classify, decide when a journal row may go (package ingest
// says so with a cutoff), or serve HTTP (package api).
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/connscope/connscope/classifier/aggregate"
)

// Options configure a Store.
type Options struct {
	// MaxAnomalies bounds the recent anomalous connections kept (0 means
	// aggregate.DefaultMaxAnomalies).
	MaxAnomalies int
	// AnomaliesPerCommit bounds the anomalies one commit writes: the
	// latest of its delta (0 means DefaultAnomaliesPerCommit). In a burst
	// the ring then holds the latest of each commit rather than only the
	// very latest, and writing it stays cheap.
	AnomaliesPerCommit int
}

// DefaultAnomaliesPerCommit is Options.AnomaliesPerCommit when 0.
const DefaultAnomaliesPerCommit = 1000

// Store is the classifier's database. It is safe for concurrent use;
// writes are serialised.
type Store struct {
	db           *sql.DB
	path         string
	maxAnomalies int
	perCommit    int
	lastUpdated  atomic.Int64 // ns; last commit of aggregates
	journal      *journal
}

// migrations are applied in order; PRAGMA user_version holds how many
// were. Never edit one that was released: append a new one.
var migrations = []string{
	// 1: the initial schema.
	`CREATE TABLE counts (
		bucket  INTEGER NOT NULL, -- start of the 15-minute bucket, s since the epoch
		node    TEXT    NOT NULL,
		policy  TEXT    NOT NULL,
		port    INTEGER NOT NULL,
		ipv     INTEGER NOT NULL,
		country TEXT    NOT NULL,
		asn     INTEGER NOT NULL,
		kind    TEXT    NOT NULL, -- stage, tag, signature, excluded
		name    TEXT    NOT NULL,
		n       INTEGER NOT NULL,
		PRIMARY KEY (bucket, node, policy, port, ipv, country, asn, kind, name)
	) WITHOUT ROWID;
	CREATE TABLE anomalies (
		id          INTEGER PRIMARY KEY AUTOINCREMENT,
		time_ns     INTEGER NOT NULL,
		last_ns     INTEGER NOT NULL,
		node        TEXT    NOT NULL,
		policy      TEXT    NOT NULL,
		client      TEXT    NOT NULL,
		client_port INTEGER NOT NULL,
		server      TEXT    NOT NULL,
		port        INTEGER NOT NULL,
		ipv         INTEGER NOT NULL,
		country     TEXT    NOT NULL,
		asn         INTEGER NOT NULL,
		stage       INTEGER NOT NULL,
		tags        INTEGER NOT NULL,
		signature   INTEGER NOT NULL,
		packets     INTEGER NOT NULL
	);
	CREATE INDEX anomalies_time ON anomalies (time_ns);
	CREATE TABLE agents (
		instance   TEXT PRIMARY KEY,
		node       TEXT    NOT NULL,
		policy     TEXT    NOT NULL,
		highest    INTEGER NOT NULL,
		updated_ns INTEGER NOT NULL,
		packets_logged INTEGER NOT NULL DEFAULT 0,
		packets_lost_kernel INTEGER NOT NULL DEFAULT 0,
		receive_overflows INTEGER NOT NULL DEFAULT 0,
		packets_dropped_queue_full INTEGER NOT NULL DEFAULT 0,
		read_errors INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE journal (
		id     INTEGER PRIMARY KEY AUTOINCREMENT,
		node   TEXT    NOT NULL,
		policy TEXT    NOT NULL,
		max_ns INTEGER NOT NULL, -- the latest packet timestamp in the batch
		batch  BLOB    NOT NULL
	);
	CREATE INDEX journal_engine ON journal (node, policy, max_ns);
	CREATE TABLE written (
		node     TEXT    NOT NULL,
		policy   TEXT    NOT NULL,
		conn     BLOB    NOT NULL,
		first_ns INTEGER NOT NULL,
		PRIMARY KEY (node, policy, conn, first_ns)
	) WITHOUT ROWID;
	CREATE TABLE engines (
		node      TEXT    NOT NULL,
		policy    TEXT    NOT NULL,
		counted_before_ns INTEGER NOT NULL, -- every connection that began before was counted
		PRIMARY KEY (node, policy)
	) WITHOUT ROWID;`,
	// 2: counted connections in one row per engine and commit (a row per
	// connection cost more than the rest of a commit).
	`DROP TABLE written;
	CREATE TABLE written_sets (
		id           INTEGER PRIMARY KEY AUTOINCREMENT,
		node         TEXT    NOT NULL,
		policy       TEXT    NOT NULL,
		max_first_ns INTEGER NOT NULL, -- the latest first packet of the set
		conns        BLOB    NOT NULL  -- per connection: key length (2 bytes), key, first packet ns (8 bytes)
	);
	CREATE INDEX written_sets_engine ON written_sets (node, policy, max_first_ns);`,
}

// Open opens (creating it and its directory if needed) the database file
// at path and brings its schema up to date.
func Open(path string, o Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("store: no database path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("store: create the directory of %s: %w", path, err)
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and this keeps
	// transactions from waiting on each other's locks.
	db.SetMaxOpenConns(1)
	s := &Store{db: db, path: path, maxAnomalies: o.MaxAnomalies, perCommit: o.AnomaliesPerCommit}
	if s.maxAnomalies <= 0 {
		s.maxAnomalies = aggregate.DefaultMaxAnomalies
	}
	if s.perCommit <= 0 {
		s.perCommit = DefaultAnomaliesPerCommit
	}
	if err := s.migrate(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	if err := s.openJournal(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	// Until the first commit, the data is as fresh as the files' last write.
	for _, f := range []string{path, path + "-wal"} {
		if st, err := os.Stat(f); err == nil && st.ModTime().UnixNano() > s.lastUpdated.Load() {
			s.lastUpdated.Store(st.ModTime().UnixNano())
		}
	}
	return s, nil
}

func (s *Store) migrate(ctx context.Context) error {
	var v int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this connscope knows (%d): run a newer connscope", v, len(migrations))
	}
	if v == 0 {
		// A new database: 64 KiB pages (a journaled batch, about 60 bytes
		// a record, then spans a page or two instead of 15 or more, each
		// a write to the WAL). The page size of a database in WAL mode is
		// fixed, so it leaves WAL mode for a moment; it is still empty.
		for _, q := range []string{"PRAGMA journal_mode=DELETE", "PRAGMA page_size=65536", "VACUUM", "PRAGMA journal_mode=WAL"} {
			if _, err := s.db.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("set the page size of a new database: %s: %w", q, err)
			}
		}
	}
	for ; v < len(migrations); v++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
	}
	return nil
}

// Path returns the database file.
func (s *Store) Path() string { return s.path }

// openJournal opens the journal's segments (journal.go) beside the
// database, with the agents table's instances.
func (s *Store) openJournal(ctx context.Context) error {
	agents, err := s.loadAgents(ctx)
	if err != nil {
		return err
	}
	var next int64
	if err := s.db.QueryRowContext(ctx, "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'journal'").Scan(&next); err != nil {
		return fmt.Errorf("read the journal table's last id: %w", err)
	}
	s.journal, err = openJournal(s.path+".batches", agents, next+1)
	return err
}

// Close closes the journal and the database.
func (s *Store) Close() error {
	return errors.Join(s.journal.close(), s.db.Close())
}

// Ping checks that the database answers (readiness).
func (s *Store) Ping(ctx context.Context) error {
	var one int
	return s.db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

// LastUpdated returns when aggregates were last written: by this process,
// else when the database files were last modified.
func (s *Store) LastUpdated() time.Time {
	ns := s.lastUpdated.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Write adds d's counts and anomalies in one transaction.
func (s *Store) Write(ctx context.Context, d *aggregate.Delta) error {
	return s.Commit(ctx, Commit{Delta: d})
}

// Retain deletes counts, anomalies and agent instances older than before.
// It returns the number of rows deleted.
func (s *Store) Retain(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for _, q := range []struct {
		sql string
		arg int64
	}{
		{"DELETE FROM counts WHERE bucket < ?", before.Unix()},
		{"DELETE FROM anomalies WHERE time_ns < ?", before.UnixNano()},
		{"DELETE FROM agents WHERE updated_ns < ?", before.UnixNano()},
	} {
		res, err := s.db.ExecContext(ctx, q.sql, q.arg)
		if err != nil {
			return total, fmt.Errorf("store: retention: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	s.journal.forget(before.UnixNano())
	return total, nil
}
