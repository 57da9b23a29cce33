package controllers

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

// The ingest token: a random bearer token per policy, which the policy's
// agents present to its classifier and the classifier checks
// (--ingest-token-file), so that only the policy's agents may write to
// it. It lives in a Secret of the same name in both namespaces (a pod can
// mount only a Secret of its own namespace), both owned by the policy and
// holding the same token. The controller creates it once and keeps it:
// it reads the existing Secrets on every reconcile and never generates a
// new token while either of them still holds one.
const (
	// IngestTokenKey is the Secret's key that holds the token.
	IngestTokenKey = "token"
	// ingestTokenDir is where both pods mount the Secret (read-only).
	ingestTokenDir = "/var/run/secrets/connscope"
	// ingestTokenBytes is the token's entropy before base64url encoding.
	ingestTokenBytes = 32
	// AnnotationIngestTokenHash on the classifier's pod template changes
	// when the token does: the classifier reads it only at start. (The
	// agents re-read theirs when the mounted file changes.)
	AnnotationIngestTokenHash = "sampling.connscope.dev/ingest-token-hash"
	// ComponentIngest labels the token Secrets.
	ComponentIngest = "ingest"
)

// IngestTokenPath is the token file inside the agent and classifier pods.
const IngestTokenPath = ingestTokenDir + "/" + IngestTokenKey

// IngestTokenName names a policy's token Secrets (the same in both
// namespaces).
func IngestTokenName(policy string) string { return "connscope-" + policy + "-ingest" }

// NewIngestToken returns a fresh token: 32 random bytes, base64url
// without padding (one word, as the classifier requires).
func NewIngestToken() (string, error) {
	b := make([]byte, ingestTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("ingest token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// IngestTokenHash is a short digest of the token for the classifier's pod
// template: it rolls the classifier when the token changes and reveals
// nothing of it.
func IngestTokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:8])
}

// IngestSecret is one of a policy's ingest Secrets (name in namespace)
// with data: the token and the certificates of ingest_tls.go (see
// ensureIngestSecrets for which goes where).
func IngestSecret(p *samplingv1alpha1.SamplingPolicy, namespace, name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: childMeta(p, name, namespace, ComponentIngest),
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}
}

// ingestSecretVolume mounts the keys of the policy's ingest Secret with
// mode, each as the file of its name under ingestTokenDir.
func ingestSecretVolume(policy string, mode int32, keys ...string) (corev1.Volume, corev1.VolumeMount) {
	var items []corev1.KeyToPath
	for _, k := range keys {
		items = append(items, corev1.KeyToPath{Key: k, Path: k})
	}
	v := corev1.Volume{Name: "ingest-token", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName:  IngestTokenName(policy),
		Items:       items,
		DefaultMode: &mode,
	}}}
	return v, corev1.VolumeMount{Name: "ingest-token", MountPath: ingestTokenDir, ReadOnly: true}
}
