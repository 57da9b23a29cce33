package controllers

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
	"github.com/connscope/connscope/internal/envtestsuite"
)

var testNames = []string{"connscope-web-classifier.connscope-system.svc", "connscope-web-classifier"}

// verifyServing checks that pki's serving pair matches and chains to its
// CA for every name, valid at at.
func verifyServing(t *testing.T, pki ingestPKI, names []string, at time.Time) {
	t.Helper()
	ca, _, err := parseCA(pki.caCert, pki.caKey)
	if err != nil {
		t.Fatalf("CA: %v", err)
	}
	if err := servingFits(pki.cert, pki.key, ca, names, at); err != nil {
		t.Fatalf("serving certificate: %v", err)
	}
}

// notAfter is the serving certificate's expiry.
func notAfter(t *testing.T, certPEM []byte) time.Time {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.NotAfter
}

func TestIngestPKIIsIssuedKeptAndRenewed(t *testing.T) {
	now := time.Now()
	pki, issued, err := ensureIngestPKI(ingestPKI{}, testNames, now)
	if err != nil || issued != "certificate authority and serving certificate" {
		t.Fatalf("from nothing: %q, %v", issued, err)
	}
	verifyServing(t, pki, testNames, now.Add(ingestServingValidity-ingestRenewBefore))
	if _, err := tls.X509KeyPair(pki.caCert, pki.key); err == nil {
		t.Fatal("the serving key matches the CA's certificate")
	}

	// Good ones are kept as they are.
	again, issued, err := ensureIngestPKI(pki, testNames, now.Add(24*time.Hour))
	if err != nil || issued != "" || !slices.Equal(again.cert, pki.cert) || !slices.Equal(again.caCert, pki.caCert) {
		t.Fatalf("a day later: issued %q, %v, same cert %v", issued, err, slices.Equal(again.cert, pki.cert))
	}

	// Within 30 days of expiry, or for other names, the serving
	// certificate is issued again by the same CA.
	for _, tc := range []struct {
		name  string
		at    time.Time
		names []string
	}{
		{"near expiry", now.Add(ingestServingValidity - 20*24*time.Hour), testNames},
		{"other names", now, append(testNames, "connscope-web-classifier.other.svc")},
	} {
		renewed, issued, err := ensureIngestPKI(pki, tc.names, tc.at)
		if err != nil || issued != "serving certificate" {
			t.Fatalf("%s: issued %q, %v", tc.name, issued, err)
		}
		if !slices.Equal(renewed.caCert, pki.caCert) || !slices.Equal(renewed.caKey, pki.caKey) {
			t.Errorf("%s: the CA changed", tc.name)
		}
		verifyServing(t, renewed, tc.names, tc.at.Add(ingestRenewBefore))
	}

	// A year before the CA expires, it is made again, and so is the
	// serving certificate.
	late := now.Add(ingestCAValidity - ingestCARenewBefore + 24*time.Hour)
	newCA, issued, err := ensureIngestPKI(pki, testNames, late)
	if err != nil || issued != "certificate authority and serving certificate" || slices.Equal(newCA.caCert, pki.caCert) {
		t.Fatalf("CA near its expiry: issued %q, %v", issued, err)
	}
	verifyServing(t, newCA, testNames, late)
	if _, issued, _ := ensureIngestPKI(pki, testNames, late.Add(-48*time.Hour)); issued == "certificate authority and serving certificate" {
		t.Error("the CA was made again more than a year before it expires")
	}

	// A broken CA (a key that does not match) is made again, and so is the
	// serving pair it signed.
	other, _, _ := ensureIngestPKI(ingestPKI{}, testNames, now)
	broken := pki
	broken.caKey = other.caKey
	fixed, issued, err := ensureIngestPKI(broken, testNames, now)
	if err != nil || issued != "certificate authority and serving certificate" || slices.Equal(fixed.caCert, pki.caCert) {
		t.Fatalf("broken CA: issued %q, %v", issued, err)
	}
	verifyServing(t, fixed, testNames, now)
}

// A ClickHouse credentials Secret may not be one of connscope's ingest
// Secrets: the pods would get its token or the CA's key as a password.
func TestCredentialsSecretIsNotAnIngestSecret(t *testing.T) {
	for name, ok := range map[string]bool{
		"clickhouse":              true,
		"connscope-clickhouse":    true,
		"connscope-web-ingest":    false,
		"connscope-web-ingest-ca": false,
		"connscope-ingest-ca":     false,
	} {
		p := goldenPolicy()
		p.Spec.Sink = samplingv1alpha1.SinkSpec{Type: samplingv1alpha1.SinkClickHouse, ClickHouse: &samplingv1alpha1.ClickHouseSpec{
			Address: "ch:8123", CredentialsSecret: &samplingv1alpha1.SecretKeysRef{Name: name},
		}}
		err := checkCredentialsSecret(p)
		if (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), name)) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// The ingest Secrets carry the policy's CA and serving certificate for
