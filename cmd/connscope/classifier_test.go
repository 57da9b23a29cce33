package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
	"github.com/connscope/connscope/controllers"
	"github.com/connscope/connscope/internal/certtest"
)

func runClassifier(ctx context.Context, args ...string) error {
	root := newRootCommand()
	root.SetArgs(append([]string{"classifier"}, args...))
	root.SetOut(new(strings.Builder))
	root.SetErr(new(strings.Builder))
	return root.ExecuteContext(ctx)
}

func TestClassifierBadFlagsNameTheFlag(t *testing.T) {
	dir := t.TempDir()
	db := "--store=sqlite://" + filepath.Join(dir, "c.db")
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--store=clickhouse://ch:8123"}, "--store"},
		{[]string{"--store=clickhouse://user:pw@ch:8123/connscope"}, "--store"},
		{[]string{"--store=clickhouse://ch:8123/connscope", "--window=7m"}, "window"},
		{[]string{"--store=clickhouse://ch:8123/connscope", "--store-ca-file=" + empty}, "use clickhouses://ch:8123/connscope"},
		{[]string{"--store=clickhouses://ch/connscope", "--store-ca-file=" + empty}, "--store-ca-file: CA file " + empty},
		{[]string{db, "--store-ca-file=" + empty}, "only a clickhouses:// store checks a certificate"},
		{[]string{"--store=sqlite://relative.db"}, "--store"},
		{[]string{"--store=/var/lib/x.db"}, "--store"},
		{[]string{db, "--retention=forever"}, "--retention"},
		{[]string{db, "--retention=-3d"}, "--retention"},
		{[]string{db, "--ingest-token-file=" + filepath.Join(dir, "missing")}, "--ingest-token-file"},
		{[]string{db, "--ingest-token-file=" + empty}, "--ingest-token-file"},
		{[]string{db, "--geoip-dir=" + filepath.Join(dir, "nope")}, "--geoip-dir"},
		{[]string{db, "--ingest-tls-cert-file=" + empty}, "--ingest-tls-key-file"},
		{[]string{db, "--ingest-tls-key-file=" + empty}, "--ingest-tls-cert-file"},
		{[]string{db, "--ingest-tls-cert-file=" + empty, "--ingest-tls-key-file=" + filepath.Join(dir, "missing.key")}, "ingest TLS"},
		{[]string{db, "--grpc-addr=9443"}, "gRPC address"},
		{[]string{db, "--idle-timeout=1us"}, "idle timeout"},
		{[]string{db, "--packet-cap=0", "--packet-cap=65"}, "packet cap"},
		{[]string{db, "extra"}, "unknown command"},
	} {
		err := runClassifier(context.Background(), tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "c.db")); err == nil {
		t.Error("a refused configuration created the store")
	}
}

// The controller renders the classifier's command line; every flag it uses
// must be accepted (addresses and paths moved into the test's reach).
func TestClassifierAcceptsTheControllersArgs(t *testing.T) {
	p := &samplingv1alpha1.SamplingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "edge"}}
	p.Spec.IdleTimeout = &metav1.Duration{Duration: 3 * time.Second}
	p.Spec.Sink.Type = samplingv1alpha1.SinkClassifier
	p.Spec.Sink.Classifier.GeoIP = &samplingv1alpha1.GeoIPSpec{ClaimName: "geoip"}
	args := controllers.ClassifierArgs(p)
	if args[0] != "classifier" {
		t.Fatalf("controller args %v", args)
	}
	dir := t.TempDir()
	ca := certtest.NewCA(t, dir, "connscope")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Server(t, "classifier", certFile, keyFile)
	var got []string
	for _, a := range args[1:] {
		switch {
		case strings.HasPrefix(a, "--ingest-tls-cert-file="):
			a = "--ingest-tls-cert-file=" + certFile
		case strings.HasPrefix(a, "--ingest-tls-key-file="):
			a = "--ingest-tls-key-file=" + keyFile
		case strings.HasPrefix(a, "--grpc-addr="), strings.HasPrefix(a, "--http-addr="):
			a = a[:strings.Index(a, "=")+1] + "127.0.0.1:0"
		case strings.HasPrefix(a, "--store="):
			a = "--store=sqlite://" + filepath.Join(dir, "connscope.db")
		case strings.HasPrefix(a, "--geoip-dir="):
			a = "--geoip-dir=" + dir
		}
		got = append(got, a)
	}
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte("s3cret\n"), 0o600)
	got = append(got, "--ingest-token-file="+tok)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runClassifier(ctx, got...) }()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("classifier %v ended early: %v", got, err)
	default:
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("classifier %v: %v", got, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("classifier did not stop")
	}
	if _, err := os.Stat(filepath.Join(dir, "connscope.db")); err != nil {
		t.Errorf("no store: %v", err)
	}
}
