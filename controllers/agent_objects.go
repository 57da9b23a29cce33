package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/connscope/connscope/agent"
	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

// Allocation is what a policy was given: its label bit and NFLOG group.
type Allocation struct {
	LabelBit   int32
	NFLOGGroup int32
}

// agentConfigPath is where the agent reads its settings.
const (
	agentConfigDir  = "/etc/connscope"
	agentConfigFile = "agent.json"
	// xtablesLock is iptables' lock file. Mounted from the host so that the
	// agents and kube-proxy (which mounts it too) take turns.
	xtablesLock = "/run/xtables.lock"
)

// hostIPEnv is the agent's variable holding the node's address.
const hostIPEnv = "HOST_IP"

// AgentTerminationGrace is how long the kubelet lets an agent stop: it
// removes its rules (a few iptables calls per family) and then flushes its
// queue to the classifier for at most the agent's shutdown timeout (10s).
const AgentTerminationGrace = 30

// AgentMetricsPort is the port of a policy's agents: the base port plus the
// group's offset, so that two policies' agents on one node (sharing its
// network) never collide.
func AgentMetricsPort(opts Options, alloc Allocation) int32 {
	return opts.AgentMetricsPort + alloc.NFLOGGroup - opts.NFLOGGroups.Min
}

// IngestEndpoint is a policy's classifier's Ingest service (gRPC over
// TLS), where its agents ship with the Classifier sink.
func IngestEndpoint(opts Options, policy string) string {
	return fmt.Sprintf("grpcs://%s.%s.svc:%d", ClassifierName(policy), opts.ClassifierNamespace, ClassifierGRPCPort)
}

// AgentSink is where a policy's agents ship their records: the
// classifier's Ingest, or with the ClickHouse sink ClickHouse itself (at
// scale the agents insert there, agent/ship's clickhouse sink, and the
// classifier replicas read it).
func AgentSink(opts Options, p *samplingv1alpha1.SamplingPolicy) string {
	if servesIngest(p) {
		return IngestEndpoint(opts, p.Name)
	}
	return clickHouseURL(p.Spec.Sink.ClickHouse)
}

// clickHouseURL is the ClickHouse database of a policy's ClickHouse sink,
// as the agents' sink and the classifier's store: clickhouses:// (HTTPS)
// with tls set, clickhouse:// without.
func clickHouseURL(ch *samplingv1alpha1.ClickHouseSpec) string {
	db := ch.Database
	if db == "" {
		db = "connscope"
	}
	scheme := "clickhouse://"
	if ch.TLS != nil {
		scheme = "clickhouses://"
	}
	return scheme + ch.Address + "/" + db
}

// The mount of a ClickHouse CA Secret (spec.sink.clickhouse.tls.caSecret),
// in the agents' and the classifier's pods.
const (
	clickHouseCADir  = "/var/run/connscope/clickhouse-ca"
	clickHouseCAFile = "ca.crt"
	// ClickHouseCAPath is the CA file the agents' sinkCAFile and the
	// classifier's --store-ca-file name.
	ClickHouseCAPath = clickHouseCADir + "/" + clickHouseCAFile
)

// clickHouseCAVolume is the volume and mount of the policy's ClickHouse CA
// Secret, or ok false when the policy has none. The volume is optional: a
// missing Secret would otherwise hold the pods in ContainerCreating, which
// no condition explains, while this way the agents and the classifier
// start, fail on the missing CA file with a message that names it, and the
// policy's status quotes that (AgentPodsFailing), as it does for a missing
// credentials Secret (CreateContainerConfigError).
func clickHouseCAVolume(p *samplingv1alpha1.SamplingPolicy) (v corev1.Volume, m corev1.VolumeMount, ok bool) {
	ch := p.Spec.Sink.ClickHouse
	if servesIngest(p) || ch.TLS == nil || ch.TLS.CASecret == nil {
		return v, m, false
	}
	key := ch.TLS.CASecret.Key
	if key == "" {
		key = "ca.crt"
	}
	v = corev1.Volume{Name: "clickhouse-ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName:  ch.TLS.CASecret.Name,
		Items:       []corev1.KeyToPath{{Key: key, Path: clickHouseCAFile}},
		DefaultMode: ptr.To[int32](0o444),
		Optional:    ptr.To(true),
	}}}
	return v, corev1.VolumeMount{Name: "clickhouse-ca", MountPath: clickHouseCADir, ReadOnly: true}, true
}

// ClassifierEndpoint is the URL of a policy's classifier HTTP API.
func ClassifierEndpoint(opts Options, policy string) string {
	return fmt.Sprintf("http://%s.%s.svc:%d", ClassifierName(policy), opts.ClassifierNamespace, ClassifierHTTPPort)
}

