package store

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/classify"
)

// Kinds of count rows.
const (
	KindStage     = "stage"
	KindTag       = "tag"
	KindSignature = "signature"
	KindExcluded  = "excluded"
)

// Filter selects buckets and anomalies. Zero fields select everything.
type Filter struct {
	// Start (inclusive) and End (exclusive) bound the time.
	Start, End time.Time
	// Countries and ASNs select; NotCountries and NotASNs exclude.
	Countries, NotCountries []string
	ASNs, NotASNs           []uint32
	Nodes, Policies         []string
	Ports                   []uint16
	IPVersions              []uint8
}

// where renders f as an SQL condition over columns of counts (or
// anomalies, whose time column is given).
func (f *Filter) where(timeCol string, timeScale int64) (string, []any) {
	var conds []string
	var args []any
	if !f.Start.IsZero() {
		conds = append(conds, timeCol+" >= ?")
		args = append(args, scale(f.Start, timeScale))
	}
	if !f.End.IsZero() {
		conds = append(conds, timeCol+" < ?")
		args = append(args, scale(f.End, timeScale))
	}
	in := func(col string, not bool, vals []any) {
		if len(vals) == 0 {
			return
		}
		op := " IN ("
		if not {
			op = " NOT IN ("
		}
		conds = append(conds, col+op+strings.TrimSuffix(strings.Repeat("?,", len(vals)), ",")+")")
		args = append(args, vals...)
	}
	in("country", false, anys(f.Countries))
	in("country", true, anys(f.NotCountries))
	in("asn", false, anys(f.ASNs))
	in("asn", true, anys(f.NotASNs))
	in("node", false, anys(f.Nodes))
	in("policy", false, anys(f.Policies))
	in("port", false, anys(f.Ports))
	in("ipv", false, anys(f.IPVersions))
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// scale returns t in seconds (timeScale 1) or ns (timeScale 0).
func scale(t time.Time, timeScale int64) int64 {
	if timeScale == 1 {
		return t.Unix()
	}
	return t.UnixNano()
}

func anys[T any](vs []T) []any {
	out := make([]any, len(vs))
	for i, v := range vs {
		switch x := any(v).(type) {
		case uint32:
			out[i] = int64(x)
		case uint16:
			out[i] = int64(x)
		case uint8:
			out[i] = int64(x)
		default:
			out[i] = v
		}
	}
	return out
}

// BucketCounts are the counts of one bucket, summed over the dimensions a
// filter selects.
type BucketCounts struct {
	// Bucket is the bucket's start, s since the epoch.
	Bucket int64
	aggregate.Counts
}

// Buckets returns the counts of the buckets f selects (a bucket is
// selected when its start is in [Start, End)), in time order; buckets
// without any count are left out.
func (s *Store) Buckets(ctx context.Context, f Filter) ([]BucketCounts, error) {
	where, args := f.where("bucket", 1)
	rows, err := s.db.QueryContext(ctx, "SELECT bucket, kind, name, SUM(n) FROM counts"+where+" GROUP BY bucket, kind, name ORDER BY bucket", args...)
	if err != nil {
		return nil, fmt.Errorf("store: query counts: %w", err)
	}
	defer rows.Close()
	var out []BucketCounts
	for rows.Next() {
		var b int64
		var kind, name string
		var n int64
		if err := rows.Scan(&b, &kind, &name, &n); err != nil {
			return nil, fmt.Errorf("store: query counts: %w", err)
		}
		if len(out) == 0 || out[len(out)-1].Bucket != b {
			out = append(out, BucketCounts{Bucket: b})
		}
		c := &out[len(out)-1].Counts
		switch kind {
		case KindStage:
			for _, st := range classify.Stages {
				if st.String() == name {
					c.Stages[st] += n
				}
			}
		case KindTag:
			if t, ok := classify.TagByName(name); ok {
				c.Tags[t] += n
			}
		case KindSignature:
			if sig, ok := classify.SignatureByName(name); ok {
				c.Sigs[sig] += n
			}
		case KindExcluded:
			for _, e := range classify.Exclusions {
				if e.String() == name {
					c.Excluded[e] += n
				}
			}
		}
	}
	return out, rows.Err()
}

// Anomalies returns up to limit recent anomalous connections f selects,
// newest first.
func (s *Store) Anomalies(ctx context.Context, f Filter, limit int) ([]aggregate.Anomaly, error) {
	where, args := f.where("time_ns", 0)
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, `SELECT time_ns, last_ns, node, policy, client, client_port, server, port, ipv, country, asn,
		stage, tags, signature, packets FROM anomalies`+where+" ORDER BY time_ns DESC, id DESC LIMIT ?", args...)
	if err != nil {
		return nil, fmt.Errorf("store: query anomalies: %w", err)
	}
	defer rows.Close()
	out := []aggregate.Anomaly{}
	for rows.Next() {
		var a aggregate.Anomaly
		var client, server string
		var cport, port, ipv, stage, sig int
		var asn, tags int64
		if err := rows.Scan(&a.Time, &a.LastSeen, &a.Node, &a.Policy, &client, &cport, &server, &port, &ipv, &a.Country, &asn,
			&stage, &tags, &sig, &a.Packets); err != nil {
			return nil, fmt.Errorf("store: query anomalies: %w", err)
		}
		a.Client, _ = netip.ParseAddr(client)
		a.Server, _ = netip.ParseAddr(server)
		a.ClientPort, a.Port, a.IPVersion = uint16(cport), uint16(port), uint8(ipv)
		a.ASN, a.Stage, a.Tags, a.Signature = uint32(asn), classify.Stage(stage), classify.Tags(tags), classify.Signature(sig)
		out = append(out, a)
	}
	return out, rows.Err()
}

