package service

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// keyPairFiles serves a TLS certificate chain and key from two PEM files,
// read again at a handshake after either file changed (its modification
// time or size), so that a certificate rotated in place (cert-manager, a
// Secret volume's update, a renewal script) is served without a restart.
// A rotation that cannot be read (a half-written file) keeps the pair
// served before and is logged, and tried again at the next handshake.
type keyPairFiles struct {
	certFile, keyFile string
	log               *slog.Logger

	mu    sync.Mutex
	stamp [2]fileStamp
	pair  *tls.Certificate
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (fileStamp, error) {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{st.ModTime(), st.Size()}, nil
}

// loadKeyPairFiles reads the pair a first time: an error names the file
// and what is wrong with it.
func loadKeyPairFiles(certFile, keyFile string, log *slog.Logger) (*keyPairFiles, error) {
	k := &keyPairFiles{certFile: certFile, keyFile: keyFile, log: log}
	if err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *keyPairFiles) load() error {
	var stamp [2]fileStamp
	for i, f := range []string{k.certFile, k.keyFile} {
		s, err := stampOf(f)
		if err != nil {
			return err
		}
		stamp[i] = s
	}
	pair, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return fmt.Errorf("certificate %s and key %s: %w", k.certFile, k.keyFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("certificate %s: %w", k.certFile, err)
	}
	pair.Leaf = leaf
	if now := time.Now(); now.After(leaf.NotAfter) {
		k.log.Warn("ingest TLS certificate has expired: agents will refuse it", "file", k.certFile, "notAfter", leaf.NotAfter)
	}
	k.pair, k.stamp = &pair, stamp
	return nil
}

// get is tls.Config.GetCertificate.
func (k *keyPairFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, f := range []string{k.certFile, k.keyFile} {
		if s, err := stampOf(f); err == nil && s != k.stamp[i] {
			if err := k.load(); err != nil {
				k.log.Warn("ingest TLS certificate changed but cannot be read: still serving the one before", "error", err)
			} else {
				k.log.Info("ingest TLS certificate reloaded", "file", k.certFile, "subject", k.pair.Leaf.Subject.String(), "notAfter", k.pair.Leaf.NotAfter)
			}
			break
		}
	}
	return k.pair, nil
}

// serverTLS is the Ingest server's TLS configuration over the pair.
func (k *keyPairFiles) serverTLS() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: k.get}
}
