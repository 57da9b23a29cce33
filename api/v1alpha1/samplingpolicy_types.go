package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types of a SamplingPolicy, as cert-manager and Cluster API
// use them: Ready is what GitOps tools read as health.
const (
	// ConditionReady is True when every selected node runs a ready agent
	// of the current generation and the classifier is available.
	ConditionReady = "Ready"
	// ConditionProgressing is True while the agents or the classifier
	// roll out a change.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is True when the policy cannot be carried out as
	// written: no label bit or NFLOG group is free, a child cannot be
	// written, agents stay unavailable after a rollout, or agent pods
	// cannot run (crash-looping, an image that cannot be pulled,
	// unschedulable), also during a rollout.
	ConditionDegraded = "Degraded"
)

// Finalizer keeps a SamplingPolicy until its agents have removed their
// iptables rules from every node.
const Finalizer = "sampling.connscope.dev/agent-cleanup"

// IPFamily is an IP address family.
// +kubebuilder:validation:Enum=IPv4;IPv6
type IPFamily string

// The IP families a policy can sample.
const (
	IPv4 IPFamily = "IPv4"
	IPv6 IPFamily = "IPv6"
)

// SinkType says where the classifier keeps what the agents ship.
// +kubebuilder:validation:Enum=Classifier;ClickHouse
type SinkType string

// The sink types.
const (
	// SinkClassifier keeps the records in the managed classifier's own
	// embedded store (SQLite on a volume). One replica.
	SinkClassifier SinkType = "Classifier"
	// SinkClickHouse keeps the records in a ClickHouse database, so that
	// several classifier replicas can share the load.
	SinkClickHouse SinkType = "ClickHouse"
)

// LabelValue is a label value: empty, or 1 to 63 letters, digits, '-', '_'
// or '.', starting and ending with a letter or digit.
// +kubebuilder:validation:MaxLength=63
// +kubebuilder:validation:Pattern=`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`
type LabelValue = string

// NodeLabels are node labels to select, a map[string]string whose values
// the CRD bounds (LabelValue: CEL cannot afford a pattern over unbounded
// strings). Its deep copy is written by hand (labels.go): controller-gen
// does not copy maps of aliases.
// +kubebuilder:object:generate=false
type NodeLabels map[string]LabelValue

