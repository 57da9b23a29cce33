// Package api is the classifier's HTTP API: Cloudflare Radar's
// tcp_resets_timeouts endpoints (same parameters, same response shapes,
// JSON or CSV), the same for tags and signatures, the recent anomalous
// connections, the known dimensions for filters, Prometheus metrics and
// health probes, and the dashboard when one is given.
//
//	GET /radar/tcp_resets_timeouts/summary            stage shares over the range
//	GET /radar/tcp_resets_timeouts/timeseries_groups  stage shares per interval
//	GET /api/v1/tags/summary, /api/v1/tags/timeseries_groups
//	GET /api/v1/signatures/summary, /api/v1/signatures/timeseries_groups
//	GET /api/v1/anomalies?limit=N                     newest first (1..1000, default 100)
//	GET /api/v1/dimensions                            nodes, policies, ports, countries, ASNs, IP versions
//	GET /metrics, /healthz, /readyz
//
// Parameters (Radar's): location (ISO country codes, comma-separated;
// "-CC" excludes), asn ("-N" excludes), dateRange (Nd or Nw, default 7d)
// or dateStart/dateEnd (RFC 3339), aggInterval (15m, 1h, 1d, 1w; by
// default from the span), format (JSON or CSV), name (the series' key,
// default summary_0 / serie_0); beyond Radar: node, port, ipVersion (IPv4,
// IPv6), policy, each a comma list. A bucket (15 minutes) belongs to a
// range when it starts within it. Shares are percentages of the classified
// (not excluded) connections, as strings with three decimals; a tag's
// share counts the connections carrying it, so tags do not add up to 100.
// Intervals without classified connections are left out of time series.
// Bad parameters give 400 with a message naming the parameter; unknown
// parameters are refused the same way.
//
// It reads the store; it does not ingest, classify or write.
package api

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/report"
	"github.com/connscope/connscope/classifier/store"
)

// Store is what the handler reads: the SQLite store (classifier/store)
// and the ClickHouse store (classifier/chstore) both satisfy it.
type Store interface {
	// Buckets returns the counts of the buckets f selects, in time order.
	Buckets(ctx context.Context, f store.Filter) ([]store.BucketCounts, error)
	// Anomalies returns up to limit recent anomalous connections, newest
	// first.
	Anomalies(ctx context.Context, f store.Filter, limit int) ([]aggregate.Anomaly, error)
	// Dimensions returns the values seen of each dimension.
	Dimensions(ctx context.Context) (store.Dimensions, error)
	// Ping checks that the store answers.
	Ping(ctx context.Context) error
	// LastUpdated is the time of the latest write (zero when unknown).
	LastUpdated() time.Time
}

// Config configures the handler.
type Config struct {
	// Store is read for every answer. Required.
	Store Store
	// Registry is served at /metrics; nil serves an empty registry.
	Registry *prometheus.Registry
	// Ready reports whether the service is ready (journal replayed,
	// listening); nil means ready once the store answers.
	Ready func() error
	// Dashboard, when set, is served at "/".
	Dashboard http.Handler
	// Logger logs server-side failures; nil discards.
	Logger *slog.Logger
	// Now is the clock for default date ranges; nil means time.Now.
	Now func() time.Time
}

// Handler serves the API.
type Handler struct {
	cfg Config
	mux *http.ServeMux
}

