package dashboard

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Result()
}

func TestHandlerServesAssetsWithTheirContentTypes(t *testing.T) {
	h := Handler()
	for _, tc := range []struct {
		path, contentType, contains string
	}{
		{"/", "text/html; charset=utf-8", `<script src="app.js">`},
		{"/app.js", "text/javascript; charset=utf-8", "/radar/tcp_resets_timeouts/timeseries_groups"},
		{"/style.css", "text/css; charset=utf-8", "--post_psh"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			res := get(t, h, http.MethodGet, tc.path)
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: status %d, want 200", tc.path, res.StatusCode)
			}
			if got := res.Header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("GET %s: Content-Type %q, want %q", tc.path, got, tc.contentType)
			}
			if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", tc.path, got)
			}
			if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
				t.Errorf("GET %s: Content-Security-Policy %q does not restrict to the same origin", tc.path, csp)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("GET %s: body does not contain %q", tc.path, tc.contains)
			}
		})
	}
}

func TestHandlerUnderAPrefix(t *testing.T) {
	h := http.StripPrefix("/dashboard", Handler())
	for _, p := range []string{"/dashboard/", "/dashboard/app.js", "/dashboard/style.css"} {
		if res := get(t, h, http.MethodGet, p); res.StatusCode != http.StatusOK {
			t.Errorf("GET %s through StripPrefix: status %d, want 200", p, res.StatusCode)
		}
	}
}

func TestHandlerRejectsOtherMethodsAndUnknownFiles(t *testing.T) {
	h := Handler()
	if res := get(t, h, http.MethodPost, "/"); res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: status %d, want 405", res.StatusCode)
	}
	if res := get(t, h, http.MethodGet, "/nope.js"); res.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nope.js: status %d, want 404", res.StatusCode)
	}
	if res := get(t, h, http.MethodHead, "/app.js"); res.StatusCode != http.StatusOK {
		t.Errorf("HEAD /app.js: status %d, want 200", res.StatusCode)
	}
}

// xmlNamespaces are URIs that name a namespace and are never fetched.
var xmlNamespaces = map[string]bool{"http://www.w3.org/2000/svg": true}

// TestAssetsReferenceOnlyTheSameOrigin pins the air-gap rule: no CDN, no
// external fonts, no absolute URLs at all in what the page loads.
func TestAssetsReferenceOnlyTheSameOrigin(t *testing.T) {
	absolute := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s"'<>)]*`)
	protocolRelative := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']//|url\(\s*["']?//|@import`)
	err := fs.WalkDir(Static(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(Static(), path)
		if err != nil {
			return err
		}
		for _, m := range absolute.FindAllString(string(b), -1) {
			if strings.HasPrefix(strings.ToLower(m), "http") && !xmlNamespaces[m] {
				t.Errorf("%s references an external URL %q; clusters are air-gapped, embed it instead", path, m)
			}
		}
		if m := protocolRelative.FindString(string(b)); m != "" {
			t.Errorf("%s has a protocol-relative or imported reference %q", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestIndexReferencesEmbeddedFiles checks that every local src/href of the
// page is served by the handler.
func TestIndexReferencesEmbeddedFiles(t *testing.T) {
	b, err := fs.ReadFile(Static(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"#?:]+)"`).FindAllStringSubmatch(string(b), -1)
	if len(refs) < 2 {
		t.Fatalf("index.html: found %d local references, want at least app.js and style.css", len(refs))
	}
	for _, r := range refs {
		if res := get(t, Handler(), http.MethodGet, "/"+r[1]); res.StatusCode != http.StatusOK {
			t.Errorf("index.html references %q, which the handler answers with %d", r[1], res.StatusCode)
		}
	}
}
