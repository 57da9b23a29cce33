package dashboard

// The browser test against a running classifier instead of the fixture:
//
//	CONNSCOPE_DASHBOARD_API=http://127.0.0.1:8080 go test -run Live -v ./classifier/dashboard
//
// The page is still served by this package's Handler on a local test
// server; its API requests are proxied to the service (and recorded). The
// assertions hold for any data: the page loads without an error banner,
// the chart shows areas or its empty state, and selecting the first node
// the service offers reaches every endpoint and the table.

import (
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
)

// recordingProxy forwards the API to a live service, recording requests;
// Fail answers a path with an error locally instead.
type recordingProxy struct {
	proxy    *httputil.ReverseProxy
	mu       sync.Mutex
	requests []string
	fail     map[string]int
}

func newRecordingProxy(target *url.URL) *recordingProxy {
	return &recordingProxy{proxy: httputil.NewSingleHostReverseProxy(target), fail: map[string]int{}}
}

func (p *recordingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.requests = append(p.requests, r.URL.RequestURI())
	status := p.fail[r.URL.Path]
	p.mu.Unlock()
	if status != 0 {
		writeJSON(w, status, map[string]any{"success": false, "errors": []any{map[string]any{"code": status, "message": "injected failure"}}, "result": map[string]any{}})
		return
	}
	p.proxy.ServeHTTP(w, r)
}

func (p *recordingProxy) Requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.requests...)
}

func (p *recordingProxy) Fail(path string, status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if status == 0 {
		delete(p.fail, path)
	} else {
		p.fail[path] = status
	}
}

func TestDashboardLiveAPIInHeadlessChromium(t *testing.T) {
	target := os.Getenv("CONNSCOPE_DASHBOARD_API")
	if target == "" {
		t.Skip("set CONNSCOPE_DASHBOARD_API=http://host:port to run the dashboard against a running classifier's API")
	}
	exe := chromiumPath()
	if exe == "" {
		t.Skip("chromium not found: run hack/setup-browser.sh (Debian's chromium package) or set CONNSCOPE_CHROMIUM")
	}
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		t.Fatalf("CONNSCOPE_DASHBOARD_API=%q is not a URL like http://127.0.0.1:8080", target)
	}
	api := API(newRecordingProxy(u))
	srv := newTestServer(t, api)
	b := startBrowser(t, exe)
	for _, domain := range []string{"Page.enable", "Runtime.enable", "Log.enable", "Network.enable"} {
		b.must(domain, nil, nil)
	}
	b.must("Emulation.setDeviceMetricsOverride", map[string]any{"width": 1440, "height": 1000, "deviceScaleFactor": 1, "mobile": false}, nil)
	b.must("Page.navigate", map[string]any{"url": srv.URL + "/"}, nil)
	v := b.waitReady(0)
	if v.ErrorsOpen {
		t.Errorf("error banner against %s: %q", target, v.Errors)
	}
	if len(v.Areas) != len(stageKeys) && v.ChartEmpty == "" {
		t.Errorf("the chart shows %d areas and no empty state", len(v.Areas))
	}
	b.screenshot(t.TempDir(), "screenshot-live.png")
	checkCleanPage(t, b, srv.URL)

	nodes := v.OptionsRaw["node"]
	if len(nodes) == 0 {
		t.Log("the service offers no nodes in /api/v1/dimensions; the node filter is not exercised")
		return
	}
	node := nodes[0]
	before := len(api.Requests())
	b.mustEval(`(() => { const s = document.querySelector("#filters select[name=node]"); s.value = `+jsString(node)+`; s.dispatchEvent(new Event("change", { bubbles: true })); })()`, nil)
	v2 := b.waitReady(v.Generation)
	reqs := apiRequestsSince(api, before)
	for _, p := range []string{"/radar/tcp_resets_timeouts/summary", "/radar/tcp_resets_timeouts/timeseries_groups", "/api/v1/anomalies"} {
		if len(reqs[p]) == 0 {
			t.Errorf("selecting node %s did not request %s", node, p)
		}
		for _, q := range reqs[p] {
			if q.Get("node") != node {
				t.Errorf("%s requested with %v, want node=%s", p, q, node)
			}
		}
	}
	for _, r := range v2.RowsRaw {
		if r.Node != node {
			t.Errorf("a row of node %q is shown with the %s filter", r.Node, node)
			break
		}
	}
	if v2.ErrorsOpen {
		t.Errorf("error banner with node=%s: %q", node, v2.Errors)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`, "\u2028", `\u2028`, "\u2029", `\u2029`)
	return `"` + r.Replace(s) + `"`
}
