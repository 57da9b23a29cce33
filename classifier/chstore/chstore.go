// Package chstore keeps connscope's data in ClickHouse, as the seed does at
// scale: the agents insert packet records into a packets table (agent/ship's
// clickhouse sink), classifier replicas read closed time windows of it,
// each replica a shard of connections at a time, classify them with the
// same engine as everywhere else (classifier/flow, classifier/classify,
// classifier/aggregate), and write the classified connections and the
// aggregates back; the HTTP API and the dashboard read those (Store
// satisfies classifier/api's store interface).
//
// # Schema
//
// migrations/*.sql, applied in order by Open and recorded in
// schema_migrations (CREATE ... IF NOT EXISTS: replicas starting together
// may both apply them). Every table is partitioned by day; retention
// (Retain) drops whole day partitions, which works on every release
// (18.16 has no TTL clause).
//
// # Windows, shards and exactly-once
//
// See Classifier. In short: a window is classified in parts (a part is the
// connections whose endpoint hash bucket modulo the window's part count is
// the part's number); a replica claims a part, classifies it, writes its
// rows under a fresh run id, then commits the part. Readers count a run's
// rows only when its commit exists, and of two commits of one part only the
// earliest, so a crash between writes and commit, or two replicas racing
// for a part, never counts a connection twice. Connections a window cannot
// judge are carried, as packets, into the next window.
//
// It talks to ClickHouse over the HTTP interface (internal/chclient), the
// interface that is the same on 18.16 and current releases. It does not
// receive packets (the agents insert them) and does not serve HTTP
// (classifier/api).
package chstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/store"
	"github.com/connscope/connscope/internal/chclient"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a ClickHouse database holding connscope's tables.
type Store struct {
	c *chclient.Client
}

