// Package certtest makes a certificate authority and server certificates
// signed by it, as PEM files, for tests of TLS between connscope's parts
// (an agent's grpcs:// sink and the classifier's Ingest). It is for tests
// only: the keys are fresh ECDSA P-256 keys, valid for a day. WriteCA and
// WriteServer return errors, for code without a testing.TB (internal/chtest
// makes the certificate of a ClickHouse server for benchmarks too).
package certtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// validity is how long certificates are valid from now (and they are
// valid from an hour ago).
const validity = 24 * time.Hour

// CA is a certificate authority whose certificate is in CertFile.
type CA struct {
	CertFile string
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	serial   int64
}

// NewCA makes a CA named name and writes its certificate to dir/name-ca.pem.
func NewCA(tb testing.TB, dir, name string) *CA {
	tb.Helper()
	ca, err := WriteCA(dir, name)
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

// WriteCA is NewCA returning its error.
func WriteCA(dir, name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name + " CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{CertFile: filepath.Join(dir, name+"-ca.pem"), cert: cert, key: key, serial: 1}
	return ca, writePEM(ca.CertFile, "CERTIFICATE", der)
}

// Server signs a server certificate named cn for 127.0.0.1, ::1 and
// localhost, and writes it and its key to certFile and keyFile (replacing
// them: a rotation). With names, the certificate holds those DNS names
// instead, and no address.
func (ca *CA) Server(tb testing.TB, cn, certFile, keyFile string, names ...string) {
	tb.Helper()
	if err := ca.WriteServer(cn, certFile, keyFile, names...); err != nil {
		tb.Fatal(err)
	}
}

// WriteServer is Server returning its error.
func (ca *CA) WriteServer(cn, certFile, keyFile string, names ...string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	ca.serial++
	dns, ips := []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if len(names) > 0 {
		dns, ips = names, nil
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dns,
		IPAddresses:  ips,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(keyFile, "EC PRIVATE KEY", kder); err != nil {
		return err
	}
	return writePEM(certFile, "CERTIFICATE", der)
}

// ServerConfig is a server TLS configuration (TLS 1.2 or later) with a
// certificate named cn that the CA signs (for names, as Server).
func (ca *CA) ServerConfig(tb testing.TB, cn string, names ...string) *tls.Config {
	tb.Helper()
	dir := tb.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Server(tb, cn, certFile, keyFile, names...)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
}

// Pool is a pool that trusts the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// writePEM writes one PEM block through a temporary file and a rename, as
// a Secret volume's update does, so that a reader never sees half a file.
func writePEM(path, typ string, der []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