// New returns the API handler.
func New(cfg Config) *Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /radar/tcp_resets_timeouts/summary", h.stageSummary)
	h.mux.HandleFunc("GET /radar/tcp_resets_timeouts/timeseries_groups", h.stageSeries)
	h.mux.HandleFunc("GET /api/v1/tags/summary", h.breakdownSummary(tagKeys))
	h.mux.HandleFunc("GET /api/v1/tags/timeseries_groups", h.breakdownSeries(tagKeys))
	h.mux.HandleFunc("GET /api/v1/signatures/summary", h.breakdownSummary(sigKeys))
	h.mux.HandleFunc("GET /api/v1/signatures/timeseries_groups", h.breakdownSeries(sigKeys))
	h.mux.HandleFunc("GET /api/v1/anomalies", h.anomalies)
	h.mux.HandleFunc("GET /api/v1/dimensions", h.dimensions)
	h.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{Registry: cfg.Registry}))
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	h.mux.HandleFunc("GET /readyz", h.readyz)
	paths := map[string]bool{}
	for _, p := range []string{"/radar/tcp_resets_timeouts/summary", "/radar/tcp_resets_timeouts/timeseries_groups",
		"/api/v1/tags/summary", "/api/v1/tags/timeseries_groups", "/api/v1/signatures/summary",
		"/api/v1/signatures/timeseries_groups", "/api/v1/anomalies", "/api/v1/dimensions"} {
		paths[p] = true
	}
	notFound := func(w http.ResponseWriter, r *http.Request) {
		if paths[r.URL.Path] {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" "+r.URL.Path+": only GET is served")
			return
		}
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	}
	h.mux.HandleFunc("/radar/", notFound)
	h.mux.HandleFunc("/api/", notFound)
	if cfg.Dashboard != nil {
		h.mux.Handle("/", cfg.Dashboard)
	}
	return h
}

// ServeHTTP serves the API.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	err := h.cfg.Store.Ping(ctx)
	if err == nil && h.cfg.Ready != nil {
		err = h.cfg.Ready()
	}
	if err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

// errorBody is Radar's error shape.
type errorBody struct {
	Success  bool        `json:"success"`
	Errors   []errorItem `json:"errors"`
	Messages []any       `json:"messages"`
	Result   struct{}    `json:"result"`
}

type errorItem struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Errors: []errorItem{{Code: code, Message: msg}}, Messages: []any{}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// fail answers err: 400 for a bad parameter, 500 otherwise (logged).
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var bp *badParam
	if errors.As(err, &bp) {
		writeError(w, http.StatusBadRequest, bp.msg)
		return
	}
	h.cfg.Logger.Error("api request failed", "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "the classifier could not answer: "+err.Error())
}

func writeCSV(w http.ResponseWriter, rows [][]string) {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	cw := csv.NewWriter(w)
	cw.WriteAll(rows)
}

// ok wraps a result in Radar's envelope.
func ok(w http.ResponseWriter, result any) {
	writeJSON(w, http.StatusOK, struct {
		Success  bool  `json:"success"`
		Errors   []any `json:"errors"`
		Messages []any `json:"messages"`
		Result   any   `json:"result"`
	}{true, []any{}, []any{}, result})
}

// SeriesMeta is the meta object of a timeseries_groups response.
type SeriesMeta struct {
	report.RadarMeta
	AggInterval string `json:"aggInterval"`
}

func (h *Handler) meta(q *query) report.RadarMeta {
	lu := h.cfg.Store.LastUpdated()
	last := ""
	if !lu.IsZero() {
		last = lu.UTC().Format(time.RFC3339)
	}
	return report.RadarMeta{
		DateRange:      []report.DateRange{{StartTime: q.start.Format(time.RFC3339), EndTime: q.end.Format(time.RFC3339)}},
		LastUpdated:    last,
		Normalization:  "PERCENTAGE",
		ConfidenceInfo: report.ConfidenceInfo{Annotations: []any{}},
		Units:          report.PercentUnits(),
	}
}

// load parses a request's parameters and reads the buckets they select.
// A time series (series) is refused before the read when it would have
// more than maxPoints intervals; a summary has none.
func (h *Handler) load(w http.ResponseWriter, r *http.Request, series bool) (*query, []store.BucketCounts, bool) {
	q, err := parse(r.URL.Query(), h.cfg.Now())
	if err == nil && series {
		if span := q.end.Sub(q.start); span/q.interval.d > maxPoints {
			err = bad("aggInterval", "%s over %s gives more than %d points: choose a longer interval", q.interval.param, span, maxPoints)
		}
	}
	if err != nil {
		h.fail(w, r, err)
		return nil, nil, false
	}
	bs, err := h.cfg.Store.Buckets(r.Context(), q.filter)
	if err != nil {
		h.fail(w, r, err)
		return nil, nil, false
	}
	return q, bs, true
}