// Open connects to the database cfg names, creates it if needed, and
// applies the migrations not applied yet.
func Open(ctx context.Context, cfg chclient.Config) (*Store, error) {
	c, err := chclient.New(cfg)
	if err != nil {
		return nil, err
	}
	s := &Store{c: c}
	if err := c.ExecNoDB(ctx, "CREATE DATABASE IF NOT EXISTS "+cfg.Database); err != nil {
		c.Close()
		return nil, fmt.Errorf("chstore: create database %s: %w", cfg.Database, err)
	}
	if err := s.migrate(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// Client returns the store's ClickHouse client.
func (s *Store) Client() *chclient.Client { return s.c }

// Close releases the client's connections.
func (s *Store) Close() error { s.c.Close(); return nil }

// Migration is one schema version.
type Migration struct {
	Version    int
	Name       string
	Statements []string
}

// Migrations returns the schema's migrations in order.
func Migrations() ([]Migration, error) {
	ents, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range ents {
		name := e.Name()
		v, err := strconv.Atoi(strings.SplitN(name, "_", 2)[0])
		if err != nil {
			return nil, fmt.Errorf("chstore: migration %s: name must start with a number", name)
		}
		b, err := migrations.ReadFile("migrations/" + name)
		if err != nil {
			return nil, err
		}
		m := Migration{Version: v, Name: name}
		for _, st := range strings.Split(string(b), "\n;\n") {
			if st = strings.TrimSpace(stripComments(st)); st != "" {
				m.Statements = append(m.Statements, st)
			}
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// migrate applies the migrations whose version is not recorded.
func (s *Store) migrate(ctx context.Context) error {
	if err := s.c.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at DateTime)
		ENGINE = MergeTree ORDER BY version`); err != nil {
		return fmt.Errorf("chstore: create schema_migrations: %w", err)
	}
	rows, err := s.c.QueryTSV(ctx, "SELECT DISTINCT version FROM schema_migrations")
	if err != nil {
		return fmt.Errorf("chstore: read schema_migrations: %w", err)
	}
	applied := map[int]bool{}
	for _, r := range rows {
		v, _ := strconv.Atoi(r[0])
		applied[v] = true
	}
	ms, err := Migrations()
	if err != nil {
		return err
	}
	for _, m := range ms {
		if applied[m.Version] {
			continue
		}
		for _, st := range m.Statements {
			if err := s.c.Exec(ctx, st); err != nil {
				return fmt.Errorf("chstore: migration %s: %w", m.Name, err)
			}
		}
		if err := s.c.Exec(ctx, fmt.Sprintf("INSERT INTO schema_migrations VALUES (%d, %s, now())", m.Version, chclient.Quote(m.Name))); err != nil {
			return fmt.Errorf("chstore: record migration %s: %w", m.Name, err)
		}
	}
	return nil
}

// SchemaVersion returns the highest migration applied.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	rows, err := s.c.QueryTSV(ctx, "SELECT max(version) FROM schema_migrations")
	if err != nil || len(rows) == 0 {
		return 0, err
	}
	return strconv.Atoi(rows[0][0])
}

// winners selects the committed runs: for each part of each window, the
// run of its earliest commit.
const winners = "(SELECT win, part, argMin(run, committed_at) FROM commits GROUP BY win, part)"

// Ping checks that ClickHouse answers.
func (s *Store) Ping(ctx context.Context) error { return s.c.Ping(ctx) }

// LastUpdated returns the time of the latest commit (zero when none or
// when ClickHouse does not answer within 2 s).
func (s *Store) LastUpdated() time.Time {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rows, err := s.c.QueryTSV(ctx, "SELECT max(committed_at), count() FROM commits")
	if err != nil || len(rows) == 0 || len(rows[0]) < 2 || rows[0][1] == "0" {
		return time.Time{}
	}
	ns, err := strconv.ParseInt(rows[0][0], 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// where renders f as SQL conditions over counts (timeCol in s) or
// connections (timeCol in ns).
func where(f store.Filter, timeCol string, ns bool, countryCol, asnCol, nodeCol, policyCol, portCol, ipvCol string) string {
	var conds []string
	t := func(x time.Time) string {
		if ns {
			return strconv.FormatInt(x.UnixNano(), 10)
		}
		return strconv.FormatInt(x.Unix(), 10)
	}
	if !f.Start.IsZero() {
		conds = append(conds, timeCol+" >= "+t(f.Start))
	}
	if !f.End.IsZero() {
		conds = append(conds, timeCol+" < "+t(f.End))
	}
	in := func(col string, not bool, vals []string) {
		if len(vals) == 0 {
			return
		}
		op := " IN ("
		if not {
			op = " NOT IN ("
		}
		conds = append(conds, col+op+strings.Join(vals, ", ")+")")
	}
	quote := func(vs []string) []string {
		out := make([]string, len(vs))
		for i, v := range vs {
			out[i] = chclient.Quote(v)
		}
		return out
	}
	nums := func(n int, get func(int) uint64) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = strconv.FormatUint(get(i), 10)
		}
		return out
	}
	in(countryCol, false, quote(f.Countries))
	in(countryCol, true, quote(f.NotCountries))
	in(asnCol, false, nums(len(f.ASNs), func(i int) uint64 { return uint64(f.ASNs[i]) }))
	in(asnCol, true, nums(len(f.NotASNs), func(i int) uint64 { return uint64(f.NotASNs[i]) }))
	in(nodeCol, false, quote(f.Nodes))
	in(policyCol, false, quote(f.Policies))
	in(portCol, false, nums(len(f.Ports), func(i int) uint64 { return uint64(f.Ports[i]) }))
	in(ipvCol, false, nums(len(f.IPVersions), func(i int) uint64 { return uint64(f.IPVersions[i]) }))
	if len(conds) == 0 {
		return ""
	}
	return " AND " + strings.Join(conds, " AND ")
}

// Buckets returns the counts of the buckets f selects, in time order
// (classifier/store's contract).
func (s *Store) Buckets(ctx context.Context, f store.Filter) ([]store.BucketCounts, error) {
	q := "SELECT bucket, kind, name, sum(n) FROM counts WHERE (win, part, run) IN " + winners +
		where(f, "bucket", false, "country", "asn", "node", "policy", "port", "ipv") +
		" GROUP BY bucket, kind, name ORDER BY bucket, kind, name"
	rows, err := s.c.QueryTSV(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("chstore: query counts: %w", err)
	}
	var out []store.BucketCounts
	for _, r := range rows {
		if len(r) != 4 {
			return nil, errors.New("chstore: query counts: unexpected row")
		}
		b, _ := strconv.ParseInt(r[0], 10, 64)
		n, _ := strconv.ParseInt(r[3], 10, 64)
		if len(out) == 0 || out[len(out)-1].Bucket != b {
			out = append(out, store.BucketCounts{Bucket: b})
		}
		addCount(&out[len(out)-1].Counts, r[1], r[2], n)
	}
	return out, nil
}

func addCount(c *aggregate.Counts, kind, name string, n int64) {
	switch kind {
	case store.KindStage:
		if st, ok := stageByName(name); ok {
			c.Stages[st] += n
		}
	case store.KindTag:
		if t, ok := classify.TagByName(name); ok {
			c.Tags[t] += n
		}
	case store.KindSignature:
		if sig, ok := classify.SignatureByName(unescapeTSV(name)); ok {
			c.Sigs[sig] += n
		}
	case store.KindExcluded:
		for _, e := range classify.Exclusions {
			if e.String() == name {
				c.Excluded[e] += n
			}
		}
	}
}

func stageByName(name string) (classify.Stage, bool) {
	for _, st := range classify.Stages {
		if st.String() == name {
			return st, true
		}
	}
	return classify.StageNone, false
}

// unescapeTSV undoes TabSeparated escaping of a string field.
func unescapeTSV(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case '0':
			b.WriteByte(0)
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// Anomalies returns up to limit recent anomalous connections f selects,
// newest first.
func (s *Store) Anomalies(ctx context.Context, f store.Filter, limit int) ([]aggregate.Anomaly, error) {
	if limit <= 0 {
		return []aggregate.Anomaly{}, nil
	}
	q := "SELECT first_seen, last_seen, node, policy, client, client_port, server, server_port, ip_version, country, asn, stage, " +
		"arrayStringConcat(tags, ','), signature, packets FROM connections WHERE (win, part, run) IN " + winners +
		" AND stage NOT IN ('', 'no_match')" +
		where(f, "first_seen", true, "country", "asn", "node", "policy", "server_port", "ip_version") +
		" ORDER BY first_seen DESC, client DESC, client_port DESC LIMIT " + strconv.Itoa(limit)
	rows, err := s.c.QueryTSV(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("chstore: query anomalies: %w", err)
	}
	out := []aggregate.Anomaly{}
	for _, r := range rows {
		if len(r) != 15 {
			return nil, errors.New("chstore: query anomalies: unexpected row")
		}
		var a aggregate.Anomaly
		a.Time, _ = strconv.ParseInt(r[0], 10, 64)
		a.LastSeen, _ = strconv.ParseInt(r[1], 10, 64)
		a.Node, a.Policy = unescapeTSV(r[2]), unescapeTSV(r[3])
		a.Client, _ = netip.ParseAddr(r[4])
		cp, _ := strconv.ParseUint(r[5], 10, 16)
		a.Server, _ = netip.ParseAddr(r[6])
		sp, _ := strconv.ParseUint(r[7], 10, 16)
		v, _ := strconv.ParseUint(r[8], 10, 8)
		a.ClientPort, a.Port, a.IPVersion = uint16(cp), uint16(sp), uint8(v)
		a.Country = unescapeTSV(r[9])
		asn, _ := strconv.ParseUint(r[10], 10, 32)
		a.ASN = uint32(asn)
		a.Stage, _ = stageByName(r[11])
		for _, name := range strings.Split(r[12], ",") {
			if t, ok := classify.TagByName(name); ok {
				a.Tags |= 1 << t
			}
		}
		a.Signature, _ = classify.SignatureByName(unescapeTSV(r[13]))
		a.Packets, _ = strconv.Atoi(r[14])
		out = append(out, a)
	}
	return out, nil
}

// Dimensions returns the distinct values of each dimension of the counts.
func (s *Store) Dimensions(ctx context.Context) (store.Dimensions, error) {
	d := store.Dimensions{Nodes: []string{}, Policies: []string{}, Countries: []string{}, Ports: []uint16{}, ASNs: []uint32{}, IPVersions: []uint8{}}
	col := func(c string) ([]string, error) {
		rows, err := s.c.QueryTSV(ctx, "SELECT DISTINCT "+c+" FROM counts WHERE (win, part, run) IN "+winners+" ORDER BY "+c)
		if err != nil {
			return nil, fmt.Errorf("chstore: dimensions: %w", err)
		}
		out := make([]string, 0, len(rows))
		for _, r := range rows {
			out = append(out, unescapeTSV(r[0]))
		}
		return out, nil
	}
	var err error
	if d.Nodes, err = col("node"); err != nil {
		return d, err
	}
	if d.Policies, err = col("policy"); err != nil {
		return d, err
	}
	if d.Countries, err = col("country"); err != nil {
		return d, err
	}
	ports, err := col("port")
	if err != nil {
		return d, err
	}
	for _, p := range ports {
		n, _ := strconv.ParseUint(p, 10, 16)
		d.Ports = append(d.Ports, uint16(n))
	}
	asns, err := col("asn")
	if err != nil {
		return d, err
	}
	for _, a := range asns {
		n, _ := strconv.ParseUint(a, 10, 32)
		d.ASNs = append(d.ASNs, uint32(n))
	}
	ipvs, err := col("ipv")
	if err != nil {
		return d, err
	}
	for _, v := range ipvs {
		n, _ := strconv.ParseUint(v, 10, 8)
		d.IPVersions = append(d.IPVersions, uint8(n))
	}
	rows, err := s.c.QueryTSV(ctx, "SELECT min(bucket), max(bucket), count() FROM counts WHERE (win, part, run) IN "+winners)
	if err != nil {
		return d, fmt.Errorf("chstore: dimensions: %w", err)
	}
	if len(rows) == 1 && len(rows[0]) == 3 && rows[0][2] != "0" {
		lo, _ := strconv.ParseInt(rows[0][0], 10, 64)
		hi, _ := strconv.ParseInt(rows[0][1], 10, 64)
		d.First, d.Last = time.Unix(lo, 0).UTC(), time.Unix(hi, 0).UTC()
	}
	return d, nil
}

// partitioned lists the tables Retain prunes.
var partitioned = []string{"packets", "carry", "carry_done", "claims", "commits", "connections", "counts"}

// Retain drops the day partitions of every table that end before before
// (a day is dropped only when all of it is older). It returns the number
// of partitions dropped.
func (s *Store) Retain(ctx context.Context, before time.Time) (int, error) {
	cut := before.UTC()
	cutoff := cut.Year()*10000 + int(cut.Month())*100 + cut.Day() // the day holding before is kept
	names := make([]string, len(partitioned))
	for i, t := range partitioned {
		names[i] = chclient.Quote(t)
	}
	rows, err := s.c.QueryTSV(ctx, "SELECT DISTINCT table, partition FROM system.parts WHERE active AND database = currentDatabase() AND table IN ("+
		strings.Join(names, ", ")+") ORDER BY table, partition")
	if err != nil {
		return 0, fmt.Errorf("chstore: list partitions: %w", err)
	}
	n := 0
	for _, r := range rows {
		p, err := strconv.Atoi(r[1])
		if err != nil || p >= cutoff {
			continue
		}
		if err := s.c.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION %d", r[0], p)); err != nil {
			return n, fmt.Errorf("chstore: drop partition %d of %s: %w", p, r[0], err)
		}
		n++
	}
	return n, nil
}
