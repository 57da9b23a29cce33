package controllers

import (
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

// Paths and identities inside the classifier's pod.
const (
	classifierDataDir  = "/var/lib/connscope"
	classifierGeoIPDir = "/var/lib/connscope-geoip"
	// classifierUID is the unprivileged user the classifier runs as.
	classifierUID = 65532
	// DefaultIdleTimeout is the method's idle timeout.
	DefaultIdleTimeout = 3 * time.Second
)

// defaultClassifierResources are the classifier's requests and limits
// unless the policy sets its own.
func defaultClassifierResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("100m"),
			corev1.ResourceMemory: resource.MustParse("128Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse("1Gi"),
		},
	}
}

// ClassifierServiceAccount is the classifier's identity; it mounts no
// token until the classifier needs the API (e.g. to review agents' tokens).
func ClassifierServiceAccount(p *samplingv1alpha1.SamplingPolicy, opts Options) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   childMeta(p, ClassifierName(p.Name), opts.ClassifierNamespace, ComponentClassifier),
		AutomountServiceAccountToken: ptr.To(false),
	}
}

// ClassifierService exposes the classifier's gRPC ingest (for the agents)
// and its HTTP API. The ingest port carries TLS where the classifier
// serves it (servesIngest): no appProtocol then, as the values Kubernetes
// defines (kubernetes.io/h2c) say cleartext, and a mesh that trusted one
// would try to parse the TLS.
func ClassifierService(p *samplingv1alpha1.SamplingPolicy, opts Options) *corev1.Service {
	grpcProtocol := ptr.To("kubernetes.io/h2c")
	if servesIngest(p) {
		grpcProtocol = nil
	}
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: childMeta(p, ClassifierName(p.Name), opts.ClassifierNamespace, ComponentClassifier),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: selectorLabels(p.Name, ComponentClassifier),
			Ports: []corev1.ServicePort{
				{Name: "grpc", Port: ClassifierGRPCPort, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP, AppProtocol: grpcProtocol},
				{Name: "http", Port: ClassifierHTTPPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("http")},
			},
		},
	}
}

// ClassifierVolumeClaim is the classifier's store volume, or nil when the
// policy asks for none (an emptyDir then) or uses ClickHouse.
func ClassifierVolumeClaim(p *samplingv1alpha1.SamplingPolicy, opts Options) *corev1.PersistentVolumeClaim {
	st := p.Spec.Sink.Classifier.Storage
	if st == nil || p.Spec.Sink.Type == samplingv1alpha1.SinkClickHouse {
		return nil
	}
	return &corev1.PersistentVolumeClaim{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
		ObjectMeta: childMeta(p, ClassifierDataName(p.Name), opts.ClassifierNamespace, ComponentClassifier),
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: st.StorageClassName,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: st.Size},
			},
		},
	}
}

// servesIngest reports whether the policy's classifier receives the
// agents' records (the Classifier sink); with ClickHouse the agents insert
// there and the classifier only reads.
func servesIngest(p *samplingv1alpha1.SamplingPolicy) bool {
	return p.Spec.Sink.Type != samplingv1alpha1.SinkClickHouse || p.Spec.Sink.ClickHouse == nil
}

// ClassifierArgs are the classifier's command line for a policy. Agents
// must present the policy's ingest token (mounted at IngestTokenPath), and
// with the Classifier sink the classifier serves Ingest over TLS with the
// policy's serving certificate (mounted at IngestCertPath and
// IngestKeyPath; see ingest_tls.go).
func ClassifierArgs(p *samplingv1alpha1.SamplingPolicy) []string {
	idle := DefaultIdleTimeout
	if p.Spec.IdleTimeout != nil {
		idle = p.Spec.IdleTimeout.Duration
	}
	args := []string{
		"classifier",
		fmt.Sprintf("--grpc-addr=:%d", ClassifierGRPCPort),
		fmt.Sprintf("--http-addr=:%d", ClassifierHTTPPort),
		"--policy=" + p.Name,
		"--idle-timeout=" + idle.String(),
		"--ingest-token-file=" + IngestTokenPath,
		"--log-json",
	}
	if !servesIngest(p) {
		args = append(args, "--store="+clickHouseURL(p.Spec.Sink.ClickHouse))
		if _, _, ok := clickHouseCAVolume(p); ok {
			args = append(args, "--store-ca-file="+ClickHouseCAPath)
		}
	} else {
		args = append(args, "--store=sqlite://"+classifierDataDir+"/connscope.db",
			"--ingest-tls-cert-file="+IngestCertPath, "--ingest-tls-key-file="+IngestKeyPath)
	}
	if p.Spec.Sink.Classifier.GeoIP != nil {
		args = append(args, "--geoip-dir="+classifierGeoIPDir)
	}
	return args
}