// SamplingPolicySpec says which new TCP connections the agents sample on
// which nodes, how many of their first packets they log, and where the
// records go.
//
// +kubebuilder:validation:XValidation:rule="!has(self.excludedCIDRs) || self.excludedCIDRs.all(c, !isCIDR(c) || (cidr(c).ip().family() == 4 ? 'IPv4' in self.ipFamilies : 'IPv6' in self.ipFamilies))",message="every excludedCIDRs entry must be of an IP family listed in ipFamilies",fieldPath=".excludedCIDRs"
type SamplingPolicySpec struct {
	// probability is the share of new TCP connections sampled on each
	// node, written as a decimal string greater than 0 and at most 1 with
	// at most 9 digits after the point: "0.0001" samples one connection in
	// 10,000 (the method's default), "1" samples every connection.
	// A string rather than a float, as Kubernetes API conventions ask.
	// +required
	// +kubebuilder:validation:MaxLength=20
	// +kubebuilder:validation:XValidation:rule="self.matches('^(0|1)([.][0-9]{1,9})?$')",message="probability must be a decimal number such as \"0.0001\" (a 0 or 1, then at most 9 digits after the point)"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^(0|1)([.][0-9]{1,9})?$') || (double(self) > 0.0 && double(self) <= 1.0)",message="probability must be greater than 0 and at most 1, e.g. \"0.0001\" to sample one new connection in 10,000"
	Probability string `json:"probability"`

	// packetCap is how many packets of each sampled connection, counted in
	// the client's direction from the SYN on, are logged: 1 to 64.
	// Default 10, as the method.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 64",message="packetCap must be between 1 and 64 packets per connection (the method logs 10)"
	PacketCap int32 `json:"packetCap,omitempty"`

	// idleTimeout is how long a sampled connection must stay silent to be
	// judged timed out, e.g. "3s" (the default, the method's "no packets
	// for more than three seconds"); 1s to 10m. The classifier judges a
	// connection once it has been silent for 10s (or idleTimeout if
	// longer), so that a late RST still makes it a reset.
	// +optional
	// +kubebuilder:default="3s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=20
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('10m')",message="idleTimeout must be a duration between 1s and 10m, such as \"3s\" or \"1m30s\""
	IdleTimeout *metav1.Duration `json:"idleTimeout,omitempty"`

	// nodeSelector restricts the agents to nodes with these labels; empty
	// means every Linux node. Keys and values are Kubernetes label keys and
	// values, e.g. "node-role.kubernetes.io/edge": ""; at most 64.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && k.indexOf('/') <= 253)",message="nodeSelector keys must be label keys: an optional DNS prefix of at most 253 characters and '/', then 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, such as \"node-role.kubernetes.io/edge\""
	NodeSelector NodeLabels `json:"nodeSelector,omitempty"`

	// tolerations let the agents run on tainted nodes. The default
	// tolerates every taint, so that every selected node is sampled;
	// an empty list tolerates none; at most 64. The API server refuses what
	// a DaemonSet would refuse: a value with operator Exists, an empty key
	// without Exists, an unknown operator or effect, tolerationSeconds
	// without effect NoExecute. (Not the format of keys and values: a
	// pattern over corev1.Toleration's unbounded strings exceeds the API
	// server's cost budget for validation rules; the DaemonSet's apply
	// error, in the policy's status, names a bad one.)
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:XValidation:rule="self.all(t, !has(t.operator) || t.operator != 'Exists' || !has(t.value) || size(t.value) == 0)",message="a toleration with operator Exists matches every value of its key: remove value, or use operator Equal"
	// +kubebuilder:validation:XValidation:rule="self.all(t, (has(t.key) && size(t.key) > 0) || (has(t.operator) && t.operator == 'Exists'))",message="a toleration without a key must have operator Exists (it then tolerates every taint)"
	// +kubebuilder:validation:XValidation:rule="self.all(t, !has(t.effect) || t.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute'])",message="a toleration's effect must be NoSchedule, PreferNoSchedule or NoExecute (or empty for every effect)"
	// +kubebuilder:validation:XValidation:rule="self.all(t, !has(t.tolerationSeconds) || (has(t.effect) && t.effect == 'NoExecute'))",message="a toleration with tolerationSeconds must have effect NoExecute"
	// +kubebuilder:validation:XValidation:rule="self.all(t, !has(t.operator) || t.operator in ['', 'Exists', 'Equal'])",message="a toleration's operator must be Exists or Equal (or empty for Equal)"
	// +kubebuilder:default={{operator: "Exists"}}
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// serverPorts are the server (destination) ports to sample, at most 15
	// (one iptables multiport match); empty means every port.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=15
	// +kubebuilder:validation:XValidation:rule="self.all(p, p >= 1 && p <= 65535)",message="serverPorts must be TCP ports between 1 and 65535"
	ServerPorts []int32 `json:"serverPorts,omitempty"`

	// excludedCIDRs are client (source) networks never sampled, such as
	// "10.0.0.0/8" or "fd00::/8"; at most 64. Each must be of a family
	// listed in ipFamilies.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="self.all(c, isCIDR(c))",message="excludedCIDRs must be networks in CIDR notation, such as \"10.0.0.0/8\" or \"fd00::/8\""
	ExcludedCIDRs []string `json:"excludedCIDRs,omitempty"`

	// interfaces are the input interfaces on which new connections are
	// sampled, e.g. "eth0"; a trailing '+' matches every name with that
	// prefix ("ens+"); at most 16; empty means every interface.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=15
	// +kubebuilder:validation:XValidation:rule="self.all(i, i.matches('^[A-Za-z0-9_.@-]+[+]?$') && i != '.' && i != '..')",message="interfaces must be interface names of 1 to 15 letters, digits or _.@- with an optional trailing '+' wildcard, such as \"eth0\" or \"ens+\""
	Interfaces []string `json:"interfaces,omitempty"`

	// ipFamilies are the address families sampled: IPv4, IPv6 or both
	// (the default).
	// +optional
	// +listType=set
	// +kubebuilder:default={"IPv4","IPv6"}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=2
	IPFamilies []IPFamily `json:"ipFamilies,omitempty"`

	// sink says where the records go: the managed classifier's own store
	// (the default) or ClickHouse.
	// +optional
	// +kubebuilder:default={type: "Classifier"}
	Sink SinkSpec `json:"sink,omitzero"`

	// agent overrides the agents' image and resources.
	// +optional
	Agent AgentSpec `json:"agent,omitzero"`
}