// AgentConfig is the agent's settings for a policy, in the structure the
// agent reads (agent.Config), checked by the agent's own Validate: a
// policy the agent would refuse is reported on the policy rather than in
// crash-looping pods.
func AgentConfig(p *samplingv1alpha1.SamplingPolicy, alloc Allocation, opts Options) (agent.Config, error) {
	c := agent.DefaultConfig()
	c.Policy = p.Name
	prob, err := strconv.ParseFloat(p.Spec.Probability, 64)
	if err != nil {
		return agent.Config{}, fmt.Errorf("probability %q: %w", p.Spec.Probability, err)
	}
	c.Probability = prob
	if p.Spec.PacketCap != 0 {
		c.PacketCap = int(p.Spec.PacketCap)
	}
	c.LabelBit = int(alloc.LabelBit)
	c.NFLOGGroup = int(alloc.NFLOGGroup)
	for _, port := range p.Spec.ServerPorts {
		c.Ports = append(c.Ports, int(port))
	}
	c.ExcludeCIDRs = append([]string(nil), p.Spec.ExcludedCIDRs...)
	c.Interfaces = append([]string(nil), p.Spec.Interfaces...)
	if len(p.Spec.IPFamilies) > 0 {
		c.IPFamilies = nil
		for _, f := range p.Spec.IPFamilies {
			c.IPFamilies = append(c.IPFamilies, string(f))
		}
	}
	c.Sink = AgentSink(opts, p)
	if servesIngest(p) {
		c.SinkTokenFile = IngestTokenPath
		c.SinkCAFile = IngestCAPath
	} else if _, _, ok := clickHouseCAVolume(p); ok {
		c.SinkCAFile = ClickHouseCAPath
	}
	c.MetricsAddr = fmt.Sprintf(":%d", AgentMetricsPort(opts, alloc))
	c.ShutdownTimeout = agent.Duration(10 * time.Second)
	if err := c.Validate(); err != nil {
		return agent.Config{}, err
	}
	return c, nil
}

// AgentConfigMap holds the agent's settings as JSON (agent.LoadFile reads
// JSON or YAML), and the hash of that JSON for the pod template.
func AgentConfigMap(p *samplingv1alpha1.SamplingPolicy, cfg agent.Config, opts Options) (*corev1.ConfigMap, string, error) {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, "", fmt.Errorf("agent settings: %w", err)
	}
	sum := sha256.Sum256(b)
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: childMeta(p, AgentName(p.Name), opts.AgentNamespace, ComponentAgent),
		Data:       map[string]string{agentConfigFile: string(b) + "\n"},
	}
	return cm, hex.EncodeToString(sum[:8]), nil
}

// AgentServiceAccount is the agents' identity. They never call the API
// server, so no token is mounted.
func AgentServiceAccount(p *samplingv1alpha1.SamplingPolicy, opts Options) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   childMeta(p, AgentName(p.Name), opts.AgentNamespace, ComponentAgent),
		AutomountServiceAccountToken: ptr.To(false),
	}
}

// defaultAgentResources are the agent's requests and limits unless the
// policy sets its own: its queue holds 4096 records of ~90 bytes, its
// NFLOG socket up to 16 MiB.
func defaultAgentResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse("256Mi"),
		},
	}
}

