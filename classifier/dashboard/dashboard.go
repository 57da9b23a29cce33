// Package dashboard serves connscope's operator dashboard: a single static
// page (HTML, CSS, JS, hand-made SVG charts) embedded in the binary, which
// talks to the classifier's Radar-compatible HTTP API on the same origin.
// No CDN, no external fonts: clusters are often air-gapped.
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