// SinkSpec says where the records of a policy are kept. The managed
// classifier runs in both cases: the agents ship to it over gRPC, and it
// classifies and serves the API; with ClickHouse it keeps what it receives
// there instead of in its own volume, so that it can run several replicas.
//
// +kubebuilder:validation:XValidation:rule="self.type != 'ClickHouse' || (has(self.clickhouse) && has(self.clickhouse.address) && size(self.clickhouse.address) > 0)",message="a ClickHouse sink needs clickhouse.address, e.g. \"clickhouse.db.svc:8123\"",fieldPath=".clickhouse"
// +kubebuilder:validation:XValidation:rule="self.type == 'ClickHouse' || !has(self.clickhouse)",message="clickhouse is only read when type is ClickHouse: set type: ClickHouse or remove clickhouse",fieldPath=".clickhouse"
// +kubebuilder:validation:XValidation:rule="self.type == 'ClickHouse' || !has(self.classifier) || !has(self.classifier.replicas) || self.classifier.replicas <= 1",message="the Classifier sink keeps its records on one volume and runs one replica: use the ClickHouse sink for more replicas",fieldPath=".classifier.replicas"
// +kubebuilder:validation:XValidation:rule="self.type != 'ClickHouse' || !has(self.classifier) || !has(self.classifier.storage)",message="classifier.storage is the Classifier sink's volume: a ClickHouse sink keeps the records in ClickHouse, so remove storage (or use type: Classifier)",fieldPath=".classifier.storage"
type SinkSpec struct {
	// type is Classifier (the default: records kept in the classifier's
	// embedded SQLite store on a volume) or ClickHouse.
	// +optional
	// +kubebuilder:default=Classifier
	Type SinkType `json:"type,omitempty"`

	// classifier configures the managed classifier Deployment.
	// +optional
	Classifier ClassifierSpec `json:"classifier,omitzero"`

	// clickhouse is the ClickHouse database the classifier stores in;
	// required when type is ClickHouse.
	// +optional
	ClickHouse *ClickHouseSpec `json:"clickhouse,omitempty"`
}

