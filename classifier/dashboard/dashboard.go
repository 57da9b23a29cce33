// Package dashboard serves connscope's operator dashboard: one static page
// (index.html, style.css, app.js with hand-made SVG charts; no third-party
// code, no build step) embedded in the binary. No CDN, no external fonts:
// clusters are often air-gapped, and a test pins that.
//
// The page shows the stage shares over time as Radar does, the tag and
// signature breakdowns, and the recent anomalous connections, with filters.
// It does not compute anything itself: it reads the classifier's HTTP API
// on the same origin, with absolute paths, so the service mounts Handler
// at / (or under a prefix with http.StripPrefix) beside these endpoints:
//
//	GET /radar/tcp_resets_timeouts/summary            result.summary_0{stage: "pct"}
//	GET /radar/tcp_resets_timeouts/timeseries_groups  result.serie_0{timestamps, stage: ["pct"]}
//	GET /api/v1/tags/summary, /api/v1/signatures/summary
//	                                                  result.summary_0{name: "pct"}, result.counts{name: n}
//	GET /api/v1/tags/timeseries_groups, /api/v1/signatures/timeseries_groups
//	                                                  result.serie_0{timestamps, name: ["pct"]}
//	GET /api/v1/anomalies?limit=100                   result.connections[{time, client, server_port,
//	                                                  node, country, asn, stage, tags, signature}]
//	GET /api/v1/dimensions                            result{nodes, policies, ports, countries, asns}
//
// with the filters location, asn (a leading "-" excludes), node, port,
// ipVersion, policy, dateRange and aggInterval. An error answer
// ({"success":false,"errors":[{"message":...}]}, any status) is shown in a
// banner naming the request. The browser test (browser_test.go) runs the
// page in headless Chromium against a fixture of this contract
// (fixture_test.go).
package dashboard

import (
	"embed"
	"io/fs"
	"mime"
	"net/http"
)

//go:embed static
var assets embed.FS

func init() {
	// Some minimal images lack /etc/mime.types; make sure our assets get
	// the right types regardless of the host.
	_ = mime.AddExtensionType(".js", "text/javascript; charset=utf-8")
	_ = mime.AddExtensionType(".css", "text/css; charset=utf-8")
	_ = mime.AddExtensionType(".svg", "image/svg+xml")
}

// Static returns the embedded asset tree (index.html, app.js, style.css).
func Static() fs.FS {
	sub, err := fs.Sub(assets, "static")
	if err != nil {
		panic(err) // the embed directive guarantees the directory exists
	}
	return sub
}

// Handler serves the dashboard. Mount it at the root or under a prefix
// with http.StripPrefix; the page requests the API with absolute paths
// (/radar/..., /api/v1/...) on the same origin.
func Handler() http.Handler {
	files := http.FileServerFS(Static())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
