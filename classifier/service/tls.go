package service

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// keyPairFiles serves a TLS certificate chain and key from two PEM files,
// read at each handshake (an agent's connection: rare) and parsed again
// when either changed, so that a certificate rotated in place
// (cert-manager, a Secret volume's update, a renewal script) is served
// without a restart. A rotation that cannot be read (a half-written file)
// keeps the pair served before and is logged, and tried again at the next
// handshake.
type keyPairFiles struct {
	certFile, keyFile string
	log               *slog.Logger

	mu        sync.Mutex
	cert, key []byte // the files' content when pair was read
	pair      *tls.Certificate
}

// loadKeyPairFiles reads the pair a first time: an error names the file
// and what is wrong with it.
func loadKeyPairFiles(certFile, keyFile string, log *slog.Logger) (*keyPairFiles, error) {
	k := &keyPairFiles{certFile: certFile, keyFile: keyFile, log: log}
	if _, err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

// load reads both files and, when either changed, parses the pair again.
func (k *keyPairFiles) load() (changed bool, err error) {
	certPEM, err := os.ReadFile(k.certFile)
	if err != nil {
		return false, err
	}
	keyPEM, err := os.ReadFile(k.keyFile)
	if err != nil {
		return false, err
	}
	if k.pair != nil && bytes.Equal(certPEM, k.cert) && bytes.Equal(keyPEM, k.key) {
		return false, nil
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("certificate %s and key %s: %w", k.certFile, k.keyFile, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return false, fmt.Errorf("certificate %s: %w", k.certFile, err)
		}
	}
	if time.Now().After(pair.Leaf.NotAfter) {
		k.log.Warn("ingest TLS certificate has expired: agents will refuse it", "file", k.certFile, "notAfter", pair.Leaf.NotAfter)
	}
	k.pair, k.cert, k.key = &pair, certPEM, keyPEM
	return true, nil
}

// get is tls.Config.GetCertificate.
func (k *keyPairFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch changed, err := k.load(); {
	case err != nil:
		k.log.Warn("ingest TLS certificate cannot be read: still serving the one read before", "error", err)
	case changed:
		k.log.Info("ingest TLS certificate reloaded", "file", k.certFile, "subject", k.pair.Leaf.Subject.String(), "notAfter", k.pair.Leaf.NotAfter)
	}
	return k.pair, nil
}

// serverTLS is the Ingest server's TLS configuration over the pair.
func (k *keyPairFiles) serverTLS() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: k.get}
}