// ClassifierDeployment runs a policy's classifier under the restricted pod
// security standard: non-root, no capabilities, read-only root
// filesystem, seccomp RuntimeDefault. With the Classifier sink it runs one
// replica and replaces it with Recreate (one writer of the SQLite store);
// with ClickHouse it rolls. tokenHash is IngestTokenHash of the policy's
// ingest token: the classifier reads the token only at start, so a new
// token rolls it.
func ClassifierDeployment(p *samplingv1alpha1.SamplingPolicy, tokenHash string, opts Options) *appsv1.Deployment {
	name := ClassifierName(p.Name)
	cs := p.Spec.Sink.Classifier
	image := opts.Image
	if cs.Image != "" {
		image = cs.Image
	}
	resources := defaultClassifierResources()
	if cs.Resources != nil {
		resources = *cs.Resources.DeepCopy()
	}
	clickhouse := p.Spec.Sink.Type == samplingv1alpha1.SinkClickHouse
	replicas := ptr.Deref(cs.Replicas, 1)
	strategy := appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	if clickhouse {
		strategy = appsv1.DeploymentStrategy{
			Type: appsv1.RollingUpdateDeploymentStrategyType,
			RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxUnavailable: ptr.To(intstr.FromInt32(0)),
				MaxSurge:       ptr.To(intstr.FromInt32(1)),
			},
		}
	}

	data := corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	if pvc := ClassifierVolumeClaim(p, opts); pvc != nil {
		data.VolumeSource = corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name}}
	}
	volumes := []corev1.Volume{
		data,
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	mounts := []corev1.VolumeMount{
		{Name: "data", MountPath: classifierDataDir},
		{Name: "tmp", MountPath: "/tmp"},
	}
	// Readable by the classifier's group (fsGroup) only; the serving pair
	// only where the classifier serves Ingest.
	keys := []string{IngestTokenKey}
	if servesIngest(p) {
		keys = append(keys, IngestTLSCertKey, IngestTLSKeyKey)
	}
	tokenVolume, tokenMount := ingestSecretVolume(p.Name, 0o440, keys...)
	volumes = append(volumes, tokenVolume)
	mounts = append(mounts, tokenMount)
	if g := cs.GeoIP; g != nil {
		volumes = append(volumes, corev1.Volume{Name: "geoip", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: g.ClaimName, ReadOnly: true},
		}})
		mounts = append(mounts, corev1.VolumeMount{Name: "geoip", MountPath: classifierGeoIPDir, ReadOnly: true})
	}
	if v, m, ok := clickHouseCAVolume(p); ok {
		volumes, mounts = append(volumes, v), append(mounts, m)
	}
	env := clickHouseCredentialsEnv(p)

	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: childMeta(p, name, opts.ClassifierNamespace, ComponentClassifier),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(p.Name, ComponentClassifier)},
			Strategy: strategy,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      objectLabels(p.Name, ComponentClassifier),
					Annotations: map[string]string{AnnotationIngestTokenHash: tokenHash},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName:           name,
					AutomountServiceAccountToken: ptr.To(false),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						RunAsUser:      ptr.To[int64](classifierUID),
						RunAsGroup:     ptr.To[int64](classifierUID),
						FSGroup:        ptr.To[int64](classifierUID),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					Containers: []corev1.Container{{
						Name:            "classifier",
						Image:           image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Args:            ClassifierArgs(p),
						Env:             env,
						Ports: []corev1.ContainerPort{
							{Name: "grpc", ContainerPort: ClassifierGRPCPort, Protocol: corev1.ProtocolTCP},
							{Name: "http", ContainerPort: ClassifierHTTPPort, Protocol: corev1.ProtocolTCP},
						},
						Resources: resources,
						LivenessProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
							PeriodSeconds:    10,
							FailureThreshold: 3,
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}},
							PeriodSeconds:    5,
							FailureThreshold: 2,
						},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							RunAsNonRoot:             ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
						VolumeMounts: mounts,
					}},
					Volumes: volumes,
				},
			},
		},
	}
}

// clickHouseCredentialsEnv gives the classifier's and the agents'
// containers the ClickHouse user name and password from the policy's
// credentialsSecret, as the environment variables agent/ship and
// classifier/chstore read. The Secret is looked up in the pod's own
// namespace, so with credentials it must exist in the classifier's and in
// the agents' namespace; the controller never reads it. Nil without a
// ClickHouse sink or without credentials.
// checkCredentialsSecret refuses a ClickHouse credentials Secret that is
// one of connscope's ingest Secrets (IngestTokenName, IngestCAName, of
// any policy): naming one would hand its token or the CA's key to the
// pods as a password, and make the CA Secret one that a pod mounts.
func checkCredentialsSecret(p *samplingv1alpha1.SamplingPolicy) error {
	ch := p.Spec.Sink.ClickHouse
	if p.Spec.Sink.Type != samplingv1alpha1.SinkClickHouse || ch == nil || ch.CredentialsSecret == nil {
		return nil
	}
	n := ch.CredentialsSecret.Name
	if strings.HasPrefix(n, "connscope-") && (strings.HasSuffix(n, "-ingest") || strings.HasSuffix(n, "-ingest-ca")) {
		return fmt.Errorf("spec.sink.clickhouse.credentialsSecret.name %q is one of connscope's ingest Secrets: give the Secret that holds the ClickHouse user and password", n)
	}
	return nil
}

func clickHouseCredentialsEnv(p *samplingv1alpha1.SamplingPolicy) []corev1.EnvVar {
	ch := p.Spec.Sink.ClickHouse
	if p.Spec.Sink.Type != samplingv1alpha1.SinkClickHouse || ch == nil || ch.CredentialsSecret == nil {
		return nil
	}
	ref := ch.CredentialsSecret
	key := func(k, def string) string {
		if k == "" {
			return def
		}
		return k
	}
	return []corev1.EnvVar{
		{Name: "CONNSCOPE_CLICKHOUSE_USERNAME", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: ref.Name}, Key: key(ref.UsernameKey, "username"),
		}}},
		{Name: "CONNSCOPE_CLICKHOUSE_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: ref.Name}, Key: key(ref.PasswordKey, "password"),
		}}},
	}
}
