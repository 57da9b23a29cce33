// Package aggregate turns classified connections into what the classifier
// keeps of them (method.md section 7): counts per time bucket and
// dimension — stages, tags, signatures and exclusions — and a bounded list
// of recent anomalous connections for drill-down.
//
// A connection is counted in the bucket of its first packet (its SYN), by
// its node and policy (from the batch that carried it), server port, IP
// version, and the client's country and ASN (package geo; "unknown" and 0
// when no database covers the client). Excluded connections count only as
// exclusions; every judged connection counts once under its stage, once
// under its signature (the empty signature included) and once under each
// of its tags.
//
// It computes in memory; it does not persist (package store), assemble or
// classify connections (packages flow and classify), or serve them.
package aggregate

import (
	"net/netip"
	"time"

	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/geo"
)

// BucketWidth is the width of the time buckets counts are kept in: Radar's
// finest aggregation interval. Coarser intervals (1 h, 1 d, 1 w) are sums
// of these.
const BucketWidth = 15 * time.Minute

// DefaultMaxAnomalies bounds the list of recent anomalous connections.
const DefaultMaxAnomalies = 10000

// BucketOf returns the start of the bucket of a time in ns since the epoch,
// in seconds since the epoch.
func BucketOf(ns int64) int64 {
	s := ns / int64(time.Second)
	if ns < 0 && ns%int64(time.Second) != 0 {
		s--
	}
	w := int64(BucketWidth / time.Second)
	b := s - s%w
	if s < 0 && s%w != 0 {
		b -= w
	}
	return b
}

// Dims are the dimensions of a bucket.
type Dims struct {
	// Bucket is the start of the time bucket, in seconds since the epoch.
	Bucket int64
	// Node and Policy are those of the agent that shipped the packets.
	Node, Policy string
	// Port is the server port.
	Port uint16
	// IPVersion is 4 or 6.
	IPVersion uint8
	// Country is the client's ISO country code or geo.Unknown; ASN the
	// client's AS number or 0.
	Country string
	ASN     uint32
}

// Counts count connections of one bucket. Stages, Sigs and Excluded are
// indexed by classify.Stage, classify.Signature and classify.Exclusion.
type Counts struct {
	Stages   [len(classify.Stages) + 1]int64
	Tags     [classify.NumTags]int64
	Sigs     [classify.NumSignatures]int64
	Excluded [len(classify.Exclusions) + 1]int64
}

// Classified returns the number of judged (not excluded) connections.
func (c *Counts) Classified() int64 {
	var n int64
	for _, st := range classify.Stages {
		n += c.Stages[st]
	}
	return n
}

// Merge adds o to c.
func (c *Counts) Merge(o *Counts) {
	for i := range c.Stages {
		c.Stages[i] += o.Stages[i]
	}
	for i := range c.Tags {
		c.Tags[i] += o.Tags[i]
	}
	for i := range c.Sigs {
		c.Sigs[i] += o.Sigs[i]
	}
	for i := range c.Excluded {
		c.Excluded[i] += o.Excluded[i]
	}
}

// Add counts one connection's result.
func (c *Counts) Add(r classify.Result) {
	if r.Excluded != classify.Included {
		c.Excluded[r.Excluded]++
		return
	}
	c.Stages[r.Stage]++
	c.Sigs[r.Signature]++
	for t := classify.Tag(0); t < classify.NumTags; t++ {
		if r.Tags.Has(t) {
			c.Tags[t]++
		}
	}
}

// Anomaly is one anomalous connection (a stage other than no_match).
type Anomaly struct {
	// Time is the connection's first packet, ns since the epoch.
	Time             int64
	Node, Policy     string
	Client, Server   netip.Addr
	ClientPort, Port uint16
	IPVersion        uint8
	Country          string
	ASN              uint32
	Stage            classify.Stage
	Tags             classify.Tags
	Signature        classify.Signature
	Packets          int
	LastSeen         int64
}

// Delta is what a group of finished connections adds to the store.
type Delta struct {
	Counts map[Dims]*Counts
	// Anomalies are the most recent anomalous connections, oldest first:
	// at least the last MaxAnomalies, at most twice as many (older ones
	// are let go in halves); Dropped counts those let go.
	Anomalies    []Anomaly
	MaxAnomalies int
	Dropped      int
	// Connections counts the connections added.
	Connections int
}

// NewDelta returns an empty delta keeping at most maxAnomalies anomalies
// (0 means DefaultMaxAnomalies).
func NewDelta(maxAnomalies int) *Delta {
	if maxAnomalies <= 0 {
		maxAnomalies = DefaultMaxAnomalies
	}
	return &Delta{Counts: map[Dims]*Counts{}, MaxAnomalies: maxAnomalies}
}

// Empty reports whether nothing was added.
func (d *Delta) Empty() bool { return d.Connections == 0 }

// Aggregator adds finished connections to deltas.
type Aggregator struct {
	// Geo resolves clients; nil means every client is unknown.
	Geo *geo.DB
}

// Add counts the finished connection c, judged r, shipped by the agent of
// node and policy, into d.
func (a *Aggregator) Add(d *Delta, node, policy string, c *flow.Conn, r classify.Result) {
	ts := c.Summary.FirstSeen
	if ts == 0 {
		ts = c.Summary.LastSeen
	}
	client := c.Client()
	dims := Dims{
		Bucket: BucketOf(ts), Node: node, Policy: policy,
		Port: c.ServerPort, IPVersion: c.IPVersion,
		Country: a.Geo.Country(client), ASN: a.Geo.ASN(client),
	}
	cnt := d.Counts[dims]
	if cnt == nil {
		cnt = &Counts{}
		d.Counts[dims] = cnt
	}
	cnt.Add(r)
	d.Connections++
	if !r.Anomalous() {
		return
	}
	if len(d.Anomalies) >= 2*d.MaxAnomalies {
		// Amortised: let the older half go at once.
		n := len(d.Anomalies) - d.MaxAnomalies + 1
		d.Anomalies = append(d.Anomalies[:0], d.Anomalies[n:]...)
		d.Dropped += n
	}
	d.Anomalies = append(d.Anomalies, Anomaly{
		Time: ts, Node: node, Policy: policy,
		Client: client, Server: c.Server(), ClientPort: c.ClientPort, Port: c.ServerPort,
		IPVersion: c.IPVersion, Country: dims.Country, ASN: dims.ASN,
		Stage: r.Stage, Tags: r.Tags, Signature: r.Signature,
		Packets: c.Summary.Packets, LastSeen: c.Summary.LastSeen,
	})
}