// ClassifierSpec configures the managed classifier.
type ClassifierSpec struct {
	// replicas of the classifier Deployment: 1 with the Classifier sink
	// (the default), up to 20 with ClickHouse.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 20",message="classifier.replicas must be between 1 and 20"
	Replicas *int32 `json:"replicas,omitempty"`

	// image overrides the classifier's container image (the controller's
	// default is the connscope image it was built with).
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`

	// resources of the classifier container; the controller's defaults
	// when unset. Only cpu, memory and ephemeral-storage; a request may not exceed
	// its limit.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.requests) || !has(self.limits) || ['cpu', 'memory', 'ephemeral-storage'].all(r, !(r in self.requests) || !(r in self.limits) || !quantity(string(self.requests[r])).isGreaterThan(quantity(string(self.limits[r]))))",message="classifier.resources: a request (cpu, memory, ephemeral-storage) may not be greater than its limit"
	// +kubebuilder:validation:XValidation:rule="!has(self.requests) || self.requests.all(r, r == 'cpu' || r == 'memory' || r == 'ephemeral-storage')",message="classifier.resources: only cpu, memory and ephemeral-storage may be requested or limited"
	// +kubebuilder:validation:XValidation:rule="!has(self.limits) || self.limits.all(r, r == 'cpu' || r == 'memory' || r == 'ephemeral-storage')",message="classifier.resources: only cpu, memory and ephemeral-storage may be requested or limited"
	// +kubebuilder:validation:XValidation:rule="!has(self.claims) || size(self.claims) == 0",message="classifier.resources: claims are not supported (the pod has no resource claims)"
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// storage is the volume of the embedded store, for the Classifier sink
	// only (with ClickHouse the records are kept there, and the API server
	// refuses storage). Unset, the store is an emptyDir and is lost when the
	// pod goes.
	// +optional
	Storage *StorageSpec `json:"storage,omitempty"`

	// geoIP names a PersistentVolumeClaim, in the classifier's namespace,
	// holding MaxMind-format mmdb files (country, ASN), mounted read-only.
	// Used with both sinks: with ClickHouse every classifier replica mounts
	// it, so a claim read by replicas on several nodes needs the
	// ReadOnlyMany access mode. Unset, countries and ASNs are reported as
	// unknown.
	// +optional
	GeoIP *GeoIPSpec `json:"geoIP,omitempty"`
}

// StorageSpec is a PersistentVolumeClaim the controller creates for the
// classifier's store.
type StorageSpec struct {
	// size of the volume, e.g. "10Gi".
	// +required
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="storage.size must be a positive size such as \"10Gi\""
	Size resource.Quantity `json:"size"`

	// storageClassName of the volume; the cluster's default class when
	// unset.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="storage.storageClassName must be a StorageClass name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
	StorageClassName *string `json:"storageClassName,omitempty"`
}

// GeoIPSpec points the classifier at mmdb files.
type GeoIPSpec struct {
	// claimName is the PersistentVolumeClaim holding the mmdb files.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="geoIP.claimName must be a PersistentVolumeClaim name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
	ClaimName string `json:"claimName"`
}

// ClickHouseSpec is a ClickHouse database.
type ClickHouseSpec struct {
	// address of ClickHouse's HTTP interface, HOST:PORT, e.g.
	// "clickhouse.db.svc:8123" (connscope speaks HTTP, not the native
	// protocol of port 9000), or of its HTTPS interface with tls, e.g.
	// "clickhouse.db.svc:8443". The agents insert packets there and the
	// classifier replicas read and write there.
	// +required
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z0-9.-]+:[0-9]{1,5}$') || self.matches('^[[][0-9A-Fa-f:.]+[]]:[0-9]{1,5}$')",message="clickhouse.address must be HOST:PORT, such as \"clickhouse.db.svc:8123\""
	// +kubebuilder:validation:XValidation:rule="!self.matches(':[0-9]{1,5}$') || (int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535)",message="clickhouse.address must end in a port between 1 and 65535, such as \"clickhouse.db.svc:8123\" (ClickHouse's HTTP port)"
	Address string `json:"address"`

	// database to use; default "connscope".
	// +optional
	// +kubebuilder:default=connscope
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z_][A-Za-z0-9_]*$')",message="clickhouse.database must be a plain identifier: letters, digits and '_', not starting with a digit"
	Database string `json:"database,omitempty"`

	// credentialsSecret names a Secret whose keys hold the user name and
	// password. Create it in the classifier's namespace and in the agents'
	// namespace (the agents insert with it). The controller never reads
	// it: the classifier's and agents' pods receive it as environment
	// variables.
	// Unset, ClickHouse's default user without a password is used.
	// +optional
	CredentialsSecret *SecretKeysRef `json:"credentialsSecret,omitempty"`

	// tls, when set, makes the agents and the classifier speak HTTPS to
	// ClickHouse: address is then its HTTPS port (https_port, e.g.
	// "clickhouse.db.svc:8443"), the rows and the credentials cross the
	// network encrypted, and ClickHouse's certificate is checked against
	// caSecret's CA, or the system's roots without one ("tls: {}").
	// Unset, plain HTTP.
	// +optional
	TLS *ClickHouseTLS `json:"tls,omitempty"`
}

// ClickHouseTLS says how ClickHouse's certificate is checked.
type ClickHouseTLS struct {
	// caSecret names a Secret whose key holds the PEM certificates of the
	// CA that signed ClickHouse's certificate. Create it in the
	// classifier's namespace and in the agents' namespace, as the
	// credentials Secret; the controller never reads it. The agents and
	// the classifier read it again when it changes, at their next
	// connection. Unset, the system's roots are trusted.
	// +optional
	CASecret *SecretKeyRef `json:"caSecret,omitempty"`
}

// SecretKeyRef is one key of a Secret.
type SecretKeyRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="caSecret.name must be a Secret name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
	Name string `json:"name"`
	// key holding the PEM certificates; default "ca.crt".
	// +optional
	// +kubebuilder:default=ca.crt
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="caSecret.key must be a Secret key: letters, digits, '-', '_' and '.'"
	Key string `json:"key,omitempty"`
}

// SecretKeysRef names a Secret and the keys of a user name and password.
type SecretKeysRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="credentialsSecret.name must be a Secret name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
	Name string `json:"name"`
	// usernameKey is the key holding the user name; default "username".
	// +optional
	// +kubebuilder:default=username
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="credentialsSecret.usernameKey must be a Secret key: letters, digits, '-', '_' and '.'"
	UsernameKey string `json:"usernameKey,omitempty"`
	// passwordKey is the key holding the password; default "password".
	// +optional
	// +kubebuilder:default=password
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="credentialsSecret.passwordKey must be a Secret key: letters, digits, '-', '_' and '.'"
	PasswordKey string `json:"passwordKey,omitempty"`
}

// AgentSpec overrides the node agents' container.
type AgentSpec struct {
	// image overrides the agent's container image (the controller's
	// default is the connscope image it was built with).
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`

	// resources of the agent container; the controller's defaults when
	// unset. Only cpu, memory and ephemeral-storage; a request may not exceed its
	// limit.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.requests) || !has(self.limits) || ['cpu', 'memory', 'ephemeral-storage'].all(r, !(r in self.requests) || !(r in self.limits) || !quantity(string(self.requests[r])).isGreaterThan(quantity(string(self.limits[r]))))",message="agent.resources: a request (cpu, memory, ephemeral-storage) may not be greater than its limit"
	// +kubebuilder:validation:XValidation:rule="!has(self.requests) || self.requests.all(r, r == 'cpu' || r == 'memory' || r == 'ephemeral-storage')",message="agent.resources: only cpu, memory and ephemeral-storage may be requested or limited"
	// +kubebuilder:validation:XValidation:rule="!has(self.limits) || self.limits.all(r, r == 'cpu' || r == 'memory' || r == 'ephemeral-storage')",message="agent.resources: only cpu, memory and ephemeral-storage may be requested or limited"
	// +kubebuilder:validation:XValidation:rule="!has(self.claims) || size(self.claims) == 0",message="agent.resources: claims are not supported (the pod has no resource claims)"
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
}

