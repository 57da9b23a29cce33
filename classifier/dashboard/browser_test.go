package dashboard

// The dashboard in a real headless Chromium (Debian's chromium package;
// hack/setup-browser.sh installs it), driven over the DevTools protocol,
// against the fixture API (fixture_test.go, a stand-in for the classifier
// service until it lands). Skipped, with a message, when there is no
// chromium, unless CONNSCOPE_REQUIRE_BROWSER is set (then it fails).
// Artefacts: screenshots in t.TempDir(), copied to .cache/dashboard/ at
// the repository root for humans.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// newTestServer serves the dashboard at / and api for everything the
// page requests under /radar/ and /api/, on 127.0.0.1 only.
func newTestServer(t *testing.T, api http.Handler) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/radar/", api)
	mux.Handle("/api/", api)
	mux.Handle("/", Handler())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: mux}}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// pageView is what the test reads off the rendered page.
type pageView struct {
	State      string              `json:"state"`
	Generation int                 `json:"generation"`
	URL        string              `json:"url"`
	Cards      map[string]string   `json:"cards"`
	CardNames  []string            `json:"cardNames"`
	Areas      []svgShape          `json:"areas"`
	Lines      []svgShape          `json:"lines"`
	YLabels    []string            `json:"yLabels"`
	XLabels    []string            `json:"xLabels"`
	ChartEmpty string              `json:"chartEmpty"`
	Tags       map[string]float64  `json:"tags"`
	Signatures map[string]float64  `json:"signatures"`
	BarWidths  []float64           `json:"barWidths"`
	RowsRaw    []tableRow          `json:"rows"`
	TableEmpty string              `json:"tableEmpty"`
	OptionsRaw map[string][]string `json:"options"`
	Sparks     int                 `json:"sparks"`
	Tooltip    string              `json:"tooltip"`
	Errors     string              `json:"errors"`
	ErrorsOpen bool                `json:"errorsOpen"`
}

type svgShape struct {
	Stage string  `json:"stage"`
	W     float64 `json:"w"`
	H     float64 `json:"h"`
	D     int     `json:"d"`
}

type tableRow struct {
	Node, Country, Stage, Signature, Client string
}

const readView = `(() => {
  const q = (s) => [...document.querySelectorAll(s)];
  const shape = (e) => { const r = e.getBoundingClientRect(); return { stage: e.dataset.stage, w: r.width, h: r.height, d: (e.getAttribute("d") || "").length }; };
  const cards = {};
  for (const c of q("#stage-cards .card")) cards[c.dataset.stage] = c.querySelector(".value").textContent.replace("%", "");
  const bars = (sel) => Object.fromEntries(q(sel + " .bar-row").map((r) => [r.dataset.key, parseFloat(r.querySelector(".val").textContent)]));
  const options = {};
  for (const n of ["location", "asn", "node", "port", "policy"]) options[n] = q("#filters select[name=" + n + "] option").map((o) => o.value).filter(Boolean);
  const empty = document.querySelector("#stage-chart .empty");
  const tEmpty = document.querySelector("#anomalies td.empty");
  const errs = document.getElementById("errors");
  return {
    state: document.body.dataset.state, generation: +document.body.dataset.generation, url: location.href,
    cards, cardNames: q("#stage-cards .card .name").map((e) => e.textContent),
    areas: q("#stage-chart path.area").map(shape), lines: q("#stage-chart path.line").map(shape),
    yLabels: q("#stage-chart .axis.y text").map((e) => e.textContent), xLabels: q("#stage-chart .axis.x text").map((e) => e.textContent),
    chartEmpty: empty ? empty.textContent : "",
    tags: bars("#tags"), signatures: bars("#signatures"),
    barWidths: q(".bars .bar-row rect.fill").map((r) => r.getBoundingClientRect().width),
    rows: q("#anomalies tbody tr").filter((r) => !r.querySelector("td.empty")).map((r) => { const c = r.cells; return { Client: c[1].textContent, Node: c[3].textContent, Country: c[4].textContent, Stage: c[6].textContent, Signature: c[7].textContent }; }),
    tableEmpty: tEmpty ? tEmpty.textContent : "",
    sparks: q(".bars polyline.spark-line").length,
    tooltip: document.getElementById("tooltip").hidden ? "" : document.getElementById("tooltip").textContent,
    options, errors: errs.textContent, errorsOpen: !errs.hidden,
  };
})()`