// summaryOf turns counts into a report.Summary (for report's shapes).
func summaryOf(c *aggregate.Counts) report.Summary {
	var s report.Summary
	for i, n := range c.Stages {
		s.Stages[i] = int(n)
	}
	s.Judged = int(c.Classified())
	for i, n := range c.Tags {
		s.Tags[i] = int(n)
	}
	for i, n := range c.Sigs {
		s.Sigs[i] = int(n)
	}
	for i, n := range c.Excluded {
		s.Exclude[i] = int(n)
	}
	return s
}

func total(bs []store.BucketCounts) aggregate.Counts {
	var c aggregate.Counts
	for i := range bs {
		c.Merge(&bs[i].Counts)
	}
	return c
}

func key(q *query, def string) string {
	if q.name != "" {
		return q.name
	}
	return def
}

// stageSummary is Radar's summary: report.Radar's response with the
// query's date range.
func (h *Handler) stageSummary(w http.ResponseWriter, r *http.Request) {
	q, bs, good := h.load(w, r, false)
	if !good {
		return
	}
	c := total(bs)
	s := summaryOf(&c)
	shares := report.Shares(&s)
	if q.csv {
		writeCSV(w, [][]string{stageNames(), {shares.PostSYN, shares.PostACK, shares.PostPSH, shares.LaterInFlow, shares.NoMatch}})
		return
	}
	res := report.Radar(&s, h.cfg.Now()).Result
	res.Meta = h.meta(q)
	if q.name == "" {
		ok(w, res)
		return
	}
	// A named series: the same object, summary_0 renamed.
	ok(w, renamed(res, "summary_0", q.name))
}

// renamed re-encodes v with one key renamed.
func renamed(v any, from, to string) map[string]json.RawMessage {
	b, _ := json.Marshal(v)
	m := map[string]json.RawMessage{}
	json.Unmarshal(b, &m)
	m[to] = m[from]
	delete(m, from)
	return m
}

func stageNames() []string {
	out := make([]string, 0, len(classify.Stages))
	for _, st := range classify.Stages {
		out = append(out, st.String())
	}
	return out
}

// groups sums buckets into the query's intervals, in time order, leaving
// out intervals without classified connections.
func groups(q *query, bs []store.BucketCounts) ([]int64, []aggregate.Counts) {
	var ts []int64
	var cs []aggregate.Counts
	for i := range bs {
		start := q.interval.start(bs[i].Bucket)
		if len(ts) == 0 || ts[len(ts)-1] != start {
			ts = append(ts, start)
			cs = append(cs, aggregate.Counts{})
		}
		cs[len(cs)-1].Merge(&bs[i].Counts)
	}
	outT, outC := ts[:0], cs[:0]
	for i := range ts {
		if cs[i].Classified() > 0 {
			outT, outC = append(outT, ts[i]), append(outC, cs[i])
		}
	}
	return outT, outC
}

func pct(n, of int64) string {
	if of == 0 {
		return report.Percent(0)
	}
	return report.Percent(100 * float64(n) / float64(of))
}

func stamps(ts []int64) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = time.Unix(t, 0).UTC().Format(time.RFC3339)
	}
	return out
}