// its classifier Service: the serving pair in the classifier's ingest
// Secret, the CA's certificate alone in the agents', the CA's key in a
// Secret no pod mounts (a kubelet may read only its pods' Secrets); the
// classifier serves with the pair and the agents trust the CA; a
// certificate near its expiry is issued again by the same CA.
func TestIngestCertificatesChainAndTheCAKeyIsInNoPodsSecret(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "tls", nil)
	names := ingestDNSNames(testOptions(), "tls")
	keysOf := func(s *corev1.Secret) []string {
		var keys []string
		for k := range s.Data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return keys
	}
	caSecret := func() (*corev1.Secret, error) {
		s := &corev1.Secret{}
		err := k8s.Get(ctx, client.ObjectKey{Namespace: DefaultClassifierNamespace, Name: IngestCAName("tls")}, s)
		return s, err
	}
	var pki ingestPKI
	eventually(t, wait, "ingest Secrets with certificates", func() error {
		a, cl, err := ingestSecrets("tls")
		if err != nil {
			return err
		}
		cas, err := caSecret()
		if err != nil {
			return err
		}
		for _, c := range []struct {
			s    *corev1.Secret
			want []string
		}{
			{a, []string{IngestCACertKey, IngestTokenKey}},
			{cl, []string{IngestTLSCertKey, IngestTLSKeyKey, IngestTokenKey}},
			{cas, []string{IngestCACertKey, IngestCAKeyKey}},
		} {
			if got := keysOf(c.s); !slices.Equal(got, c.want) {
				return fmt.Errorf("Secret %s/%s holds %v, want %v", c.s.Namespace, c.s.Name, got, c.want)
			}
		}
		pki = ingestPKI{caCert: cas.Data[IngestCACertKey], caKey: cas.Data[IngestCAKeyKey], cert: cl.Data[IngestTLSCertKey], key: cl.Data[IngestTLSKeyKey]}
		if !slices.Equal(a.Data[IngestCACertKey], pki.caCert) {
			return errors.New("the agents' CA differs from the CA Secret's")
		}
		return nil
	})
	verifyServing(t, pki, names, time.Now())
	if !strings.HasSuffix(names[0], ".connscope-system.svc") {
		t.Errorf("names %v", names)
	}
	eventually(t, wait, "pods wired for TLS", func() error {
		ds, err := getDS("tls")
		if err != nil {
			return err
		}
		d, err := getDeployment("tls")
		if err != nil {
			return err
		}
		for _, pod := range []corev1.PodSpec{ds.Spec.Template.Spec, d.Spec.Template.Spec} {
			for _, v := range pod.Volumes {
				if v.Secret != nil && v.Secret.SecretName == IngestCAName("tls") {
					return fmt.Errorf("a pod mounts the CA Secret: %+v", v)
				}
			}
		}
		args := d.Spec.Template.Spec.Containers[0].Args
		if !slices.Contains(args, "--ingest-tls-cert-file="+IngestCertPath) || !slices.Contains(args, "--ingest-tls-key-file="+IngestKeyPath) {
			return fmt.Errorf("classifier args %v", args)
		}
		return nil
	})
	if s := agentSettings(t, "tls"); !strings.HasPrefix(s.Sink, "grpcs://"+names[0]+":") || s.SinkCAFile != IngestCAPath {
		t.Errorf("agent sink %q, CA file %q", s.Sink, s.SinkCAFile)
	}
	if ep := getPolicy(t, "tls").Status.IngestEndpoint; !strings.HasPrefix(ep, "grpcs://") {
		t.Errorf("status ingest endpoint %q", ep)
	}

	// Plant a serving certificate 10 days from expiry (same CA): the
	// controller, watching its Secrets, issues a new one.
	ca, caKey, err := parseCA(pki.caCert, pki.caKey)
	if err != nil {
		t.Fatal(err)
	}
	old, oldKey, err := newServingCert(ca, caKey, names, time.Now().Add(-ingestServingValidity+10*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	_, cl, err := ingestSecrets("tls")
	if err != nil {
		t.Fatal(err)
	}
	cl.Data[IngestTLSCertKey], cl.Data[IngestTLSKeyKey] = old, oldKey
	if err := k8s.Update(ctx, cl); err != nil {
		t.Fatal(err)
	}
	eventually(t, wait, "the near-expiry certificate issued again", func() error {
		_, cl, err := ingestSecrets("tls")
		if err != nil {
			return err
		}
		if slices.Equal(cl.Data[IngestTLSCertKey], old) {
			return errors.New("still the planted certificate")
		}
		if left := time.Until(notAfter(t, cl.Data[IngestTLSCertKey])); left < ingestServingValidity-24*time.Hour {
			return fmt.Errorf("the new certificate expires in %v", left)
		}
		cas, err := caSecret()
		if err != nil {
			return err
		}
		if !slices.Equal(cas.Data[IngestCACertKey], pki.caCert) {
			return errors.New("the CA changed")
		}
		renewed := pki
		renewed.cert, renewed.key = cl.Data[IngestTLSCertKey], cl.Data[IngestTLSKeyKey]
		verifyServing(t, renewed, names, time.Now())
		return nil
	})
}