// NodeCounts counts the nodes of a policy, from its agent DaemonSet.
type NodeCounts struct {
	// desired is how many nodes should run an agent.
	// +optional
	Desired int32 `json:"desired"`
	// ready is how many of them run a ready agent.
	// +optional
	Ready int32 `json:"ready"`
	// updated is how many of them run the agent of the current settings.
	// +optional
	Updated int32 `json:"updated"`
}

// SamplingPolicyStatus is what the controller observed.
type SamplingPolicyStatus struct {
	// observedGeneration is the generation of the spec the status
	// describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Progressing and Degraded.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// nodes counts the nodes running this policy's agent.
	// +optional
	Nodes NodeCounts `json:"nodes,omitzero"`

	// labelBit is the conntrack label bit allocated to this policy,
	// distinct from every other policy's.
	// +optional
	LabelBit *int32 `json:"labelBit,omitempty"`

	// nflogGroup is the NFLOG group allocated to this policy, distinct
	// from every other policy's.
	// +optional
	NFLOGGroup *int32 `json:"nflogGroup,omitempty"`

	// classifierEndpoint is the URL of the classifier's HTTP API (Radar-
	// compatible summaries, metrics, dashboard) inside the cluster.
	// +optional
	ClassifierEndpoint string `json:"classifierEndpoint,omitempty"`

	// ingestEndpoint is where the agents ship their records: the
	// classifier's gRPC Ingest over TLS (grpcs://), or ClickHouse
	// (clickhouse://) with the ClickHouse sink.
	// +optional
	IngestEndpoint string `json:"ingestEndpoint,omitempty"`
}

// SamplingPolicy rolls out connscope's node agents, which sample new TCP
// connections and log their first packets' headers, and the classifier
// that turns them into stages, tags and signatures. Cluster-scoped: node
// sampling is a cluster concern. Its name names the agents' iptables
// chains and the children's objects.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=sp,categories=connscope
// +kubebuilder:printcolumn:name="Probability",type=string,JSONPath=`.spec.probability`
// +kubebuilder:printcolumn:name="Cap",type=integer,JSONPath=`.spec.packetCap`
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.nodes.desired`
// +kubebuilder:printcolumn:name="Nodes-Ready",type=integer,JSONPath=`.status.nodes.ready`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Label-Bit",type=integer,JSONPath=`.status.labelBit`,priority=1
// +kubebuilder:printcolumn:name="NFLOG-Group",type=integer,JSONPath=`.status.nflogGroup`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$')",message="the name of a SamplingPolicy (metadata.name) must be 1 to 40 lower-case letters, digits and '-', starting with a letter and ending with a letter or digit (it names the agents' chains and the children's Services)",fieldPath=".metadata"
type SamplingPolicy struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the desired sampling.
	// +required
	Spec SamplingPolicySpec `json:"spec"`

	// status is what the controller observed.
	// +optional
	Status SamplingPolicyStatus `json:"status,omitzero"`
}

// SamplingPolicyList is a list of SamplingPolicy.
//
// +kubebuilder:object:root=true
type SamplingPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []SamplingPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SamplingPolicy{}, &SamplingPolicyList{})
}
