package api_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/api"
	"github.com/connscope/connscope/classifier/chstore"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/ingest"
	"github.com/connscope/connscope/classifier/store"
)

var now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// Radar's response shapes, mirrored.
type radarMeta struct {
	DateRange []struct {
		StartTime string `json:"startTime"`
		EndTime   string `json:"endTime"`
	} `json:"dateRange"`
	LastUpdated    string `json:"lastUpdated"`
	Normalization  string `json:"normalization"`
	AggInterval    string `json:"aggInterval"`
	ConfidenceInfo *struct {
		Level       *int  `json:"level"`
		Annotations []any `json:"annotations"`
	} `json:"confidenceInfo"`
}

type stages struct {
	PostSYN     string `json:"post_syn"`
	PostACK     string `json:"post_ack"`
	PostPSH     string `json:"post_psh"`
	LaterInFlow string `json:"later_in_flow"`
	NoMatch     string `json:"no_match"`
}

type summaryResp struct {
	Success  bool  `json:"success"`
	Errors   []any `json:"errors"`
	Messages []any `json:"messages"`
	Result   struct {
		Meta     radarMeta `json:"meta"`
		Summary0 stages    `json:"summary_0"`
	} `json:"result"`
}

type seriesResp struct {
	Success bool `json:"success"`
	Result  struct {
		Meta   radarMeta `json:"meta"`
		Serie0 struct {
			Timestamps  []string `json:"timestamps"`
			PostSYN     []string `json:"post_syn"`
			PostACK     []string `json:"post_ack"`
			PostPSH     []string `json:"post_psh"`
			LaterInFlow []string `json:"later_in_flow"`
			NoMatch     []string `json:"no_match"`
		} `json:"serie_0"`
	} `json:"result"`
}

type errorResp struct {
	Success bool `json:"success"`
	Errors  []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

var (
	b1 = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	b2 = b1.Add(15 * time.Minute)
	b3 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC) // a Sunday
)