// series renders a timeseries_groups answer: for each key, the share per
// interval.
func (h *Handler) series(w http.ResponseWriter, q *query, keys []string, value func(c *aggregate.Counts, i int) int64, bs []store.BucketCounts) {
	ts, cs := groups(q, bs)
	cols := make([][]string, len(keys))
	for k := range keys {
		cols[k] = make([]string, len(ts))
		for i := range cs {
			cols[k][i] = pct(value(&cs[i], k), cs[i].Classified())
		}
	}
	times := stamps(ts)
	if q.csv {
		rows := [][]string{append([]string{"timestamp"}, keys...)}
		for i := range times {
			row := []string{times[i]}
			for k := range keys {
				row = append(row, cols[k][i])
			}
			rows = append(rows, row)
		}
		writeCSV(w, rows)
		return
	}
	serie := map[string]any{"timestamps": times}
	for k, name := range keys {
		serie[name] = cols[k]
	}
	ok(w, map[string]any{
		"meta":            SeriesMeta{RadarMeta: h.meta(q), AggInterval: q.interval.radar},
		key(q, "serie_0"): serie,
	})
}

func (h *Handler) stageSeries(w http.ResponseWriter, r *http.Request) {
	q, bs, good := h.load(w, r, true)
	if !good {
		return
	}
	h.series(w, q, stageNames(), func(c *aggregate.Counts, i int) int64 { return c.Stages[classify.Stages[i]] }, bs)
}

// keySet names the keys of a breakdown and reads their counts.
type keySet struct {
	names func() []string
	count func(c *aggregate.Counts, i int) int64
}

var tagKeys = keySet{
	names: func() []string {
		out := []string{}
		for t := classify.Tag(0); t < classify.NumTags; t++ {
			out = append(out, t.String())
		}
		return out
	},
	count: func(c *aggregate.Counts, i int) int64 { return c.Tags[i] },
}

// sigKeys are the 19 signatures (the empty signature is not one).
var sigKeys = keySet{
	names: func() []string {
		out := []string{}
		for s := classify.SigNone + 1; s < classify.NumSignatures; s++ {
			out = append(out, s.String())
		}
		return out
	},
	count: func(c *aggregate.Counts, i int) int64 { return c.Sigs[classify.SigNone+1+classify.Signature(i)] },
}

// BreakdownResult is the result of /api/v1/{tags,signatures}/summary.
type BreakdownResult struct {
	Meta report.RadarMeta `json:"meta"`
	// Summary0 holds percentage strings of classified connections by key.
	Summary0 map[string]string `json:"summary_0"`
	// Counts holds the connection counts by key.
	Counts map[string]int64 `json:"counts"`
	// Connections are the totals the shares are of.
	Connections report.Counts `json:"connections"`
}

func (h *Handler) breakdownSummary(ks keySet) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, bs, good := h.load(w, r, false)
		if !good {
			return
		}
		c := total(bs)
		names := ks.names()
		classified := c.Classified()
		res := BreakdownResult{Meta: h.meta(q), Summary0: map[string]string{}, Counts: map[string]int64{}}
		vals := make([]string, len(names))
		for i, n := range names {
			vals[i] = pct(ks.count(&c, i), classified)
			res.Summary0[n], res.Counts[n] = vals[i], ks.count(&c, i)
		}
		if q.csv {
			writeCSV(w, [][]string{names, vals})
			return
		}
		s := summaryOf(&c)
		res.Connections = report.Counts{Classified: s.Judged, Excluded: s.Excluded(), ByStage: map[string]int{}}
		for _, st := range classify.Stages {
			res.Connections.ByStage[st.String()] = s.Stages[st]
		}
		if q.name != "" {
			ok(w, renamed(res, "summary_0", q.name))
			return
		}
		ok(w, res)
	}
}

func (h *Handler) breakdownSeries(ks keySet) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, bs, good := h.load(w, r, true)
		if !good {
			return
		}
		h.series(w, q, ks.names(), ks.count, bs)
	}
}

