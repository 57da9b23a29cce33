package dashboard

// FIXTURE: a stand-in for the classifier service's HTTP API until it lands.
//
// fixtureAPI implements the contract the dashboard is built against
// (/radar/tcp_resets_timeouts/{summary,timeseries_groups},
// /api/v1/{tags,signatures}/{summary,timeseries_groups}, /api/v1/anomalies,
// /api/v1/dimensions) with deterministic, realistic data: a scanner-heavy
// Post-SYN share, diurnal Later-in-flow, and an incident on node-b (a
// middlebox dropping after the SNI: Post-PSH up for the last two days).
// edge-7 is a node with no data, for the empty states.
//
// To run the browser test against the real service instead, replace
// newFixtureAPI in the browser test with the service's handler (fed with
// known data) and keep the API interface below (requests seen, a way to
// make one endpoint fail).

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// API is what the browser test needs from the service under test.
type API interface {
	http.Handler
	// Requests returns the request URIs (path?query) seen so far.
	Requests() []string
	// Fail makes path answer with an error until called with status 0.
	Fail(path string, status int)
}

var fixtureStages = []string{"post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"}

var fixtureDims = struct {
	Nodes     []string `json:"nodes"`
	Policies  []string `json:"policies"`
	Ports     []int    `json:"ports"`
	Countries []string `json:"countries"`
	ASNs      []int    `json:"asns"`
}{
	Nodes:     []string{"node-a", "node-b", "node-c", "edge-7"},
	Policies:  []string{"web-edge", "api-ingress"},
	Ports:     []int{80, 443, 8443},
	Countries: []string{"US", "DE", "IR", "CN", "RU", "BR", "IN", "GB"},
	ASNs:      []int{13335, 3320, 58224, 4134, 12389, 28573, 55836, 16509},
}

// fixtureNow is the end of the fixture's data, fixed for reproducibility.
var fixtureNow = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)

type fixtureAPI struct {
	mu       sync.Mutex
	requests []string
	fail     map[string]int
}

func newFixtureAPI() *fixtureAPI { return &fixtureAPI{fail: map[string]int{}} }

func (f *fixtureAPI) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

func (f *fixtureAPI) Fail(path string, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if status == 0 {
		delete(f.fail, path)
	} else {
		f.fail[path] = status
	}
}

// fixtureQuery is a parsed, validated set of the contract's filters.
type fixtureQuery struct {
	location, asn, node, port, ipVersion, policy string
	days                                         int
	step                                         time.Duration
}

func parseFixtureQuery(r *http.Request) (fixtureQuery, error) {
	v := r.URL.Query()
	q := fixtureQuery{
		location: v.Get("location"), asn: v.Get("asn"), node: v.Get("node"), port: v.Get("port"),
		ipVersion: v.Get("ipVersion"), policy: v.Get("policy"), days: 7, step: time.Hour,
	}
	if dr := v.Get("dateRange"); dr != "" {
		n, err := strconv.Atoi(strings.TrimSuffix(dr, "d"))
		if err != nil || !strings.HasSuffix(dr, "d") || n < 1 || n > 90 {
			return q, fmt.Errorf("dateRange: %q is not a number of days such as 7d", dr)
		}
		q.days = n
	}
	switch v.Get("aggInterval") {
	case "", "1h":
	case "15m":
		q.step = 15 * time.Minute
	case "1d":
		q.step = 24 * time.Hour
	case "1w":
		q.step = 7 * 24 * time.Hour
	default:
		return q, fmt.Errorf("aggInterval: %q is not one of 15m, 1h, 1d, 1w", v.Get("aggInterval"))
	}
	if q.ipVersion != "" && q.ipVersion != "IPv4" && q.ipVersion != "IPv6" {
		return q, fmt.Errorf("ipVersion: %q is not IPv4 or IPv6", q.ipVersion)
	}
	return q, nil
}

// empty reports whether the filters select nothing in the fixture.
func (q fixtureQuery) empty() bool { return q.node == "edge-7" }

// noise is a deterministic value in [-1, 1) for key.
func noise(key string) float64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return float64(h.Sum64()%20000)/10000 - 1
}