// known writes:
//
//	b1 DE AS64500 n1:443 IPv4 policy p: post_syn 1 (timeout, SYN → ∅), post_ack 1 (reset, single_rst),
//	   post_psh 2 (reset, single_rst, PSH+ACK → RST), no_match 4; 1 excluded (no_syn)
//	b2 US AS64501 n2:80 IPv6 policy q: post_syn 2 (reset, zmap, SYN → RST), no_match 2
//	b3 DE AS64500 n1:443 IPv4 policy p: no_match 10
func known(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "c.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d := aggregate.NewDelta(0)
	add := func(at time.Time, cc string, asn uint32, node string, port uint16, ipv uint8, policy string, r classify.Result, n int) {
		k := aggregate.Dims{Bucket: at.Unix(), Node: node, Policy: policy, Port: port, IPVersion: ipv, Country: cc, ASN: asn}
		c := d.Counts[k]
		if c == nil {
			c = &aggregate.Counts{}
			d.Counts[k] = c
		}
		for range n {
			c.Add(r)
			d.Connections++
		}
	}
	tag := func(ts ...classify.Tag) classify.Tags {
		var out classify.Tags
		for _, t := range ts {
			out |= 1 << t
		}
		return out
	}
	de := func(at time.Time, r classify.Result, n int) { add(at, "DE", 64500, "n1", 443, 4, "p", r, n) }
	de(b1, classify.Result{Stage: classify.PostSYN, Tags: tag(classify.TagTimeout), Signature: classify.SigSYNTimeout}, 1)
	de(b1, classify.Result{Stage: classify.PostACK, Tags: tag(classify.TagReset, classify.TagSingleRST), Signature: classify.SigACKRST}, 1)
	de(b1, classify.Result{Stage: classify.PostPSH, Tags: tag(classify.TagReset, classify.TagSingleRST), Signature: classify.SigPSHRST}, 2)
	de(b1, classify.Result{Stage: classify.NoMatch}, 4)
	de(b1, classify.Result{Excluded: classify.NoSYN}, 1)
	us := func(r classify.Result, n int) { add(b2, "US", 64501, "n2", 80, 6, "q", r, n) }
	us(classify.Result{Stage: classify.PostSYN, Tags: tag(classify.TagReset, classify.TagZMap), Signature: classify.SigSYNRST}, 2)
	us(classify.Result{Stage: classify.NoMatch}, 2)
	de(b3, classify.Result{Stage: classify.NoMatch}, 10)
	for i := range 3 {
		d.Anomalies = append(d.Anomalies, aggregate.Anomaly{
			Time: b1.Add(time.Duration(i) * time.Minute).UnixNano(), Node: "n1", Policy: "p",
			Client: netip.MustParseAddr("198.51.100.7"), Server: netip.MustParseAddr("192.0.2.1"), ClientPort: uint16(40000 + i), Port: 443,
			IPVersion: 4, Country: "DE", ASN: 64500, Stage: classify.PostPSH, Tags: tag(classify.TagReset, classify.TagSingleRST), Signature: classify.SigPSHRST, Packets: 4,
		})
	}
	d.Anomalies = append(d.Anomalies, aggregate.Anomaly{
		Time: b2.UnixNano(), Node: "n2", Policy: "q", Client: netip.MustParseAddr("2001:db8::1"), Server: netip.MustParseAddr("2001:db8::2"),
		ClientPort: 5555, Port: 80, IPVersion: 6, Country: "US", ASN: 64501, Stage: classify.PostSYN, Tags: tag(classify.TagReset, classify.TagZMap), Signature: classify.SigSYNRST, Packets: 2,
	})
	if err := st.Write(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	return st
}

type fixture struct {
	t       *testing.T
	srv     *httptest.Server
	metrics *api.Metrics
	ready   error
}

func newFixture(t *testing.T, dashboard http.Handler) *fixture {
	f := &fixture{t: t}
	f.metrics = api.NewMetrics(func() ingest.Stats { return ingest.Stats{Batches: 5, AuthFailures: 1} })
	h := api.New(api.Config{
		Store: known(t), Registry: f.metrics.Registry, Dashboard: dashboard,
		Now: func() time.Time { return now }, Ready: func() error { return f.ready },
	})
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) get(path string) (int, string, string) {
	f.t.Helper()
	res, err := http.Get(f.srv.URL + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header.Get("Content-Type"), string(b)
}

func (f *fixture) json(path string, v any) {
	f.t.Helper()
	code, ct, body := f.get(path)
	if code != 200 || !strings.HasPrefix(ct, "application/json") {
		f.t.Fatalf("GET %s: %d %s %s", path, code, ct, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		f.t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

func TestSummaryShapeAndShares(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct {
		query string
		want  stages
	}{
		// All: 3 post_syn, 1 post_ack, 2 post_psh, 0 later, 16 no_match of 22.
		{"", stages{"13.636", "4.545", "9.091", "0.000", "72.727"}},
		{"?dateRange=1d", stages{"25.000", "8.333", "16.667", "0.000", "50.000"}},
		{"?location=DE", stages{"5.556", "5.556", "11.111", "0.000", "77.778"}},
		{"?location=de,US&dateRange=1d", stages{"25.000", "8.333", "16.667", "0.000", "50.000"}},
		{"?location=-DE", stages{"50.000", "0.000", "0.000", "0.000", "50.000"}},
		{"?asn=64501", stages{"50.000", "0.000", "0.000", "0.000", "50.000"}},
		{"?asn=-64501&dateRange=1d", stages{"12.500", "12.500", "25.000", "0.000", "50.000"}},
		{"?asn=AS64500&dateRange=1d", stages{"12.500", "12.500", "25.000", "0.000", "50.000"}},
		{"?node=n2", stages{"50.000", "0.000", "0.000", "0.000", "50.000"}},
		{"?port=443&dateRange=1d", stages{"12.500", "12.500", "25.000", "0.000", "50.000"}},
		{"?ipVersion=IPv6", stages{"50.000", "0.000", "0.000", "0.000", "50.000"}},
		{"?policy=p&ipVersion=IPv4,IPv6", stages{"5.556", "5.556", "11.111", "0.000", "77.778"}},
		{"?dateStart=2026-11-22T00:00:00Z&dateEnd=2026-11-23T00:00:00Z", stages{"0.000", "0.000", "0.000", "0.000", "100.000"}},
		{"?dateStart=2026-11-24T10:15:00Z", stages{"50.000", "0.000", "0.000", "0.000", "50.000"}},
		{"?node=nobody", stages{"0.000", "0.000", "0.000", "0.000", "0.000"}},
	} {
		var r summaryResp
		f.json("/radar/tcp_resets_timeouts/summary"+tc.query, &r)
		if !r.Success || r.Errors == nil || len(r.Errors) != 0 || r.Messages == nil {
			t.Errorf("%s: envelope %+v", tc.query, r)
		}
		if r.Result.Summary0 != tc.want {
			t.Errorf("%s: summary_0 %+v, want %+v", tc.query, r.Result.Summary0, tc.want)
		}
		m := r.Result.Meta
		if m.Normalization != "PERCENTAGE" || len(m.DateRange) != 1 || m.ConfidenceInfo == nil || m.ConfidenceInfo.Level != nil || m.ConfidenceInfo.Annotations == nil {
			t.Errorf("%s: meta %+v", tc.query, m)
		}
		if _, err := time.Parse(time.RFC3339, m.LastUpdated); err != nil {
			t.Errorf("%s: lastUpdated %q", tc.query, m.LastUpdated)
		}
	}
	var r summaryResp
	f.json("/radar/tcp_resets_timeouts/summary?dateRange=2w", &r)
	if dr := r.Result.Meta.DateRange[0]; dr.StartTime != "2026-11-10T12:00:00Z" || dr.EndTime != "2026-11-24T12:00:00Z" {
		t.Errorf("dateRange 2w: %+v", dr)
	}
	// name renames the series, as Radar's name parameter does.
	var named map[string]json.RawMessage
	var env struct{ Result map[string]json.RawMessage }
	f.json("/radar/tcp_resets_timeouts/summary?name=main", &env)
	named = env.Result
	if _, ok := named["main"]; !ok || named["summary_0"] != nil {
		t.Errorf("named summary keys: %v", keys(named))
	}
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestTimeseriesIntervals(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct {
		query, interval string
		stamps          []string
		postSYN         []string
	}{
		{"?dateRange=1d&aggInterval=15m", "FIFTEEN_MINUTES", []string{"2026-11-24T10:00:00Z", "2026-11-24T10:15:00Z"}, []string{"12.500", "50.000"}},
		{"?dateRange=1d", "FIFTEEN_MINUTES", []string{"2026-11-24T10:00:00Z", "2026-11-24T10:15:00Z"}, []string{"12.500", "50.000"}},
		{"?aggInterval=1h", "ONE_HOUR", []string{"2026-11-22T10:00:00Z", "2026-11-24T10:00:00Z"}, []string{"0.000", "25.000"}},
		{"", "ONE_HOUR", []string{"2026-11-22T10:00:00Z", "2026-11-24T10:00:00Z"}, []string{"0.000", "25.000"}},
		{"?aggInterval=1d", "ONE_DAY", []string{"2026-11-22T00:00:00Z", "2026-11-24T00:00:00Z"}, []string{"0.000", "25.000"}},
		{"?aggInterval=1w", "ONE_WEEK", []string{"2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"}, []string{"0.000", "25.000"}},
		{"?aggInterval=ONE_DAY&location=US", "ONE_DAY", []string{"2026-11-24T00:00:00Z"}, []string{"50.000"}},
	} {
		var r seriesResp
		f.json("/radar/tcp_resets_timeouts/timeseries_groups"+tc.query, &r)
		s := r.Result.Serie0
		if r.Result.Meta.AggInterval != tc.interval || !reflect.DeepEqual(s.Timestamps, tc.stamps) || !reflect.DeepEqual(s.PostSYN, tc.postSYN) {
			t.Errorf("%s: interval %s timestamps %v post_syn %v; want %s %v %v", tc.query, r.Result.Meta.AggInterval, s.Timestamps, s.PostSYN, tc.interval, tc.stamps, tc.postSYN)
		}
		for _, col := range [][]string{s.PostACK, s.PostPSH, s.LaterInFlow, s.NoMatch} {
			if len(col) != len(tc.stamps) {
				t.Errorf("%s: a column of %d values for %d timestamps", tc.query, len(col), len(tc.stamps))
			}
		}
	}
}

func readCSV(t *testing.T, f *fixture, path string) [][]string {
	t.Helper()
	code, ct, body := f.get(path)
	if code != 200 || !strings.HasPrefix(ct, "text/csv") {
		t.Fatalf("GET %s: %d %s %s", path, code, ct, body)
	}
	rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func TestCSV(t *testing.T) {
	f := newFixture(t, nil)
	rows := readCSV(t, f, "/radar/tcp_resets_timeouts/summary?dateRange=1d&format=CSV")
	want := [][]string{{"post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"}, {"25.000", "8.333", "16.667", "0.000", "50.000"}}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("summary CSV %v", rows)
	}
	rows = readCSV(t, f, "/radar/tcp_resets_timeouts/timeseries_groups?dateRange=1d&aggInterval=15m&format=csv")
	want = [][]string{
		{"timestamp", "post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"},
		{"2026-11-24T10:00:00Z", "12.500", "12.500", "25.000", "0.000", "50.000"},
		{"2026-11-24T10:15:00Z", "50.000", "0.000", "0.000", "0.000", "50.000"},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("timeseries CSV %v", rows)
	}
	rows = readCSV(t, f, "/api/v1/tags/summary?dateRange=1d&format=CSV")
	if len(rows) != 2 || rows[0][0] != "timeout" || rows[1][0] != "8.333" || len(rows[0]) != int(classify.NumTags) {
		t.Errorf("tags CSV %v", rows)
	}
	rows = readCSV(t, f, "/api/v1/anomalies?format=CSV&limit=2")
	if len(rows) != 3 || rows[0][0] != "time" || rows[1][1] != "2001:db8::1" {
		t.Errorf("anomalies CSV %v", rows)
	}
}

func TestTagAndSignatureBreakdowns(t *testing.T) {
	f := newFixture(t, nil)
	var tags struct {
		Result api.BreakdownResult `json:"result"`
	}
	f.json("/api/v1/tags/summary?dateRange=1d", &tags)
	// 12 classified: reset on 1+2+2 = 5, timeout 1, single_rst 3, zmap 2.
	r := tags.Result
	for tag, want := range map[string]string{"reset": "41.667", "timeout": "8.333", "single_rst": "25.000", "zmap": "16.667", "nmap": "0.000"} {
		if r.Summary0[tag] != want {
			t.Errorf("tag %s: %q, want %q", tag, r.Summary0[tag], want)
		}
	}
	if r.Counts["reset"] != 5 || r.Counts["zmap"] != 2 || len(r.Summary0) != int(classify.NumTags) || r.Connections.Classified != 12 || r.Connections.Excluded != 1 {
		t.Errorf("tag counts %v connections %+v", r.Counts, r.Connections)
	}
	var sigs struct {
		Result api.BreakdownResult `json:"result"`
	}
	f.json("/api/v1/signatures/summary?dateRange=1d&location=DE", &sigs)
	if s := sigs.Result; s.Summary0["PSH+ACK → RST"] != "25.000" || s.Counts["SYN → ∅"] != 1 || len(s.Summary0) != 19 {
		t.Errorf("signatures %v %v", s.Summary0, s.Counts)
	}
	if _, ok := sigs.Result.Summary0[""]; ok {
		t.Error("the empty signature is listed")
	}
	var ser struct {
		Result struct {
			Meta   radarMeta           `json:"meta"`
			Serie0 map[string][]string `json:"serie_0"`
		} `json:"result"`
	}
	f.json("/api/v1/signatures/timeseries_groups?dateRange=1d&aggInterval=15m", &ser)
	if s := ser.Result.Serie0; len(s["timestamps"]) != 2 || !reflect.DeepEqual(s["SYN → RST"], []string{"0.000", "50.000"}) || len(s) != 20 {
		t.Errorf("signature series %v", s)
	}
	f.json("/api/v1/tags/timeseries_groups?dateRange=1d&aggInterval=1h", &ser)
	if s := ser.Result.Serie0; !reflect.DeepEqual(s["reset"], []string{"41.667"}) || ser.Result.Meta.AggInterval != "ONE_HOUR" {
		t.Errorf("tag series %v", s)
	}
}

func TestAnomaliesAndDimensions(t *testing.T) {
	f := newFixture(t, nil)
	var res struct {
		Result struct {
			Connections []api.Anomaly `json:"connections"`
		} `json:"result"`
	}
	f.json("/api/v1/anomalies", &res)
	cs := res.Result.Connections
	if len(cs) != 4 || cs[0].Client != "2001:db8::1" || cs[0].Stage != "post_syn" || cs[0].Signature != "SYN → RST" || !reflect.DeepEqual(cs[0].Tags, []string{"reset", "zmap"}) {
		t.Fatalf("anomalies %+v", cs)
	}
	if a := cs[1]; a.Time != "2026-11-24T10:02:00Z" || a.ServerPort != 443 || a.Node != "n1" || a.Country != "DE" || a.ASN != 64500 {
		t.Errorf("anomaly %+v", a)
	}
	f.json("/api/v1/anomalies?limit=2&location=DE", &res)
	if cs := res.Result.Connections; len(cs) != 2 || cs[0].ClientPort != 40002 {
		t.Errorf("limited, filtered anomalies %+v", cs)
	}
	f.json("/api/v1/anomalies?node=n2&port=80&ipVersion=IPv6&asn=64501&policy=q", &res)
	if len(res.Result.Connections) != 1 {
		t.Errorf("filtered anomalies %+v", res.Result.Connections)
	}
	var dims struct {
		Result api.Dimensions `json:"result"`
	}
	f.json("/api/v1/dimensions", &dims)
	d := dims.Result
	if !reflect.DeepEqual(d.Nodes, []string{"n1", "n2"}) || !reflect.DeepEqual(d.Policies, []string{"p", "q"}) || !reflect.DeepEqual(d.Ports, []uint16{80, 443}) ||
		!reflect.DeepEqual(d.Countries, []string{"DE", "US"}) || !reflect.DeepEqual(d.ASNs, []uint32{64500, 64501}) || !reflect.DeepEqual(d.IPVersions, []string{"IPv4", "IPv6"}) ||
		d.First != "2026-11-22T10:00:00Z" || d.Last != "2026-11-24T10:15:00Z" {
		t.Errorf("dimensions %+v", d)
	}
}

func TestBadParametersAre400NamingTheParameter(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct{ path, param string }{
		{"/radar/tcp_resets_timeouts/summary?location=USA", "location"},
		{"/radar/tcp_resets_timeouts/summary?location=US,", "location"},
		{"/radar/tcp_resets_timeouts/summary?location=--US", "location"},
		{"/radar/tcp_resets_timeouts/summary?asn=abc", "asn"},
		{"/radar/tcp_resets_timeouts/summary?asn=0", "asn"},
		{"/radar/tcp_resets_timeouts/summary?asn=4294967296", "asn"},
		{"/radar/tcp_resets_timeouts/summary?dateRange=7", "dateRange"},
		{"/radar/tcp_resets_timeouts/summary?dateRange=0d", "dateRange"},
		{"/radar/tcp_resets_timeouts/summary?dateRange=400d", "dateRange"},
		{"/radar/tcp_resets_timeouts/summary?dateRange=1d,7d", "dateRange"},
		{"/radar/tcp_resets_timeouts/summary?dateRange=7d&dateStart=2026-11-20T00:00:00Z", "dateRange"},
		{"/radar/tcp_resets_timeouts/summary?dateStart=yesterday", "dateStart"},
		{"/radar/tcp_resets_timeouts/summary?dateEnd=2026-11-24", "dateEnd"},
		{"/radar/tcp_resets_timeouts/summary?dateStart=2026-11-24T00:00:00Z&dateEnd=2026-11-23T00:00:00Z", "dateStart"},
		{"/radar/tcp_resets_timeouts/summary?dateStart=2024-01-01T00:00:00Z&dateEnd=2026-01-01T00:00:00Z", "dateStart"},
		{"/radar/tcp_resets_timeouts/timeseries_groups?aggInterval=5m", "aggInterval"},
		{"/radar/tcp_resets_timeouts/timeseries_groups?aggInterval=15m&dateRange=52w", "aggInterval"},
		{"/radar/tcp_resets_timeouts/summary?format=XML", "format"},
		{"/radar/tcp_resets_timeouts/summary?port=0", "port"},
		{"/radar/tcp_resets_timeouts/summary?port=70000", "port"},
		{"/radar/tcp_resets_timeouts/summary?port=https", "port"},
		{"/radar/tcp_resets_timeouts/summary?ipVersion=4", "ipVersion"},
		{"/radar/tcp_resets_timeouts/summary?node=", "node"},
		{"/radar/tcp_resets_timeouts/summary?name=a&name=b", "name"},
		{"/radar/tcp_resets_timeouts/summary?location=US&location=DE", "location"},
		{"/radar/tcp_resets_timeouts/summary?dateStart=2026-11-24T10:15:00Z&dateStart=2026-11-22T00:00:00Z", "dateStart"},
		{"/radar/tcp_resets_timeouts/timeseries_groups?aggInterval=1h&aggInterval=1d", "aggInterval"},
		{"/radar/tcp_resets_timeouts/summary?locaton=US", "locaton"},
		{"/api/v1/tags/summary?asn=x", "asn"},
		{"/api/v1/signatures/timeseries_groups?aggInterval=2h", "aggInterval"},
		{"/api/v1/anomalies?limit=0", "limit"},
		{"/api/v1/anomalies?limit=1001", "limit"},
		{"/api/v1/anomalies?limit=ten", "limit"},
		{"/api/v1/tags/summary?limit=5", "limit"},
		{"/api/v1/dimensions?node=n1", "node"},
	} {
		code, ct, body := f.get(tc.path)
		var e errorResp
		if err := json.Unmarshal([]byte(body), &e); err != nil || code != 400 || !strings.HasPrefix(ct, "application/json") {
			t.Errorf("GET %s: %d %s %s (%v)", tc.path, code, ct, body, err)
			continue
		}
		if e.Success || len(e.Errors) != 1 || e.Errors[0].Code != 400 || !strings.HasPrefix(e.Errors[0].Message, tc.param+": ") {
			t.Errorf("GET %s: %+v, want a message starting with %q", tc.path, e, tc.param+": ")
		}
	}
	if code, _, body := f.get("/api/v1/nothing"); code != 404 || !strings.Contains(body, `"success":false`) {
		t.Errorf("unknown endpoint: %d %s", code, body)
	}
	res, err := http.Post(f.srv.URL+"/radar/tcp_resets_timeouts/summary", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", res.StatusCode)
	}
}

func TestProbesMetricsAndDashboard(t *testing.T) {
	dash := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html>dashboard</html>") })
	f := newFixture(t, dash)
	if code, _, body := f.get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("healthz %d %q", code, body)
	}
	if code, _, _ := f.get("/readyz"); code != 200 {
		t.Errorf("readyz %d", code)
	}
	f.ready = errors.New("journal replay under way")
	if code, _, body := f.get("/readyz"); code != 503 || !strings.Contains(body, "replay") {
		t.Errorf("readyz when not ready: %d %q", code, body)
	}
	f.metrics.Classified("n1", "p", classify.Result{Stage: classify.PostPSH, Tags: 1 << classify.TagReset, Signature: classify.SigPSHRST})
	f.metrics.Classified("n1", "p", classify.Result{Excluded: classify.MultipleSYN})
	_, _, body := f.get("/metrics")
	for _, want := range []string{
		`connscope_connections_classified_total{node="n1",policy="p",stage="post_psh"} 1`,
		`connscope_connection_tags_total{node="n1",policy="p",tag="reset"} 1`,
		`connscope_connection_signatures_total{node="n1",policy="p",signature="PSH+ACK → RST"} 1`,
		`connscope_connections_excluded_total{node="n1",policy="p",reason="multiple_syn"} 1`,
		`connscope_ingest_batches_total 5`,
		`connscope_ingest_auth_failures_total 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if code, _, body := f.get("/"); code != 200 || !strings.Contains(body, "dashboard") {
		t.Errorf("dashboard: %d %q", code, body)
	}
	g := newFixture(t, nil)
	if code, _, _ := g.get("/"); code != 404 {
		t.Errorf("no dashboard: / gives %d", code)
	}
}

// The date range: a bucket belongs to it when it starts within it, dateEnd
// included (Radar's dateEnd is inclusive), to the nanosecond of the bounds;
// Radar's control ranges (7dcontrol) are the span before the one named; a
// summary takes an aggInterval it does not use without counting points.
func TestDateRangeBounds(t *testing.T) {
	f := newFixture(t, nil)
	summary := func(query string) stages {
		t.Helper()
		var r summaryResp
		f.json("/radar/tcp_resets_timeouts/summary?"+query, &r)
		return r.Result.Summary0
	}
	// post_syn: b1 (10:00) 1 of 8, b2 (10:15) 2 of 4, both 3 of 12.
	if got := summary("dateStart=2026-11-24T09:00:00Z&dateEnd=2026-11-24T10:00:00Z").PostSYN; got != "12.500" {
		t.Errorf("range ending at b1's start: post_syn %s, want 12.500 (b1 included)", got)
	}
	if got := summary("dateStart=2026-11-24T10:00:00.5Z&dateEnd=2026-11-24T10:15:00.5Z").PostSYN; got != "50.000" {
		t.Errorf("[10:00:00.5, 10:15:00.5]: post_syn %s, want 50.000 (b2 only)", got)
	}
	var ser seriesResp
	f.json("/radar/tcp_resets_timeouts/timeseries_groups?aggInterval=15m&dateStart=2026-11-24T10:00:00.5Z&dateEnd=2026-11-24T10:15:00.5Z", &ser)
	if ts := strings.Join(ser.Result.Serie0.Timestamps, ","); ts != "2026-11-24T10:15:00Z" {
		t.Errorf("[10:00:00.5, 10:15:00.5] series: timestamps %s, want b2's only", ts)
	}
	// now is 2026-11-24T12:00Z: 2dcontrol is [11-20 12:00, 11-22 12:00], b3 only.
	for _, dr := range []string{"2dcontrol", "2dControl"} {
		if got := summary("dateRange=" + dr).NoMatch; got != "100.000" {
			t.Errorf("dateRange=%s: no_match %s, want 100.000 (b3 only)", dr, got)
		}
	}
	if code, _, body := f.get("/radar/tcp_resets_timeouts/summary?dateRange=52w&aggInterval=15m"); code != 200 {
		t.Errorf("summary with an interval it does not use: %d %s", code, body)
	}
}

// Radar's meta.units, and result {} in an error body.
func TestRadarUnitsAndErrorResult(t *testing.T) {
	f := newFixture(t, nil)
	for _, p := range []string{"/radar/tcp_resets_timeouts/summary", "/radar/tcp_resets_timeouts/timeseries_groups"} {
		var env struct {
			Result struct {
				Meta struct {
					Units []struct{ Name, Value string } `json:"units"`
				} `json:"meta"`
			} `json:"result"`
		}
		f.json(p, &env)
		if u := env.Result.Meta.Units; len(u) != 1 || u[0].Name != "*" || u[0].Value != "percentage" {
			t.Errorf("%s: meta.units %+v, want [{* percentage}]", p, u)
		}
	}
	_, _, body := f.get("/radar/tcp_resets_timeouts/summary?location=USA")
	var e map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &e); err != nil || string(e["result"]) != "{}" {
		t.Errorf("400 body %s: want result {}", body)
	}
}

// A classifier over ClickHouse serves its replica's counters and the
// process's on /metrics (it has no ingest of its own).
func TestWindowMetrics(t *testing.T) {
	stats := chstore.Stats{Windows: 2, Parts: 16, Packets: 5000, Duplicates: 3, Connections: 700, Carried: 4, Busy: 1500 * time.Millisecond}
	srv := httptest.NewServer(api.New(api.Config{Store: known(t), Registry: api.NewWindowMetrics(func() chstore.Stats { return stats })}))
	defer srv.Close()
	res, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		"connscope_windows_classified_total 2", "connscope_window_parts_total 16", "connscope_window_packets_total 5000",
		"connscope_window_duplicate_packets_total 3", "connscope_window_connections_total 700",
		"connscope_window_carried_connections_total 4", "connscope_window_busy_seconds_total 1.5",
		"process_cpu_seconds_total", "go_goroutines",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