// Anomaly is one anomalous connection as /api/v1/anomalies lists it.
type Anomaly struct {
	Time       string   `json:"time"`
	Client     string   `json:"client"`
	ClientPort uint16   `json:"client_port"`
	Server     string   `json:"server"`
	ServerPort uint16   `json:"server_port"`
	IPVersion  uint8    `json:"ip_version"`
	Node       string   `json:"node"`
	Policy     string   `json:"policy"`
	Country    string   `json:"country"`
	ASN        uint32   `json:"asn"`
	Stage      string   `json:"stage"`
	Tags       []string `json:"tags"`
	Signature  string   `json:"signature"`
	Packets    int      `json:"packets"`
}

func (h *Handler) anomalies(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q, err := parse(v, h.cfg.Now(), "limit")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	limit := 100
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			h.fail(w, r, bad("limit", "%q is not a number from 1 to 1000", l))
			return
		}
		limit = n
	}
	as, err := h.cfg.Store.Anomalies(r.Context(), q.filter, limit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]Anomaly, len(as))
	for i, a := range as {
		out[i] = Anomaly{
			Time: time.Unix(0, a.Time).UTC().Format(time.RFC3339Nano), Client: a.Client.String(), ClientPort: a.ClientPort,
			Server: a.Server.String(), ServerPort: a.Port, IPVersion: a.IPVersion, Node: a.Node, Policy: a.Policy,
			Country: a.Country, ASN: a.ASN, Stage: a.Stage.String(), Tags: a.Tags.Names(), Signature: a.Signature.String(),
			Packets: a.Packets,
		}
	}
	if q.csv {
		rows := [][]string{{"time", "client", "client_port", "server", "server_port", "ip_version", "node", "policy", "country", "asn", "stage", "tags", "signature", "packets"}}
		for _, a := range out {
			tags := ""
			for i, t := range a.Tags {
				if i > 0 {
					tags += " "
				}
				tags += t
			}
			rows = append(rows, []string{a.Time, a.Client, strconv.Itoa(int(a.ClientPort)), a.Server, strconv.Itoa(int(a.ServerPort)),
				strconv.Itoa(int(a.IPVersion)), a.Node, a.Policy, a.Country, strconv.FormatUint(uint64(a.ASN), 10), a.Stage, tags, a.Signature, strconv.Itoa(a.Packets)})
		}
		writeCSV(w, rows)
		return
	}
	ok(w, map[string]any{"meta": h.meta(q), "connections": out})
}

// Dimensions is the result of /api/v1/dimensions: the values the counts
// hold, for filters (unknown countries and ASN 0 are left out: they
// cannot be asked for).
type Dimensions struct {
	Nodes      []string `json:"nodes"`
	Policies   []string `json:"policies"`
	Ports      []uint16 `json:"ports"`
	Countries  []string `json:"countries"`
	ASNs       []uint32 `json:"asns"`
	IPVersions []string `json:"ipVersions"`
	// First and Last are the first and last buckets with data ("" when none).
	First string `json:"first"`
	Last  string `json:"last"`
}

func (h *Handler) dimensions(w http.ResponseWriter, r *http.Request) {
	if len(r.URL.Query()) > 0 {
		for k := range r.URL.Query() {
			h.fail(w, r, bad(k, "unknown parameter: /api/v1/dimensions takes none"))
			return
		}
	}
	d, err := h.cfg.Store.Dimensions(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := Dimensions{Nodes: d.Nodes, Policies: d.Policies, Ports: d.Ports, Countries: []string{}, ASNs: []uint32{}, IPVersions: []string{}}
	for _, c := range d.Countries {
		if countryRE.MatchString(c) {
			out.Countries = append(out.Countries, c)
		}
	}
	for _, a := range d.ASNs {
		if a != 0 {
			out.ASNs = append(out.ASNs, a)
		}
	}
	for _, v := range d.IPVersions {
		out.IPVersions = append(out.IPVersions, "IPv"+strconv.Itoa(int(v)))
	}
	if !d.First.IsZero() {
		out.First, out.Last = d.First.Format(time.RFC3339), d.Last.Format(time.RFC3339)
	}
	ok(w, out)
}
