package ship

import (
	"crypto/tls"
	"path/filepath"
	"testing"
)

func TestOpenRefusesBadSinkURLsWithASentenceThatSaysWhatToWrite(t *testing.T) {
	for _, tc := range []struct {
		url  string
		o    Options
		want []string
	}{
		{"", Options{}, []string{"no sink URL", "grpc://host:port"}},
		{"classifier:9000", Options{}, []string{`scheme "classifier" is not supported`, "grpc://host:port, grpcs://host:port, clickhouse://host:8123/database, clickhouses://host:8443/database or file:///"}},
		{"localhost", Options{}, []string{"has no scheme", "grpc://host:port"}},
		{"http://classifier:9000", Options{}, []string{`scheme "http" is not supported`}},
		{"grpc://", Options{}, []string{"has no host", "grpc://host:port"}},
		{"grpc://classifier", Options{}, []string{"needs a port", "grpc://host:port"}},
		{"grpcs://classifier", Options{}, []string{"needs a port", "grpcs://host:port"}},
		{"grpc://:9000", Options{}, []string{"has no host"}},
		{"grpc://classifier:http", Options{}, []string{`invalid port ":http"`, "grpc://host:port"}},
		{"grpc://classifier:-1", Options{}, []string{`invalid port ":-1"`}},
		{"grpc://classifier:0", Options{}, []string{`port "0" is not a number from 1 to 65535`}},
		{"grpc://classifier:70000", Options{}, []string{`port "70000"`}},
		{"grpc://classifier:9000/ingest", Options{}, []string{"without path, query or fragment"}},
		{"grpc://classifier:9000?tls=1", Options{}, []string{"without path, query or fragment"}},
		{"grpc://agent:pw@classifier:9000", Options{}, []string{"no user or password", "token"}},
		{"grpc:classifier:9000", Options{}, []string{"write grpc://host:port"}},
		{"grpc://classifier:9000", Options{TLSConfig: &tls.Config{}}, []string{"plaintext", "use grpcs://classifier:9000"}},
		{"grpc://classifier:9000", Options{Token: "a", TokenFile: "/b"}, []string{"a token or a token file, not both"}},
		{"grpc://classifier:9000", Options{AckTimeout: -1}, []string{"ack timeout -1ns is negative"}},
		{"file://agent.pcapng", Options{}, []string{"must be absolute", "file:///absolute/path.pcapng (three slashes)"}},
		{"file://var/lib/agent.pcapng", Options{}, []string{"must be absolute", "three slashes"}},
		{"file:agent.pcapng", Options{}, []string{"must be absolute"}},
		{"file:///var/lib/connscope/", Options{}, []string{"names a directory", "file:///var/lib/connscope/connscope.pcapng"}},
		{"file:///tmp/a.pcapng?sync=1", Options{}, []string{"no query or fragment"}},
		{"grpc://[::1:9000", Options{}, []string{`sink URL "grpc://[::1:9000"`, "give one of"}},
	} {
		s, err := Open(tc.url, tc.o)
		if err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", tc.url)
			continue
		}
		if msg := contains(err, tc.want...); msg != "" {
			t.Errorf("Open(%q): %s", tc.url, msg)
		}
	}
}

func TestOpenAcceptsTheThreeKindsOfSink(t *testing.T) {
	dir := t.TempDir()
	for _, url := range []string{
		"grpc://127.0.0.1:9000", // connects lazily: nothing listens there
		"grpc://[::1]:9000",
		"grpc://classifier.connscope-system.svc:9000/",
		"grpcs://classifier.example.com:443",
		"file://" + filepath.Join(dir, "agent.pcapng"),
		"file://localhost" + filepath.Join(dir, "other.pcapng"),
	} {
		s, err := Open(url, Options{})
		if err != nil {
			t.Errorf("Open(%q): %v", url, err)
			continue
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close of %q: %v", url, err)
		}
	}
}
