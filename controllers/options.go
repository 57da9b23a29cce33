// Package controllers holds the SamplingPolicy controller: for each policy
// it rolls out the node agents (a DaemonSet with its ServiceAccount and
// settings) and the classifier (Deployment, Service, ServiceAccount,
// volume), allocates each policy a conntrack label bit and an NFLOG group
// no other policy uses, folds the children's status into the policy's
// conditions, and on deletion waits until the agents have removed their
// rules.
//
// Files: the *_objects.go files are pure builders (policy in, objects
// out; golden-file tested); allocation.go hands out label bits and groups;
// status.go turns the children's status into conditions;
// samplingpolicy_controller.go is the only code that talks to the API
// server. It does not build images or run the agent or classifier itself.
package controllers

import (
	"fmt"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/connscope/connscope/internal/version"
)

// Defaults of Options.
const (
	DefaultAgentNamespace      = "connscope-agents"
	DefaultClassifierNamespace = "connscope-system"
	// DefaultImage is the image of this release (a version tag, never
	// latest, so that an upgraded controller rolls out its own image).
	DefaultImage            = "connscope/connscope:" + version.Version
	DefaultAgentMetricsPort = 9477
	// FieldOwner is the server-side apply field manager of everything the
	// controller writes.
	FieldOwner = "connscope-controller"
)

// Ports of the classifier.
const (
	ClassifierGRPCPort = 9443
	ClassifierHTTPPort = 8080
)

// Range is an inclusive range of integers, written "16-31".
type Range struct{ Min, Max int32 }

// Size is how many integers the range holds.
func (r Range) Size() int { return int(r.Max-r.Min) + 1 }

// Contains reports whether v is in the range.
func (r Range) Contains(v int32) bool { return v >= r.Min && v <= r.Max }

func (r Range) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// ParseRange reads "16-31" (or a single "16") within [lo, hi].
func ParseRange(s string, lo, hi int32) (Range, error) {
	a, b, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		b = a
	}
	mn, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 32)
	mx, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 32)
	if err1 != nil || err2 != nil {
		return Range{}, fmt.Errorf("%q: write FIRST-LAST, e.g. %d-%d", s, lo, lo+15)
	}
	r := Range{int32(mn), int32(mx)}
	if r.Min > r.Max || r.Min < lo || r.Max > hi {
		return Range{}, fmt.Errorf("%q: must lie within %d-%d with FIRST <= LAST", s, lo, hi)
	}
	return r, nil
}

// Options are the controller's settings, the same for every policy.
type Options struct {
	// AgentNamespace holds the agents (labelled for privileged pod
	// security: they use the host's network).
	AgentNamespace string
	// ClassifierNamespace holds the classifiers (restricted pod security).
	ClassifierNamespace string
	// Image is the connscope image for agents and classifiers unless a
	// policy overrides it.
	Image string
	// LabelBits are the conntrack label bits given out to policies, one
	// each. Pick bits that no other software on the nodes uses.
	LabelBits Range
	// NFLOGGroups are the NFLOG groups given out to policies, one each.
	NFLOGGroups Range
	// AgentMetricsPort is the port of the agent of the policy holding the
	// first NFLOG group; the others follow (agents share the host's
	// network, so every policy needs its own port).
	AgentMetricsPort int32
}

// DefaultOptions returns the controller's defaults.
func DefaultOptions() Options {
	return Options{
		AgentNamespace:      DefaultAgentNamespace,
		ClassifierNamespace: DefaultClassifierNamespace,
		Image:               DefaultImage,
		LabelBits:           Range{Min: 16, Max: 31},
		NFLOGGroups:         Range{Min: 1000, Max: 1015},
		AgentMetricsPort:    DefaultAgentMetricsPort,
	}
}

// Labels every child carries.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelComponent = "app.kubernetes.io/component"
	LabelInstance  = "app.kubernetes.io/instance"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelPartOf    = "app.kubernetes.io/part-of"
	// LabelPolicy names the SamplingPolicy a child (and an agent pod)
	// belongs to.
	LabelPolicy = "sampling.connscope.dev/policy"
	// AnnotationConfigHash on the agent pod template changes when the
	// agent's settings do, so that a settings change rolls the agents.
	AnnotationConfigHash = "sampling.connscope.dev/config-hash"

	ComponentAgent      = "agent"
	ComponentClassifier = "classifier"
)

// AgentName names the agent DaemonSet, ServiceAccount and ConfigMap of a
// policy.
func AgentName(policy string) string { return "connscope-" + policy + "-agent" }

// ClassifierName names the classifier Deployment, Service and
// ServiceAccount of a policy.
func ClassifierName(policy string) string { return "connscope-" + policy + "-classifier" }

// ClassifierDataName names the classifier's PersistentVolumeClaim.
func ClassifierDataName(policy string) string { return ClassifierName(policy) + "-data" }

// selectorLabels select a component's pods; they never change.
func selectorLabels(policy, component string) map[string]string {
	return map[string]string{
		LabelName:      "connscope",
		LabelComponent: component,
		LabelInstance:  policy,
	}
}

// objectLabels are the labels of a child object and its pods.
func objectLabels(policy, component string) map[string]string {
	l := selectorLabels(policy, component)
	l[LabelManagedBy] = FieldOwner
	l[LabelPartOf] = "connscope"
	l[LabelPolicy] = policy
	return l
}

// CacheOptions are the manager's cache settings for the controller: the
// children only in the two namespaces it manages and only connscope's
// (by label); of Secrets only connscope's, and only their metadata (the
// controller watches them as PartialObjectMetadata; it reads their data
// from the API server). Policies are cluster-scoped and unaffected.
func CacheOptions(opts Options) cache.Options {
	mine := labels.SelectorFromSet(labels.Set{LabelName: "connscope"})
	in := func(namespaces ...string) cache.ByObject {
		b := cache.ByObject{Label: mine, Namespaces: map[string]cache.Config{}}
		for _, ns := range namespaces {
			b.Namespaces[ns] = cache.Config{}
		}
		return b
	}
	agents, classifiers := opts.AgentNamespace, opts.ClassifierNamespace
	return cache.Options{
		DefaultNamespaces: map[string]cache.Config{agents: {}, classifiers: {}},
		// Each kind only where the controller keeps it: its Roles grant
		// nothing more.
		ByObject: map[client.Object]cache.ByObject{
			&appsv1.DaemonSet{}:             in(agents),
			&corev1.ConfigMap{}:             in(agents),
			&corev1.Pod{}:                   in(agents),
			&corev1.ServiceAccount{}:        in(agents, classifiers),
			&appsv1.Deployment{}:            in(classifiers),
			&corev1.Service{}:               in(classifiers),
			&corev1.PersistentVolumeClaim{}: in(classifiers),
			&corev1.Secret{}:                in(agents, classifiers),
		},
	}
}