// AgentDaemonSet runs a policy's agent on every selected node.
//
// Security: the agent installs iptables rules and reads NFLOG in the
// host's network namespace, so it needs hostNetwork and CAP_NET_ADMIN
// (netfilter and nfnetlink configuration, SO_RCVBUFFORCE) and CAP_NET_RAW
// (iptables-legacy talks to the kernel through a raw socket; iptables-nft
// needs only NET_ADMIN, but the backend is the host's choice). It runs as
// root (UID 0): the capabilities of a non-root process are lost at exec of
// the iptables binaries, which carry no file capabilities. Every other
// capability is dropped, privilege escalation is off, the root filesystem
// is read-only and seccomp is the runtime's default. Updates never surge:
// two agents of one policy cannot bind the same NFLOG group. configHash
// (of the agents' ConfigMap) rolls the agents when it changes; the token
// and the ingest CA they re-read themselves.
func AgentDaemonSet(p *samplingv1alpha1.SamplingPolicy, alloc Allocation, configHash string, opts Options) *appsv1.DaemonSet {
	name := AgentName(p.Name)
	image := opts.Image
	if p.Spec.Agent.Image != "" {
		image = p.Spec.Agent.Image
	}
	resources := defaultAgentResources()
	if p.Spec.Agent.Resources != nil {
		resources = *p.Spec.Agent.Resources.DeepCopy()
	}
	nodeSelector := map[string]string{corev1.LabelOSStable: "linux"}
	for k, v := range p.Spec.NodeSelector {
		nodeSelector[k] = v
	}
	var tolerations []corev1.Toleration
	for _, t := range p.Spec.Tolerations {
		tolerations = append(tolerations, *t.DeepCopy())
	}
	port := AgentMetricsPort(opts, alloc)
	podLabels := objectLabels(p.Name, ComponentAgent)
	// The agent runs as root: only its owner may read the token.
	tokenVolume, tokenMount := ingestSecretVolume(p.Name, 0o400, IngestTokenKey, IngestCACertKey)
	mounts := []corev1.VolumeMount{
		{Name: "config", MountPath: agentConfigDir, ReadOnly: true},
		{Name: "xtables-lock", MountPath: xtablesLock},
		tokenMount,
	}
	volumes := []corev1.Volume{
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: name},
		}}},
		{Name: "xtables-lock", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: xtablesLock, Type: ptr.To(corev1.HostPathFileOrCreate),
		}}},
		tokenVolume,
	}
	if v, m, ok := clickHouseCAVolume(p); ok {
		volumes, mounts = append(volumes, v), append(mounts, m)
	}

	ds := &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: childMeta(p, name, opts.AgentNamespace, ComponentAgent),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(p.Name, ComponentAgent)},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{
				Type: appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{
					MaxUnavailable: ptr.To(intstr.FromInt32(1)),
					MaxSurge:       ptr.To(intstr.FromInt32(0)),
				},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      podLabels,
					Annotations: map[string]string{AnnotationConfigHash: configHash},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName:            name,
					AutomountServiceAccountToken:  ptr.To(false),
					HostNetwork:                   true,
					DNSPolicy:                     corev1.DNSClusterFirstWithHostNet,
					NodeSelector:                  nodeSelector,
					Tolerations:                   tolerations,
					TerminationGracePeriodSeconds: ptr.To[int64](AgentTerminationGrace),
					SecurityContext: &corev1.PodSecurityContext{
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name:            "agent",
						Image:           image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						// An agent that exits on an error (a group bound by
						// another process, a backend that does not work)
						// logs it last: its logs' tail is then the
						// termination message, which the policy's status
						// quotes (AgentPodsFailing).
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
						// The node's network is the pod's: /metrics and the
						// probes listen on the node's own address (the pod
						// IP the kubelet probes and Prometheus scrapes), not
						// on every interface of the host. The flag overrides
						// the ConfigMap's ":PORT", which cannot name each
						// node's address; the brackets hold IPv4 and IPv6.
						Args: []string{"agent", "--config=" + agentConfigDir + "/" + agentConfigFile, "--log-json",
							fmt.Sprintf("--metrics-addr=[$(%s)]:%d", hostIPEnv, port)},
						Env: append([]corev1.EnvVar{{
							Name:      "NODE_NAME",
							ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}},
						}, {
							Name:      hostIPEnv,
							ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}},
						}}, clickHouseCredentialsEnv(p)...),
						Ports: []corev1.ContainerPort{{
							Name: "metrics", ContainerPort: port, Protocol: corev1.ProtocolTCP,
						}},
						Resources: resources,
						LivenessProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("metrics")}},
							PeriodSeconds:    10,
							FailureThreshold: 3,
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("metrics")}},
							PeriodSeconds:    5,
							FailureThreshold: 2,
						},
						SecurityContext: &corev1.SecurityContext{
							Privileged:               ptr.To(false),
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							RunAsUser:                ptr.To[int64](0),
							RunAsNonRoot:             ptr.To(false),
							Capabilities: &corev1.Capabilities{
								Drop: []corev1.Capability{"ALL"},
								Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
							},
						},
						VolumeMounts: mounts,
					}},
					Volumes: volumes,
				},
			},
		},
	}
	return ds
}

// childMeta is the metadata of a child: name, namespace, labels and the
// controller reference to the policy (cluster-scoped owners may own
// namespaced objects), so that deleting the policy collects it.
func childMeta(p *samplingv1alpha1.SamplingPolicy, name, namespace, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      name,
		Namespace: namespace,
		Labels:    objectLabels(p.Name, component),
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion:         samplingv1alpha1.GroupVersion.String(),
			Kind:               "SamplingPolicy",
			Name:               p.Name,
			UID:                p.UID,
			Controller:         ptr.To(true),
			BlockOwnerDeletion: ptr.To(true),
		}},
	}
}
