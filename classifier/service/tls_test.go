package service_test

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/classifier/service"
	"github.com/connscope/connscope/internal/certtest"
)

// TestIngestServesTLS: with a certificate and key, Ingest serves TLS. An
// agent's grpcs:// sink that trusts the CA delivers batches, which are
// classified; a plaintext sink and a sink that does not trust the CA are
// refused; and a certificate replaced in its files is served at the next
// connection, without a restart.
func TestIngestServesTLS(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.NewCA(t, dir, "connscope")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Server(t, "classifier-1", certFile, keyFile)
	cfg := config(t, filepath.Join(dir, "connscope.db"))
	cfg.TLSCertFile, cfg.TLSKeyFile = certFile, keyFile
	s, stop := run(t, cfg)
	defer stop()

	// send delivers a batch and leaves the stream open (while no stream of
	// the node is connected, its engine's clock waits for it).
	send := func(url string, tc *tls.Config) error {
		sink, err := ship.Open(url, ship.Options{Node: "node-a", Policy: "web", Token: "tok", TLSConfig: tc, AckTimeout: 5 * time.Second})
		if err != nil {
			return err
		}
		t.Cleanup(func() { sink.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return sink.Send(ctx, resets(3))
	}
	if err := send("grpcs://"+s.GRPCAddr(), &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}); err != nil {
		t.Fatalf("grpcs:// sink trusting the CA: %v", err)
	}
	url := "http://" + s.HTTPAddr() + "/radar/tcp_resets_timeouts/summary?dateRange=1d"
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, sum := get(t, url)
		if code == 200 && sum.Result.Connections.Classified == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the batch sent over TLS was not classified in time: %d %+v", code, sum)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := send("grpc://"+s.GRPCAddr(), nil); err == nil {
		t.Error("a plaintext sink was accepted by a TLS server")
	}
	if err := send("grpcs://"+s.GRPCAddr(), &tls.Config{MinVersion: tls.VersionTLS12}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a sink that trusts only the system's roots: %v, want a certificate error", err)
	}

	served := func() string {
		c, err := tls.Dial("tcp", s.GRPCAddr(), &tls.Config{RootCAs: ca.Pool(), NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if cn := served(); cn != "classifier-1" {
		t.Fatalf("served %q", cn)
	}
	ca.Server(t, "classifier-2", certFile, keyFile) // rotated in place
	if cn := served(); cn != "classifier-2" {
		t.Errorf("after the rotation the server still presents %q", cn)
	}
	// A rotation caught half done (a certificate that does not parse) keeps
	// the pair served before.
	if err := os.WriteFile(certFile, []byte("not yet"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cn := served(); cn != "classifier-2" {
		t.Errorf("with an unreadable certificate file the server presents %q", cn)
	}
}

func TestIngestTLSFilesAreChecked(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.NewCA(t, dir, "connscope")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Server(t, "classifier", certFile, keyFile)
	for _, tc := range []struct {
		name      string
		cert, key string
		want      string
	}{
		{"certificate only", certFile, "", "both a certificate file and a key file"},
		{"missing key", certFile, filepath.Join(dir, "none.key"), "none.key"},
		{"key is the certificate", certFile, certFile, "rather than a key"},
	} {
		cfg := config(t, filepath.Join(t.TempDir(), "connscope.db"))
		cfg.TLSCertFile, cfg.TLSKeyFile = tc.cert, tc.key
		s, err := service.Start(context.Background(), cfg)
		if err == nil {
			s.Run(canceled())
			t.Errorf("%s: started", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