// shares are the stage shares (percent, summing to 100) at t under q.
func (q fixtureQuery) shares(t time.Time) map[string]float64 {
	hour := float64(t.Hour()) + float64(t.Minute())/60
	diurnal := math.Sin((hour - 8) / 24 * 2 * math.Pi) // peaks mid-afternoon UTC
	key := q.location + q.asn + q.node + q.port + q.ipVersion + q.policy + t.Format(time.RFC3339)
	syn := 11 + 2.5*noise("syn"+key) + 1.5*math.Sin(float64(t.Unix())/(5*3600))
	ack := 2.4 + 0.5*noise("ack"+key)
	psh := 3.6 + 0.6*noise("psh"+key)
	later := 8.5 + 3*diurnal + 0.8*noise("later"+key)
	switch q.location {
	case "US":
		syn += 6 // scanners
	case "IR":
		psh += 9
		ack += 2
	case "CN":
		ack += 4
		psh += 3
	case "-US":
		syn -= 2
	}
	if q.node == "node-b" || q.node == "" {
		// A middlebox on node-b's path drops after the SNI since two days ago.
		if fixtureNow.Sub(t) < 48*time.Hour {
			boost := 14.0
			if q.node == "" {
				boost = 4.5 // node-b is one of three nodes with data
			}
			psh += boost * (0.85 + 0.15*noise("inc"+key))
		}
	}
	if q.port == "80" {
		later -= 3
		psh += 1
	}
	if q.ipVersion == "IPv6" {
		syn *= 0.4
	}
	out := map[string]float64{
		"post_syn": math.Max(syn, 0.1), "post_ack": math.Max(ack, 0.1),
		"post_psh": math.Max(psh, 0.1), "later_in_flow": math.Max(later, 0.1),
	}
	sum := 0.0
	for _, v := range out {
		sum += v
	}
	out["no_match"] = 100 - sum
	return out
}

