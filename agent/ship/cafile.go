package ship

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
)

// caFile is the CA bundle of a grpcs:// sink (Options.CAFile), read at
// each TLS handshake (a reconnection: rare) and parsed again when its
// content changed, so that a CA replaced in a mounted Secret is trusted at
// the next reconnection without a restart, as a rotated token is. A
// change that cannot be read (a half-written file) keeps the CAs read
// before.
type caFile struct {
	path string

	mu    sync.Mutex
	pem   []byte
	roots *x509.CertPool
}

// CheckCAFile reports whether path can serve as Options.CAFile: a
// readable file with at least one PEM certificate. (An agent checks it
// before it touches netfilter; Open checks it again.)
func CheckCAFile(path string) error {
	return (&caFile{path: path}).load()
}

// CAFileTLS is the client TLS configuration (TLS 1.2 or later) for the
// server at addr (host:port; its certificate must hold the host) that
// trusts the CA certificates of the PEM file at path, read again when the
// file changes: what a grpcs:// or clickhouses:// sink with a CA file and
// the classifier's clickhouses:// store use. An error names the file.
func CAFileTLS(path, addr string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	c, err := loadCAFile(path)
	if err != nil {
		return nil, err
	}
	return c.clientTLS(host), nil
}

// loadCAFile reads the bundle a first time: an error names the file.
func loadCAFile(path string) (*caFile, error) {
	c := &caFile{path: path}
	if err := c.load(); err != nil {
		return nil, fmt.Errorf("CA file %s: %w", path, err)
	}
	return c, nil
}

func (c *caFile) load() error {
	b, err := os.ReadFile(c.path)
	if err != nil {
		return err
	}
	if c.roots != nil && bytes.Equal(b, c.pem) {
		return nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return errors.New("holds no PEM certificate (give the CA certificate that signed the sink's)")
	}
	c.roots, c.pem = pool, b
	return nil
}

// current returns the CAs to trust now.
func (c *caFile) current() *x509.CertPool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.load() // on error the CAs read before stay
	return c.roots
}

// clientTLS is the TLS configuration (TLS 1.2 or later) of a sink at host
// (the name or address its certificate must hold) that trusts the file's
// current CAs.
// crypto/tls verifies against a fixed pool, so its own verification is
// turned off and VerifyConnection does the same checks (chain to a CA of
// the file, the host's name or address, server authentication) with the
// pool of the moment; a handshake fails, and no token is sent, unless
// they pass.
func (c *caFile) clientTLS(host string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, InsecureSkipVerify: true}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tls: the sink presented no certificate")
		}
		opts := x509.VerifyOptions{
			Roots:         c.current(),
			DNSName:       host,
			Intermediates: x509.NewCertPool(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("tls: the sink's certificate is not trusted by %s: %w", c.path, err)
		}
		return nil
	}
	return cfg
}
