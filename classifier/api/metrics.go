package api

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/connscope/connscope/classifier/chstore"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/ingest"
)

// Metrics are the classifier's Prometheus metrics, on a private registry.
// Labels are bounded: node, policy, stage, tag, signature, exclusion
// reason; never a client address or port. It implements ingest.Observer.
type Metrics struct {
	Registry   *prometheus.Registry
	stages     *prometheus.CounterVec
	tags       *prometheus.CounterVec
	signatures *prometheus.CounterVec
	excluded   *prometheus.CounterVec
}

// NewMetrics registers the metrics; stats, when set, is read at each
// scrape for the ingest counters.
func NewMetrics(stats func() ingest.Stats) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		stages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connscope_connections_classified_total",
			Help: "Connections classified, by node, policy and stage (Radar's names).",
		}, []string{"node", "policy", "stage"}),
		tags: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connscope_connection_tags_total",
			Help: "Classified connections carrying a tag, by node, policy and tag.",
		}, []string{"node", "policy", "tag"}),
		signatures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connscope_connection_signatures_total",
			Help: "Classified connections matching a signature (the paper's Table 1), by node, policy and signature.",
		}, []string{"node", "policy", "signature"}),
		excluded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connscope_connections_excluded_total",
			Help: "Connections excluded from classification, by node, policy and reason.",
		}, []string{"node", "policy", "reason"}),
	}
	reg.MustRegister(m.stages, m.tags, m.signatures, m.excluded,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if stats != nil {
		counter := func(name, help string, f func(ingest.Stats) uint64) {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
				func() float64 { return float64(f(stats())) }))
		}
		gauge := func(name, help string, f func(ingest.Stats) int) {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
				func() float64 { return float64(f(stats())) }))
		}
		counter("connscope_ingest_streams_total", "Ingest streams opened by agents.", func(s ingest.Stats) uint64 { return s.Streams })
		counter("connscope_ingest_auth_failures_total", "Ingest streams refused for their bearer token.", func(s ingest.Stats) uint64 { return s.AuthFailures })
		counter("connscope_ingest_batches_total", "Batches accepted and journaled.", func(s ingest.Stats) uint64 { return s.Batches })
		counter("connscope_ingest_duplicate_batches_total", "Batches acknowledged without storing (sent again after a lost ack).", func(s ingest.Stats) uint64 { return s.Duplicates })
		counter("connscope_ingest_rejected_batches_total", "Batches rejected as invalid (INVALID_ARGUMENT).", func(s ingest.Stats) uint64 { return s.Rejected })
		counter("connscope_ingest_records_total", "Packet records accepted.", func(s ingest.Stats) uint64 { return s.Records })
		counter("connscope_ingest_store_errors_total", "Batches refused because the store failed (UNAVAILABLE).", func(s ingest.Stats) uint64 { return s.StoreErrors })
		counter("connscope_commit_errors_total", "Failed commits of aggregates (retried).", func(s ingest.Stats) uint64 { return s.CommitErrors })
		gauge("connscope_open_connections", "Connections being assembled.", func(s ingest.Stats) int { return s.OpenConnections })
		gauge("connscope_journal_batches", "Batches in the journal (not yet fully counted).", func(s ingest.Stats) int { return s.JournalRows })
	}
	return m
}

// Classified counts one connection (ingest.Observer).
func (m *Metrics) Classified(node, policy string, r classify.Result) {
	if r.Excluded != classify.Included {
		m.excluded.WithLabelValues(node, policy, r.Excluded.String()).Inc()
		return
	}
	m.stages.WithLabelValues(node, policy, r.Stage.String()).Inc()
	for _, t := range r.Tags.Names() {
		m.tags.WithLabelValues(node, policy, t).Inc()
	}
	if r.Signature != classify.SigNone {
		m.signatures.WithLabelValues(node, policy, r.Signature.String()).Inc()
	}
}

var _ ingest.Observer = (*Metrics)(nil)

// NewWindowMetrics returns the registry of a classifier over ClickHouse:
// the Go and process collectors and what its replica did (stats, read at
// each scrape). The agents insert into ClickHouse directly there, so there
// are no ingest counters, and connections are counted per committed part.
func NewWindowMetrics(stats func() chstore.Stats) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	counter := func(name, help string, f func(chstore.Stats) float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return f(stats()) }))
	}
	counter("connscope_windows_classified_total", "Windows this replica saw completely committed.", func(s chstore.Stats) float64 { return float64(s.Windows) })
	counter("connscope_window_parts_total", "Window parts this replica classified and committed.", func(s chstore.Stats) float64 { return float64(s.Parts) })
	counter("connscope_window_packets_total", "Packet rows read from ClickHouse in committed parts (carried rows aside).", func(s chstore.Stats) float64 { return float64(s.Packets) })
	counter("connscope_window_duplicate_packets_total", "Packet rows inserted twice (a retried insert) and read once.", func(s chstore.Stats) float64 { return float64(s.Duplicates) })
	counter("connscope_window_connections_total", "Connections judged in committed parts.", func(s chstore.Stats) float64 { return float64(s.Connections) })
	counter("connscope_window_carried_connections_total", "Connections carried into the next window (last packet within the guard).", func(s chstore.Stats) float64 { return float64(s.Carried) })
	counter("connscope_window_busy_seconds_total", "Time spent classifying parts: reading, judging, writing.", func(s chstore.Stats) float64 { return s.Busy.Seconds() })
	return reg
}