// buckets returns the bucket start times of q's date range.
func (q fixtureQuery) buckets() []time.Time {
	if q.empty() {
		return nil
	}
	end := fixtureNow.Truncate(q.step)
	if q.step == 7*24*time.Hour {
		end = fixtureNow.Truncate(24 * time.Hour)
	}
	start := fixtureNow.Add(-time.Duration(q.days) * 24 * time.Hour)
	var out []time.Time
	for t := end; !t.Before(start); t = t.Add(-q.step) {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// summary averages the shares over q's date range (every bucket weighs the
// same in the fixture).
func (q fixtureQuery) summary() map[string]float64 {
	out := map[string]float64{}
	if q.empty() {
		for _, s := range fixtureStages {
			out[s] = 0
		}
		return out
	}
	// Average at hourly resolution, whatever the interval.
	hq := q
	hq.step = time.Hour
	bs := hq.buckets()
	for _, t := range bs {
		for k, v := range hq.shares(t) {
			out[k] += v / float64(len(bs))
		}
	}
	return out
}

// connections is the number of classified connections in q's range.
func (q fixtureQuery) connections() int {
	if q.empty() {
		return 0
	}
	n := 52000 * q.days
	if q.node != "" {
		n /= 3
	}
	if q.location != "" && !strings.HasPrefix(q.location, "-") {
		n /= 8
	}
	return n
}

// FixtureStageShares is what the page should show in its stage cards for
// the given query string (used by the browser test's assertions).
func fixtureStageShares(rawQuery string) map[string]float64 {
	r, _ := http.NewRequest(http.MethodGet, "/?"+rawQuery, nil)
	q, err := parseFixtureQuery(r)
	if err != nil {
		panic(err)
	}
	return q.summary()
}

var fixtureTagWeights = []struct {
	tag   string
	share func(s map[string]float64) float64 // percent of classified connections
}{
	{"timeout", func(s map[string]float64) float64 { return 0.55*s["post_syn"] + 0.3*s["post_ack"] + 0.25*s["post_psh"] }},
	{"reset", func(s map[string]float64) float64 {
		return 0.45*s["post_syn"] + 0.7*s["post_ack"] + 0.75*s["post_psh"] + s["later_in_flow"]
	}},
	{"fin", func(s map[string]float64) float64 { return 0.35 * s["later_in_flow"] }},
	{"single_rst", func(s map[string]float64) float64 { return 0.3*s["post_syn"] + 0.3*s["post_psh"] }},
	{"multiple_rsts", func(s map[string]float64) float64 { return 0.3 * s["post_psh"] }},
	{"acknumsame", func(s map[string]float64) float64 { return 0.12 * s["post_psh"] }},
	{"acknumsame0", func(s map[string]float64) float64 { return 0.03 * s["post_psh"] }},
	{"acknumdiff", func(s map[string]float64) float64 { return 0.1 * s["post_psh"] }},
	{"acknumdiff0", func(s map[string]float64) float64 { return 0.05 * s["post_psh"] }},
	{"single_rstack", func(s map[string]float64) float64 {
		return 0.15*s["post_syn"] + 0.5*s["post_ack"] + 0.6*s["later_in_flow"]
	}},
	{"multiple_rstacks", func(s map[string]float64) float64 { return 0.1 * s["later_in_flow"] }},
	{"rst_and_rstacks", func(s map[string]float64) float64 { return 0.15 * s["post_psh"] }},
	{"zmap", func(s map[string]float64) float64 { return 0.22 * s["post_syn"] }},
	{"masscan", func(s map[string]float64) float64 { return 0.09 * s["post_syn"] }},
	{"nmap", func(s map[string]float64) float64 { return 0.04 * s["post_syn"] }},
	{"ttl_jump", func(s map[string]float64) float64 { return 0.2 * s["post_psh"] }},
	{"ipid_jump", func(s map[string]float64) float64 { return 0.12 * s["post_psh"] }},
}

var fixtureSignatureWeights = []struct {
	sig   string
	stage string
	frac  float64 // of the stage's connections
}{
	{"SYN → ∅", "post_syn", 0.52}, {"SYN → RST", "post_syn", 0.28}, {"SYN → RST+ACK", "post_syn", 0.14}, {"SYN → RST; RST+ACK", "post_syn", 0.02},
	{"SYN; ACK → ∅", "post_ack", 0.3}, {"SYN; ACK → RST", "post_ack", 0.22}, {"SYN; ACK → RST; RST", "post_ack", 0.06},
	{"SYN; ACK → RST+ACK", "post_ack", 0.3}, {"SYN; ACK → RST+ACK; RST+ACK", "post_ack", 0.04},
	{"PSH+ACK → ∅", "post_psh", 0.25}, {"PSH+ACK → RST", "post_psh", 0.2}, {"PSH+ACK → RST+ACK", "post_psh", 0.12},
	{"PSH+ACK → RST; RST+ACK", "post_psh", 0.1}, {"PSH+ACK → RST+ACK; RST+ACK", "post_psh", 0.04},
	{"PSH+ACK → RST = RST", "post_psh", 0.11}, {"PSH+ACK → RST ≠ RST", "post_psh", 0.06}, {"PSH+ACK → RST; RST0", "post_psh", 0.04},
	{"PSH+ACK; Data → RST", "later_in_flow", 0.38}, {"PSH+ACK; Data → RST+ACK", "later_in_flow", 0.5},
}

type fixtureConn struct {
	Time       string   `json:"time"`
	Client     string   `json:"client"`
	ServerPort int      `json:"server_port"`
	Node       string   `json:"node"`
	Country    string   `json:"country"`
	ASN        int      `json:"asn"`
	Stage      string   `json:"stage"`
	Tags       []string `json:"tags"`
	Signature  string   `json:"signature"`
	ipVersion  string
	policy     string
}

// fixtureConns is a deterministic pool of recent anomalous connections,
// newest first.
var fixtureConns = func() []fixtureConn {
	asnOf := map[string]int{"US": 16509, "DE": 3320, "IR": 58224, "CN": 4134, "RU": 12389, "BR": 28573, "IN": 55836, "GB": 13335}
	var out []fixtureConn
	t := fixtureNow.Add(-17 * time.Second)
	for i := 0; i < 900; i++ {
		k := strconv.Itoa(i)
		pick := func(salt string, n int) int { return int((noise(salt+k) + 1) / 2 * float64(n)) }
		cc := fixtureDims.Countries[pick("cc", len(fixtureDims.Countries))]
		node := fixtureDims.Nodes[pick("node", 3)]
		port := fixtureDims.Ports[pick("port", len(fixtureDims.Ports))]
		policy := "web-edge"
		if port == 8443 {
			policy = "api-ingress"
		}
		var c fixtureConn
		switch r := pick("stage", 100); {
		case r < 38 || (node == "node-b" && r < 40):
			c.Stage, c.Signature = "post_syn", []string{"SYN → ∅", "SYN → RST", "SYN → RST+ACK"}[pick("sig", 3)]
			c.Tags = map[string][]string{"SYN → ∅": {"timeout"}, "SYN → RST": {"reset", "single_rst"}, "SYN → RST+ACK": {"reset", "single_rstack"}}[c.Signature]
			if s := pick("scan", 10); s < 4 {
				c.Tags = append(c.Tags, []string{"zmap", "zmap", "masscan", "nmap"}[s])
			}
		case r < 50:
			c.Stage, c.Signature = "post_ack", []string{"SYN; ACK → ∅", "SYN; ACK → RST", "SYN; ACK → RST+ACK"}[pick("sig", 3)]
			c.Tags = map[string][]string{"SYN; ACK → ∅": {"timeout"}, "SYN; ACK → RST": {"reset", "single_rst"}, "SYN; ACK → RST+ACK": {"reset", "single_rstack"}}[c.Signature]
		case r < 78 || node == "node-b":
			c.Stage, c.Signature = "post_psh", []string{"PSH+ACK → RST = RST", "PSH+ACK → RST", "PSH+ACK → ∅", "PSH+ACK → RST; RST+ACK"}[pick("sig", 4)]
			c.Tags = map[string][]string{
				"PSH+ACK → RST = RST": {"reset", "multiple_rsts", "acknumsame", "ttl_jump"}, "PSH+ACK → RST": {"reset", "single_rst", "ipid_jump"},
				"PSH+ACK → ∅": {"timeout"}, "PSH+ACK → RST; RST+ACK": {"reset", "rst_and_rstacks"},
			}[c.Signature]
		default:
			c.Stage, c.Signature, c.Tags = "later_in_flow", "PSH+ACK; Data → RST+ACK", []string{"reset", "single_rstack"}
		}
		c.Time = t.Format(time.RFC3339)
		c.Node, c.Country, c.ASN, c.ServerPort, c.policy = node, cc, asnOf[cc], port, policy
		c.ipVersion = "IPv4"
		if pick("v6", 10) < 2 {
			c.ipVersion = "IPv6"
			c.Client = fmt.Sprintf("[2001:db8:%x::%x]:%d", pick("a", 4096), pick("b", 65535), 32768+pick("p", 28000))
		} else {
			c.Client = fmt.Sprintf("%d.%d.%d.%d:%d", 11+pick("a", 200), pick("b", 255), pick("c", 255), 1+pick("d", 253), 32768+pick("p", 28000))
		}
		out = append(out, c)
		t = t.Add(-time.Duration(3+pick("gap", 90)) * time.Second)
	}
	return out
}()

func matches(filter, value string) bool {
	switch {
	case filter == "":
		return true
	case strings.HasPrefix(filter, "-"):
		return filter[1:] != value
	default:
		return filter == value
	}
}

func (q fixtureQuery) anomalies(limit int) []fixtureConn {
	out := []fixtureConn{}
	if q.empty() {
		return out
	}
	for _, c := range fixtureConns {
		if len(out) == limit {
			break
		}
		if matches(q.location, c.Country) && matches(q.asn, strconv.Itoa(c.ASN)) && matches(q.node, c.Node) &&
			matches(q.port, strconv.Itoa(c.ServerPort)) && matches(q.ipVersion, c.ipVersion) && matches(q.policy, c.policy) {
			out = append(out, c)
		}
	}
	return out
}

func pct(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }

func (f *fixtureAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.URL.RequestURI())
	status := f.fail[r.URL.Path]
	f.mu.Unlock()
	if status != 0 {
		writeJSON(w, status, map[string]any{"success": false, "errors": []any{map[string]any{"code": status, "message": "fixture: injected failure"}}, "result": map[string]any{}})
		return
	}
	q, err := parseFixtureQuery(r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"success": false, "errors": []any{map[string]any{"code": 400, "message": err.Error()}}, "result": map[string]any{}})
		return
	}
	bs := q.buckets()
	start := fixtureNow.Add(-time.Duration(q.days) * 24 * time.Hour)
	meta := map[string]any{
		"dateRange":     []any{map[string]string{"startTime": start.Format(time.RFC3339), "endTime": fixtureNow.Format(time.RFC3339)}},
		"aggInterval":   r.URL.Query().Get("aggInterval"),
		"lastUpdated":   fixtureNow.Format(time.RFC3339),
		"normalization": "PERCENTAGE",
	}
	ok := func(result map[string]any) {
		result["meta"] = meta
		writeJSON(w, http.StatusOK, map[string]any{"success": true, "errors": []any{}, "result": result})
	}
	timestamps := make([]string, len(bs))
	for i, t := range bs {
		timestamps[i] = t.Format(time.RFC3339)
	}
	// breakdownOf derives the tag or signature shares from stage shares.
	breakdownOf := func(tags bool, s map[string]float64) map[string]float64 {
		out := map[string]float64{}
		if tags {
			for _, tw := range fixtureTagWeights {
				out[tw.tag] = tw.share(s)
			}
		} else {
			for _, sw := range fixtureSignatureWeights {
				out[sw.sig] = sw.frac * s[sw.stage]
			}
		}
		return out
	}
	// breakdown returns shares and counts of the tags or signatures.
	breakdown := func(tags bool) (map[string]string, map[string]int) {
		shares, counts := map[string]string{}, map[string]int{}
		if q.empty() {
			return shares, counts
		}
		n := q.connections()
		for k, v := range breakdownOf(tags, q.summary()) {
			shares[k] = pct(v)
			counts[k] = int(v / 100 * float64(n))
		}
		return shares, counts
	}
	series := func(keys []string, at func(t time.Time) map[string]float64) map[string]any {
		serie := map[string]any{"timestamps": timestamps}
		cols := map[string][]string{}
		for _, k := range keys {
			cols[k] = make([]string, 0, len(bs))
		}
		for _, t := range bs {
			v := at(t)
			for _, k := range keys {
				cols[k] = append(cols[k], pct(v[k]))
			}
		}
		for k, c := range cols {
			serie[k] = c
		}
		return serie
	}
	switch r.URL.Path {
	case "/radar/tcp_resets_timeouts/summary":
		s := q.summary()
		out := map[string]string{}
		for _, k := range fixtureStages {
			out[k] = pct(s[k])
		}
		ok(map[string]any{"summary_0": out})
	case "/radar/tcp_resets_timeouts/timeseries_groups":
		ok(map[string]any{"serie_0": series(fixtureStages, q.shares)})
	case "/api/v1/tags/summary":
		shares, counts := breakdown(true)
		ok(map[string]any{"summary_0": shares, "counts": counts})
	case "/api/v1/signatures/summary":
		shares, counts := breakdown(false)
		ok(map[string]any{"summary_0": shares, "counts": counts})
	case "/api/v1/tags/timeseries_groups", "/api/v1/signatures/timeseries_groups":
		tags := strings.Contains(r.URL.Path, "/tags/")
		shares, _ := breakdown(tags)
		keys := make([]string, 0, len(shares))
		for k := range shares {
			keys = append(keys, k)
		}
		ok(map[string]any{"serie_0": series(keys, func(t time.Time) map[string]float64 {
			return breakdownOf(tags, q.shares(t))
		})})
	case "/api/v1/anomalies":
		limit := 100
		if l := r.URL.Query().Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil || n < 1 || n > 1000 {
				writeJSON(w, http.StatusBadRequest, map[string]any{"success": false, "errors": []any{map[string]any{"code": 400, "message": "limit: want 1..1000"}}, "result": map[string]any{}})
				return
			}
			limit = n
		}
		ok(map[string]any{"connections": q.anomalies(limit)})
	case "/api/v1/dimensions":
		ok(map[string]any{"nodes": fixtureDims.Nodes, "policies": fixtureDims.Policies, "ports": fixtureDims.Ports, "countries": fixtureDims.Countries, "asns": fixtureDims.ASNs})
	default:
		writeJSON(w, http.StatusNotFound, map[string]any{"success": false, "errors": []any{map[string]any{"code": 404, "message": "no such endpoint"}}, "result": map[string]any{}})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