func (b *browser) view() pageView {
	b.t.Helper()
	var v pageView
	b.mustEval(readView, &v)
	return v
}

// waitReady waits until the page has finished a refresh newer than after.
func (b *browser) waitReady(after int) pageView {
	b.t.Helper()
	b.waitFor(fmt.Sprintf("a refresh after generation %d", after),
		fmt.Sprintf(`document.body.dataset.state === "ready" && +document.body.dataset.generation > %d`, after), 20*time.Second)
	return b.view()
}

// screenshot saves a full-page PNG into dir and .cache/dashboard/name.
func (b *browser) screenshot(dir, name string) string {
	b.t.Helper()
	var height float64
	b.mustEval(`document.documentElement.scrollHeight`, &height)
	b.must("Emulation.setDeviceMetricsOverride", map[string]any{"width": 1440, "height": int(math.Ceil(height)), "deviceScaleFactor": 1, "mobile": false}, nil)
	time.Sleep(300 * time.Millisecond) // the chart re-renders on resize (debounced)
	var shot struct {
		Data string `json:"data"`
	}
	b.must("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &shot)
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		b.t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	// For humans: <repo>/.cache/dashboard/ (ignored by git).
	human := filepath.Join("..", "..", ".cache", "dashboard")
	if err := os.MkdirAll(human, 0o755); err == nil {
		_ = os.WriteFile(filepath.Join(human, name), png, 0o644)
	}
	b.t.Logf("screenshot: %s (%d bytes); copy in %s", path, len(png), filepath.Join(human, name))
	b.must("Emulation.setDeviceMetricsOverride", map[string]any{"width": 1440, "height": 1000, "deviceScaleFactor": 1, "mobile": false}, nil)
	return path
}

// apiRequestsSince returns the API requests after the first n, by path.
func apiRequestsSince(api API, n int) map[string][]url.Values {
	out := map[string][]url.Values{}
	for _, r := range api.Requests()[n:] {
		u, err := url.Parse(r)
		if err != nil {
			continue
		}
		out[u.Path] = append(out[u.Path], u.Query())
	}
	return out
}

var stageKeys = []string{"post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"}

// checkCards compares the stage cards with the fixture's summary for the
// same query (the page shows one decimal).
func checkCards(t *testing.T, v pageView, rawQuery string) {
	t.Helper()
	want := fixtureStageShares(rawQuery)
	for _, k := range stageKeys {
		got, err := parseFloat(v.Cards[k])
		if err != nil {
			t.Errorf("card %s shows %q, not a percentage", k, v.Cards[k])
			continue
		}
		if math.Abs(got-want[k]) > 0.051 {
			t.Errorf("card %s shows %.2f%%, the API says %.3f%% (query %q)", k, got, want[k], rawQuery)
		}
	}
}

func parseFloat(s string) (float64, error) {
	var f float64
	_, err := fmt.Sscanf(strings.TrimSpace(s), "%g", &f)
	return f, err
}

func TestDashboardInHeadlessChromium(t *testing.T) {
	exe := chromiumPath()
	if exe == "" {
		msg := "chromium not found: run hack/setup-browser.sh (Debian's chromium package) or set CONNSCOPE_CHROMIUM to run the dashboard's browser test"
		if os.Getenv("CONNSCOPE_REQUIRE_BROWSER") != "" {
			t.Fatal(msg + " (CONNSCOPE_REQUIRE_BROWSER is set, so this fails rather than skips)")
		}
		t.Skip(msg)
	}
	if testing.Short() {
		t.Skip("-short: skipping the headless browser test")
	}
	api := API(newFixtureAPI()) // FIXTURE: swap for the classifier service's handler when it lands
	srv := newTestServer(t, api)
	b := startBrowser(t, exe)
	artefacts := t.TempDir()

	for _, domain := range []string{"Page.enable", "Runtime.enable", "Log.enable", "Network.enable"} {
		b.must(domain, nil, nil)
	}
	b.must("Emulation.setDeviceMetricsOverride", map[string]any{"width": 1440, "height": 1000, "deviceScaleFactor": 1, "mobile": false}, nil)
	b.must("Page.navigate", map[string]any{"url": srv.URL + "/"}, nil)

	// 1. The page loads and every panel renders the fixture's data.
	v := b.waitReady(0)
	t.Run("loads and renders", func(t *testing.T) {
		if v.ErrorsOpen {
			t.Errorf("error banner shown on a healthy API: %q", v.Errors)
		}
		wantNames := []string{"Ended early", "Post SYN", "Post ACK", "Post PSH", "Later in flow", "No match"}
		if strings.Join(v.CardNames, "|") != strings.Join(wantNames, "|") {
			t.Errorf("stage cards %q, want %q (Radar's stage names)", v.CardNames, wantNames)
		}
		checkCards(t, v, "dateRange=7d&aggInterval=1h")
		if len(v.Areas) != len(stageKeys) {
			t.Fatalf("stacked chart has %d areas, want one per stage (%d)", len(v.Areas), len(stageKeys))
		}
		for i, a := range v.Areas {
			if a.Stage != stageKeys[i] {
				t.Errorf("area %d is %q, want %q (stacked from post_syn up)", i, a.Stage, stageKeys[i])
			}
			if a.W < 500 || a.H < 5 || a.D < 1000 {
				t.Errorf("area %s renders %.0fx%.0f px with a %d-byte path; want a wide, visible area over 7 days of hourly points", a.Stage, a.W, a.H, a.D)
			}
		}
		if len(v.YLabels) != 5 || v.YLabels[0] != "0%" || v.YLabels[4] != "100%" {
			t.Errorf("y axis labels %q, want 0%%..100%% in five steps", v.YLabels)
		}
		if len(v.XLabels) < 4 {
			t.Errorf("x axis has %d labels (%q), want several", len(v.XLabels), v.XLabels)
		}
		wantOpts := map[string][]string{"node": fixtureDims.Nodes, "policy": fixtureDims.Policies, "location": fixtureDims.Countries}
		for name, want := range wantOpts {
			got := append([]string(nil), v.OptionsRaw[name]...)
			w := append([]string(nil), want...)
			sort.Strings(got)
			sort.Strings(w)
			if strings.Join(got, ",") != strings.Join(w, ",") {
				t.Errorf("filter %s offers %q, want the dimensions %q", name, got, w)
			}
		}
		if len(v.OptionsRaw["asn"]) != len(fixtureDims.ASNs) || len(v.OptionsRaw["port"]) != len(fixtureDims.Ports) {
			t.Errorf("asn/port filters offer %q / %q, want %d / %d values", v.OptionsRaw["asn"], v.OptionsRaw["port"], len(fixtureDims.ASNs), len(fixtureDims.Ports))
		}
		for _, tag := range []string{"timeout", "reset", "single_rst", "acknumsame", "zmap", "masscan", "ttl_jump"} {
			if v.Tags[tag] <= 0 {
				t.Errorf("tag bar %q missing or zero (tags shown: %v)", tag, v.Tags)
			}
		}
		if len(v.Signatures) != len(fixtureSignatureWeights) {
			t.Errorf("%d signature bars, want %d", len(v.Signatures), len(fixtureSignatureWeights))
		}
		if v.Signatures["SYN → ∅"] <= 0 || v.Signatures["PSH+ACK → RST = RST"] <= 0 {
			t.Errorf("signature bars lack the fixture's signatures: %v", v.Signatures)
		}
		if want := len(v.Tags) + len(v.Signatures); v.Sparks != want {
			t.Errorf("%d trend sparklines, want one per bar (%d)", v.Sparks, want)
		}
		for i, w := range v.BarWidths {
			if w <= 0 {
				t.Errorf("bar %d has width %.1f px", i, w)
			}
		}
		if len(v.RowsRaw) != 100 {
			t.Errorf("anomalies table has %d rows, want the 100 the API returned", len(v.RowsRaw))
		}
		if len(v.RowsRaw) > 0 && v.RowsRaw[0].Client != fixtureConns[0].Client {
			t.Errorf("first anomaly row is %q, want the newest connection %q", v.RowsRaw[0].Client, fixtureConns[0].Client)
		}
	})
	b.screenshot(artefacts, "screenshot.png")

	// 2. Selecting a node asks every panel's endpoint for that node, and
	// the page shows that node's data.
	t.Run("node filter", func(t *testing.T) {
		before := len(api.Requests())
		b.mustEval(`(() => { const s = document.querySelector("#filters select[name=node]"); s.value = "node-b"; s.dispatchEvent(new Event("change", { bubbles: true })); })()`, nil)
		v2 := b.waitReady(v.Generation)
		reqs := apiRequestsSince(api, before)
		for _, p := range []string{
			"/radar/tcp_resets_timeouts/summary", "/radar/tcp_resets_timeouts/timeseries_groups",
			"/api/v1/tags/summary", "/api/v1/signatures/summary", "/api/v1/anomalies",
		} {
			if len(reqs[p]) == 0 {
				t.Errorf("after selecting node-b, the page did not request %s", p)
			}
			for _, q := range reqs[p] {
				if q.Get("node") != "node-b" || q.Get("dateRange") != "7d" || q.Get("aggInterval") != "1h" {
					t.Errorf("%s requested with %v, want node=node-b, dateRange=7d, aggInterval=1h", p, q)
				}
			}
		}
		checkCards(t, v2, "dateRange=7d&aggInterval=1h&node=node-b")
		if v2.Cards["post_psh"] == v.Cards["post_psh"] {
			t.Errorf("Post PSH card unchanged (%s%%) after selecting node-b, whose fixture has an incident", v.Cards["post_psh"])
		}
		if len(v2.RowsRaw) == 0 {
			t.Fatal("anomalies table empty for node-b")
		}
		for _, r := range v2.RowsRaw {
			if r.Node != "node-b" {
				t.Fatalf("anomalies table shows a row of node %q with the node-b filter", r.Node)
			}
		}
		var csv string
		b.mustEval(`document.getElementById("csv").getAttribute("href")`, &csv)
		if !strings.HasPrefix(csv, "/radar/tcp_resets_timeouts/timeseries_groups?") || !strings.Contains(csv, "node=node-b") || !strings.Contains(csv, "format=CSV") {
			t.Errorf("CSV link %q does not carry the filters and format=CSV", csv)
		}
		if !strings.Contains(v2.URL, "node=node-b") {
			t.Errorf("page URL %q does not keep the filter", v2.URL)
		}
		// Lines mode draws one line per stage.
		b.mustEval(`document.querySelector('.seg button[data-mode="lines"]').click()`, nil)
		v3 := b.view()
		if len(v3.Lines) != len(stageKeys) || len(v3.Areas) != 0 {
			t.Errorf("lines mode: %d lines and %d areas, want %d and 0", len(v3.Lines), len(v3.Areas), len(stageKeys))
		}
		b.screenshot(artefacts, "screenshot-node-b-lines.png")
		// "Ended early" stacks the four early stages on a zoomed axis.
		b.mustEval(`document.querySelector('.seg button[data-mode="early"]').click()`, nil)
		v4 := b.view()
		if len(v4.Areas) != 4 || len(v4.YLabels) != 5 || v4.YLabels[4] == "100%" {
			t.Errorf("ended-early mode: %d areas, y labels %q; want 4 areas on an axis below 100%%", len(v4.Areas), v4.YLabels)
		}
		// Hovering the chart shows the bucket's values.
		var box struct{ X, Y, W, H float64 }
		b.mustEval(`(() => { const r = document.querySelector("#stage-chart svg").getBoundingClientRect(); return { X: r.x, Y: r.y, W: r.width, H: r.height }; })()`, &box)
		b.must("Input.dispatchMouseEvent", map[string]any{"type": "mouseMoved", "x": box.X + box.W*0.9, "y": box.Y + box.H/2}, nil)
		b.waitFor("the chart tooltip", `!document.getElementById("tooltip").hidden`, 5*time.Second)
		if tip := b.view().Tooltip; !strings.Contains(tip, "UTC") || !strings.Contains(tip, "Post PSH") {
			t.Errorf("tooltip %q lacks the bucket time and the stages", tip)
		}
		b.screenshot(artefacts, "screenshot-node-b-early.png")
		b.must("Input.dispatchMouseEvent", map[string]any{"type": "mouseMoved", "x": 2, "y": 2}, nil)
		b.mustEval(`document.querySelector('.seg button[data-mode="stacked"]').click()`, nil)
		v = v2
	})

	// Until here the page must have loaded nothing from elsewhere and
	// logged no error.
	t.Run("same origin, no console errors", func(t *testing.T) { checkCleanPage(t, b, srv.URL) })

	// A leading "-" excludes: country US excluded.
	t.Run("exclude a country", func(t *testing.T) {
		before := len(api.Requests())
		b.mustEval(`(() => { const f = document.getElementById("filters"); f.elements.location.value = "US"; f.elements["location-exclude"].checked = true; f.elements.location.dispatchEvent(new Event("change", { bubbles: true })); })()`, nil)
		v2 := b.waitReady(v.Generation)
		reqs := apiRequestsSince(api, before)["/api/v1/anomalies"]
		if len(reqs) == 0 {
			t.Error("excluding US did not request the anomalies again")
		}
		for _, q := range reqs {
			if q.Get("location") != "-US" || q.Get("node") != "node-b" {
				t.Errorf("anomalies requested with %v, want location=-US and node=node-b", q)
			}
		}
		for _, r := range v2.RowsRaw {
			if r.Country == "US" {
				t.Fatalf("a US row is shown with US excluded: %+v", r)
			}
		}
		checkCards(t, v2, "node=node-b&location=-US")
		b.mustEval(`(() => { const f = document.getElementById("filters"); f.elements.location.value = ""; f.elements["location-exclude"].checked = false; f.elements.location.dispatchEvent(new Event("change", { bubbles: true })); })()`, nil)
		v = b.waitReady(v2.Generation)
	})

	// 3. A node without data: empty states, not errors.
	t.Run("empty data", func(t *testing.T) {
		b.mustEval(`(() => { const s = document.querySelector("#filters select[name=node]"); s.value = "edge-7"; s.dispatchEvent(new Event("change", { bubbles: true })); })()`, nil)
		v2 := b.waitReady(v.Generation)
		if v2.ChartEmpty == "" || len(v2.Areas) != 0 {
			t.Errorf("edge-7 (no data): chart shows %d areas and empty text %q, want the empty state", len(v2.Areas), v2.ChartEmpty)
		}
		if len(v2.RowsRaw) != 0 || v2.TableEmpty == "" {
			t.Errorf("edge-7: %d table rows, empty text %q, want the empty state", len(v2.RowsRaw), v2.TableEmpty)
		}
		if v2.ErrorsOpen {
			t.Errorf("edge-7: error banner %q on empty data", v2.Errors)
		}
		v = v2
	})

	// 4. A failing endpoint: a banner naming the request; the rest renders.
	t.Run("API error banner", func(t *testing.T) {
		b.mustEval(`(() => { const s = document.querySelector("#filters select[name=node]"); s.value = ""; s.dispatchEvent(new Event("change", { bubbles: true })); })()`, nil)
		v = b.waitReady(v.Generation)
		api.Fail("/api/v1/signatures/summary", http.StatusInternalServerError)
		defer api.Fail("/api/v1/signatures/summary", 0)
		b.mustEval(`document.getElementById("refresh").click()`, nil)
		v2 := b.waitReady(v.Generation)
		if !v2.ErrorsOpen || !strings.Contains(v2.Errors, "GET /api/v1/signatures/summary?") || !strings.Contains(v2.Errors, "HTTP 500") || !strings.Contains(v2.Errors, "injected failure") {
			t.Errorf("error banner (open=%v) %q does not name the failing request, its status and message", v2.ErrorsOpen, v2.Errors)
		}
		v = v2
		if len(v2.Areas) != len(stageKeys) || len(v2.RowsRaw) == 0 {
			t.Errorf("with only signatures failing, the chart (%d areas) and table (%d rows) should still render", len(v2.Areas), len(v2.RowsRaw))
		}
		b.screenshot(artefacts, "screenshot-error.png")
	})

	// Every interval renders, down to a single bucket.
	t.Run("date ranges and intervals", func(t *testing.T) {
		for _, tc := range []struct{ dateRange, interval string }{
			{"1d", "15m"}, {"28d", "1d"}, {"28d", "1w"}, {"7d", "1w"}, {"7d", "1h"},
		} {
			before := len(api.Requests())
			b.mustEval(fmt.Sprintf(`(() => { const f = document.getElementById("filters"); f.elements.dateRange.value = %q; f.elements.aggInterval.value = %q; f.elements.aggInterval.dispatchEvent(new Event("change", { bubbles: true })); })()`, tc.dateRange, tc.interval), nil)
			v2 := b.waitReady(v.Generation)
			v = v2
			for _, q := range apiRequestsSince(api, before)["/radar/tcp_resets_timeouts/timeseries_groups"] {
				if q.Get("dateRange") != tc.dateRange || q.Get("aggInterval") != tc.interval {
					t.Errorf("timeseries requested with %v, want dateRange=%s aggInterval=%s", q, tc.dateRange, tc.interval)
				}
			}
			if len(v2.Areas) != len(stageKeys) || v2.ErrorsOpen {
				t.Errorf("%s/%s: %d areas, errors %q", tc.dateRange, tc.interval, len(v2.Areas), v2.Errors)
				continue
			}
			for _, a := range v2.Areas {
				if a.W <= 0 || a.H <= 0 {
					t.Errorf("%s/%s: area %s is %.0fx%.0f px", tc.dateRange, tc.interval, a.Stage, a.W, a.H)
				}
			}
			if len(v2.XLabels) == 0 {
				t.Errorf("%s/%s: no x axis labels", tc.dateRange, tc.interval)
			}
			checkCards(t, v2, "dateRange="+tc.dateRange+"&aggInterval="+tc.interval)
		}
	})

	// The dark scheme, for a look (no assertions beyond rendering).
	t.Run("dark scheme", func(t *testing.T) {
		b.must("Emulation.setEmulatedMedia", map[string]any{"features": []map[string]string{{"name": "prefers-color-scheme", "value": "dark"}}}, nil)
		b.mustEval(`document.getElementById("refresh").click()`, nil)
		v2 := b.waitReady(v.Generation)
		if len(v2.Areas) != len(stageKeys) {
			t.Errorf("dark scheme: %d areas", len(v2.Areas))
		}
		b.screenshot(artefacts, "screenshot-dark.png")
	})
}

// checkCleanPage fails when the page requested anything outside origin or
// logged an error (uncaught exceptions, console errors, CSP violations).
func checkCleanPage(t *testing.T, b *browser, origin string) {
	t.Helper()
	for _, raw := range b.eventsOf("Network.requestWillBeSent") {
		var e struct {
			Request struct{ URL string } `json:"request"`
		}
		_ = json.Unmarshal(raw, &e)
		if !strings.HasPrefix(e.Request.URL, origin+"/") && !strings.HasPrefix(e.Request.URL, "data:") {
			t.Errorf("the page requested %s, outside its origin %s", e.Request.URL, origin)
		}
	}
	for _, raw := range b.eventsOf("Runtime.exceptionThrown") {
		t.Errorf("uncaught exception in the page: %s", raw)
	}
	for _, raw := range b.eventsOf("Log.entryAdded") {
		var e struct {
			Entry struct{ Level, Text, URL string } `json:"entry"`
		}
		_ = json.Unmarshal(raw, &e)
		if e.Entry.Level == "error" {
			t.Errorf("console error: %s %s", e.Entry.Text, e.Entry.URL)
		}
	}
	for _, raw := range b.eventsOf("Runtime.consoleAPICalled") {
		var e struct{ Type string }
		_ = json.Unmarshal(raw, &e)
		if e.Type == "error" || e.Type == "warning" {
			t.Errorf("console.%s: %s", e.Type, raw)
		}
	}
}
