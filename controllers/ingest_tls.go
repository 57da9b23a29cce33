package controllers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// The ingest certificates: agents reach their policy's classifier over
// TLS. Per policy the controller keeps a certificate authority of its own
// and a serving certificate it signs for the classifier Service's DNS
// names:
//
//   - the CA's certificate and key in the CA Secret of the classifiers'
//     namespace (IngestCAName), which no pod mounts: a kubelet may read
//     only the Secrets of its pods, so no node can read the CA's key;
//   - the serving certificate and key in the ingest Secret of the
//     classifiers' namespace, which the classifier mounts (with the
//     token);
//   - the CA's certificate in the ingest Secret of the agents' namespace
//     (with the token): an agent's node holds no key.
//
// The CA is valid for ten years and made again a year before it expires;
// the serving certificate is valid for one year and issued again 30 days
// before it expires, or when it no longer fits (another CA, other names).
// The classifier reads its pair, and the agents their CA, again at each
// connection when the mounted files changed: nothing restarts. (When the
// CA is made again, agents whose mounted CA the kubelet has not yet
// updated refuse the new certificate for that minute or so, and keep
// their records queued.)
const (
	IngestCACertKey  = "ca.crt"
	IngestCAKeyKey   = "ca.key"
	IngestTLSCertKey = "tls.crt"
	IngestTLSKeyKey  = "tls.key"

	ingestCAValidity      = 10 * 365 * 24 * time.Hour
	ingestServingValidity = 365 * 24 * time.Hour
	// ingestRenewBefore: a serving certificate expiring within this is
	// issued again; a CA expiring within a year is made again.
	ingestRenewBefore   = 30 * 24 * time.Hour
	ingestCARenewBefore = 365 * 24 * time.Hour
)

// The files inside the pods (the ingest Secret's mount).
const (
	IngestCAPath   = ingestTokenDir + "/" + IngestCACertKey
	IngestCertPath = ingestTokenDir + "/" + IngestTLSCertKey
	IngestKeyPath  = ingestTokenDir + "/" + IngestTLSKeyKey
)

// IngestCAName names a policy's CA Secret (in the classifiers'
// namespace).
func IngestCAName(policy string) string { return "connscope-" + policy + "-ingest-ca" }

// ingestDNSNames are the names the classifier's serving certificate holds:
// the Service's, short and long.
func ingestDNSNames(opts Options, policy string) []string {
	svc, ns := ClassifierName(policy), opts.ClassifierNamespace
	return []string{svc + "." + ns + ".svc", svc + "." + ns + ".svc.cluster.local", svc + "." + ns, svc}
}

// ingestPKI is a policy's CA and serving pair, PEM.
type ingestPKI struct {
	caCert, caKey, cert, key []byte
}

// ensureIngestPKI returns the CA and serving pair to keep: the ones given
// (from the classifier's Secret) where they are still good at now, new
// ones where not. issued says what was made, for an event ("" when
// nothing was).
func ensureIngestPKI(have ingestPKI, names []string, now time.Time) (ingestPKI, string, error) {
	k := have
	issued := ""
	ca, caKey, err := parseCA(k.caCert, k.caKey)
	if err != nil || now.Add(ingestCARenewBefore).After(ca.NotAfter) {
		if k.caCert, k.caKey, err = newIngestCA(now); err != nil {
			return ingestPKI{}, "", err
		}
		if ca, caKey, err = parseCA(k.caCert, k.caKey); err != nil {
			return ingestPKI{}, "", err
		}
		issued = "certificate authority and serving certificate"
		k.cert, k.key = nil, nil
	}
	if servingFits(k.cert, k.key, ca, names, now.Add(ingestRenewBefore)) != nil {
		if k.cert, k.key, err = newServingCert(ca, caKey, names, now); err != nil {
			return ingestPKI{}, "", err
		}
		if issued == "" {
			issued = "serving certificate"
		}
	}
	return k, issued, nil
}

func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !cert.IsCA {
		return nil, nil, errors.New("not a CA of ours")
	}
	return cert, key, nil
}

// servingFits checks that the pair matches, chains to ca for every name,
// and is still valid at the instant at.
func servingFits(certPEM, keyPEM []byte, ca *x509.Certificate, names []string, at time.Time) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, n := range names {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: n, CurrentTime: at}); err != nil {
			return err
		}
	}
	return nil
}

func newIngestCA(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ingest CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "connscope ingest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(ingestCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("ingest CA: %w", err)
	}
	return encodePair(der, key)
}

func newServingCert(ca *x509.Certificate, caKey *ecdsa.PrivateKey, names []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ingest serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(ingestServingValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("ingest serving certificate: %w", err)
	}
	return encodePair(der, key)
}

func encodePair(der []byte, key *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}