// Dimensions are the values seen in the counts, for filters.
type Dimensions struct {
	Nodes, Policies, Countries []string
	Ports                      []uint16
	ASNs                       []uint32
	IPVersions                 []uint8
	// First and Last are the first and last buckets (zero when empty).
	First, Last time.Time
}

// Dimensions returns the distinct values of each dimension.
func (s *Store) Dimensions(ctx context.Context) (Dimensions, error) {
	var d Dimensions
	strs := func(col string, dst *[]string) error {
		rows, err := s.db.QueryContext(ctx, "SELECT DISTINCT "+col+" FROM counts ORDER BY 1")
		if err != nil {
			return err
		}
		defer rows.Close()
		*dst = []string{}
		for rows.Next() {
			var v string
			if err := rows.Scan(&v); err != nil {
				return err
			}
			*dst = append(*dst, v)
		}
		return rows.Err()
	}
	ints := func(col string) ([]int64, error) {
		rows, err := s.db.QueryContext(ctx, "SELECT DISTINCT "+col+" FROM counts ORDER BY 1")
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		out := []int64{}
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v); err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, rows.Err()
	}
	err := firstErr(strs("node", &d.Nodes), strs("policy", &d.Policies))
	err = firstErr(err, strs("country", &d.Countries))
	if err != nil {
		return d, fmt.Errorf("store: dimensions: %w", err)
	}
	ports, err := ints("port")
	if err != nil {
		return d, fmt.Errorf("store: dimensions: %w", err)
	}
	asns, err := ints("asn")
	if err != nil {
		return d, fmt.Errorf("store: dimensions: %w", err)
	}
	ipvs, err := ints("ipv")
	if err != nil {
		return d, fmt.Errorf("store: dimensions: %w", err)
	}
	d.Ports, d.ASNs, d.IPVersions = []uint16{}, []uint32{}, []uint8{}
	for _, p := range ports {
		d.Ports = append(d.Ports, uint16(p))
	}
	for _, a := range asns {
		d.ASNs = append(d.ASNs, uint32(a))
	}
	for _, v := range ipvs {
		d.IPVersions = append(d.IPVersions, uint8(v))
	}
	var lo, hi *int64
	if err := s.db.QueryRowContext(ctx, "SELECT MIN(bucket), MAX(bucket) FROM counts").Scan(&lo, &hi); err != nil {
		return d, fmt.Errorf("store: dimensions: %w", err)
	}
	if lo != nil && hi != nil {
		d.First, d.Last = time.Unix(*lo, 0).UTC(), time.Unix(*hi, 0).UTC()
	}
	return d, nil
}
