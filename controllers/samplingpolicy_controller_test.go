package controllers

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/yaml"

	"github.com/connscope/connscope/agent"
	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
	"github.com/connscope/connscope/internal/envtestsuite"
)

func ctrlConfigForTests() config.Controller {
	// Tests start a manager per test (and two in the restart test).
	return config.Controller{SkipNameValidation: ptr.To(true)}
}

var ctx = context.Background()

const wait = 15 * time.Second

// newPolicy creates a policy and, at the end of the test, deletes it and
// waits until it is gone (its finalizer removed by the controller, which
// must still run: register this after startController).
func newPolicy(t *testing.T, name string, edit func(*samplingv1alpha1.SamplingPolicy)) *samplingv1alpha1.SamplingPolicy {
	t.Helper()
	p := &samplingv1alpha1.SamplingPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       samplingv1alpha1.SamplingPolicySpec{Probability: "0.0001"},
	}
	if edit != nil {
		edit(p)
	}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = k8s.Delete(ctx, p)
		eventually(t, wait, "policy "+name+" gone", func() error {
			err := k8s.Get(ctx, client.ObjectKey{Name: name}, &samplingv1alpha1.SamplingPolicy{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("still there (%v)", err)
		})
		// No garbage collector here: remove the children ourselves.
		for _, o := range childObjects(name) {
			_ = k8s.Delete(ctx, o)
		}
	})
	return p
}

func childObjects(policy string) []client.Object {
	a, c := DefaultAgentNamespace, DefaultClassifierNamespace
	meta := func(name, ns string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: ns} }
	return []client.Object{
		&appsv1.DaemonSet{ObjectMeta: meta(AgentName(policy), a)},
		&corev1.ConfigMap{ObjectMeta: meta(AgentName(policy), a)},
		&corev1.ServiceAccount{ObjectMeta: meta(AgentName(policy), a)},
		&appsv1.Deployment{ObjectMeta: meta(ClassifierName(policy), c)},
		&corev1.Service{ObjectMeta: meta(ClassifierName(policy), c)},
		&corev1.ServiceAccount{ObjectMeta: meta(ClassifierName(policy), c)},
		&corev1.PersistentVolumeClaim{ObjectMeta: meta(ClassifierDataName(policy), c)},
		&corev1.Secret{ObjectMeta: meta(IngestTokenName(policy), a)},
		&corev1.Secret{ObjectMeta: meta(IngestTokenName(policy), c)},
	}
}

// ingestSecrets returns the policy's token Secrets, the agents' and the
// classifier's.
func ingestSecrets(name string) (agents, classifier *corev1.Secret, err error) {
	agents, classifier = &corev1.Secret{}, &corev1.Secret{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: DefaultAgentNamespace, Name: IngestTokenName(name)}, agents); err != nil {
		return nil, nil, err
	}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: DefaultClassifierNamespace, Name: IngestTokenName(name)}, classifier); err != nil {
		return nil, nil, err
	}
	return agents, classifier, nil
}

// tokenMount checks that a pod mounts the policy's token Secret read-only
// so that IngestTokenPath is its token.
func tokenMount(pod corev1.PodSpec, policy string, keys ...string) error {
	var vol *corev1.Volume
	for i := range pod.Volumes {
		if s := pod.Volumes[i].Secret; s != nil && s.SecretName == IngestTokenName(policy) {
			vol = &pod.Volumes[i]
		}
	}
	if vol == nil {
		return fmt.Errorf("no volume of Secret %s in %+v", IngestTokenName(policy), pod.Volumes)
	}
	var got []string
	for _, it := range vol.Secret.Items {
		if it.Key != it.Path {
			return fmt.Errorf("token volume item %+v", it)
		}
		got = append(got, it.Key)
	}
	if !slices.Equal(got, keys) {
		return fmt.Errorf("token volume items %v, want %v", got, keys)
	}
	for _, m := range pod.Containers[0].VolumeMounts {
		if m.Name == vol.Name {
			if !m.ReadOnly || filepath.Join(m.MountPath, IngestTokenKey) != IngestTokenPath {
				return fmt.Errorf("token mount %+v", m)
			}
			return nil
		}
	}
	return fmt.Errorf("token volume not mounted: %+v", pod.Containers[0].VolumeMounts)
}

// waitPolicyGone waits until the API server no longer has the policy.
func waitPolicyGone(t *testing.T, name string) {
	t.Helper()
	eventually(t, wait, "policy "+name+" gone", func() error {
		err := k8s.Get(ctx, client.ObjectKey{Name: name}, &samplingv1alpha1.SamplingPolicy{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
}

func getPolicy(t *testing.T, name string) *samplingv1alpha1.SamplingPolicy {
	t.Helper()
	var p samplingv1alpha1.SamplingPolicy
	if err := k8s.Get(ctx, client.ObjectKey{Name: name}, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

// updatePolicy applies mutate to the latest version of the policy and
// writes it, again on a conflict: the controller writes the policy's
// status and finalizer concurrently, so a read-modify-write may find it
// changed in between.
func updatePolicy(t *testing.T, name string, mutate func(*samplingv1alpha1.SamplingPolicy)) *samplingv1alpha1.SamplingPolicy {
	t.Helper()
	var p *samplingv1alpha1.SamplingPolicy
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p = getPolicy(t, name)
		mutate(p)
		return k8s.Update(ctx, p)
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

func getDS(name string) (*appsv1.DaemonSet, error) {
	var ds appsv1.DaemonSet
	err := k8s.Get(ctx, client.ObjectKey{Namespace: DefaultAgentNamespace, Name: AgentName(name)}, &ds)
	return &ds, err
}

func getDeployment(name string) (*appsv1.Deployment, error) {
	var d appsv1.Deployment
	err := k8s.Get(ctx, client.ObjectKey{Namespace: DefaultClassifierNamespace, Name: ClassifierName(name)}, &d)
	return &d, err
}

func agentSettings(t *testing.T, name string) agent.Config {
	t.Helper()
	var cm corev1.ConfigMap
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: DefaultAgentNamespace, Name: AgentName(name)}, &cm); err != nil {
		t.Fatal(err)
	}
	c, err := agent.ParseConfig([]byte(cm.Data[agentConfigFile]))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// condition returns the policy's condition of type typ, as "Status/Reason".
func condition(p *samplingv1alpha1.SamplingPolicy, typ string) string {
	c := meta.FindStatusCondition(p.Status.Conditions, typ)
	if c == nil {
		return "absent"
	}
	return string(c.Status) + "/" + c.Reason
}

// wantConditions waits until the policy's Ready, Progressing and Degraded
// conditions are as given ("True/AllAgentsReady", ...) for its current
// generation.
func wantConditions(t *testing.T, name, ready, progressing, degraded string) *samplingv1alpha1.SamplingPolicy {
	t.Helper()
	var p *samplingv1alpha1.SamplingPolicy
	eventually(t, wait, name+" conditions", func() error {
		p = getPolicy(t, name)
		got := []string{condition(p, "Ready"), condition(p, "Progressing"), condition(p, "Degraded")}
		want := []string{ready, progressing, degraded}
		if !slices.Equal(got, want) {
			return fmt.Errorf("Ready, Progressing, Degraded = %v, want %v", got, want)
		}
		for _, c := range p.Status.Conditions {
			if c.ObservedGeneration != p.Generation {
				return fmt.Errorf("condition %s is of generation %d, the policy's is %d", c.Type, c.ObservedGeneration, p.Generation)
			}
		}
		if p.Status.ObservedGeneration != p.Generation {
			return fmt.Errorf("observedGeneration %d, generation %d", p.Status.ObservedGeneration, p.Generation)
		}
		return nil
	})
	return p
}

// waitChildren waits until the policy's DaemonSet and Deployment exist.
func waitChildren(t *testing.T, name string) {
	t.Helper()
	eventually(t, wait, name+"'s DaemonSet and Deployment", func() error {
		if _, err := getDS(name); err != nil {
			return err
		}
		_, err := getDeployment(name)
		return err
	})
}

// setDaemonSetStatus writes the status the DaemonSet controller would.
func setDaemonSetStatus(t *testing.T, name string, desired, ready, updated int32) {
	t.Helper()
	eventually(t, wait, "DaemonSet status written", func() error {
		ds, err := getDS(name)
		if err != nil {
			return err
		}
		ds.Status = appsv1.DaemonSetStatus{
			ObservedGeneration:     ds.Generation,
			DesiredNumberScheduled: desired,
			CurrentNumberScheduled: desired,
			NumberReady:            ready,
			NumberAvailable:        ready,
			NumberUnavailable:      desired - ready,
			UpdatedNumberScheduled: updated,
		}
		return k8s.Status().Update(ctx, ds)
	})
}

// setDeploymentStatus writes the status the Deployment controller would.
func setDeploymentStatus(t *testing.T, name string, available bool) {
	t.Helper()
	eventually(t, wait, "Deployment status written", func() error {
		d, err := getDeployment(name)
		if err != nil {
			return err
		}
		want := ptr.Deref(d.Spec.Replicas, 1)
		avail, cond := int32(0), corev1.ConditionFalse
		if available {
			avail, cond = want, corev1.ConditionTrue
		}
		now := metav1.Now()
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation,
			Replicas:           want, UpdatedReplicas: want, ReadyReplicas: avail, AvailableReplicas: avail,
			UnavailableReplicas: want - avail,
			Conditions: []appsv1.DeploymentCondition{
				{Type: appsv1.DeploymentAvailable, Status: cond, Reason: "MinimumReplicasAvailable", LastUpdateTime: now, LastTransitionTime: now},
				{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable", LastUpdateTime: now, LastTransitionTime: now},
			},
		}
		return k8s.Status().Update(ctx, d)
	})
}

func TestReconcileCreatesTheChildren(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "create", nil)

	var ds *appsv1.DaemonSet
	eventually(t, wait, "children created", func() error {
		for _, o := range childObjects("create") {
			if _, pvc := o.(*corev1.PersistentVolumeClaim); pvc {
				continue
			}
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
				return fmt.Errorf("%T %s: %w", o, o.GetName(), err)
			}
		}
		var err error
		ds, err = getDS("create")
		return err
	})
	p := getPolicy(t, "create")
	if !slices.Contains(p.Finalizers, samplingv1alpha1.Finalizer) {
		t.Errorf("finalizers %v", p.Finalizers)
	}
	// Owner references and labels on every child.
	for _, o := range childObjects("create") {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
			if _, pvc := o.(*corev1.PersistentVolumeClaim); pvc && apierrors.IsNotFound(err) {
				continue // no storage asked for: an emptyDir
			}
			t.Fatal(err)
		}
		refs := o.GetOwnerReferences()
		if len(refs) != 1 || refs[0].UID != p.UID || !ptr.Deref(refs[0].Controller, false) {
			t.Errorf("%T %s: owner references %+v", o, o.GetName(), refs)
		}
		if o.GetLabels()[LabelPolicy] != "create" || o.GetLabels()[LabelManagedBy] != FieldOwner {
			t.Errorf("%T %s: labels %v", o, o.GetName(), o.GetLabels())
		}
	}
	// The DaemonSet as built, after the API server's defaulting.
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	if !pod.HostNetwork || c.SecurityContext == nil || ptr.Deref(c.SecurityContext.Privileged, true) ||
		!slices.Equal(c.SecurityContext.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) ||
		!ptr.Deref(c.SecurityContext.ReadOnlyRootFilesystem, false) ||
		pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("agent pod security: %+v %+v", pod.SecurityContext, c.SecurityContext)
	}
	if ds.Spec.UpdateStrategy.RollingUpdate.MaxSurge.IntValue() != 0 || c.Image != "connscope/connscope:test" ||
		len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("DaemonSet spec: %+v", ds.Spec)
	}
	// The allocation, the endpoints and the agent's settings agree.
	if p.Status.LabelBit == nil || p.Status.NFLOGGroup == nil {
		t.Fatalf("no allocation in status: %+v", p.Status)
	}
	cfg := agentSettings(t, "create")
	if cfg.LabelBit != int(*p.Status.LabelBit) || cfg.NFLOGGroup != int(*p.Status.NFLOGGroup) ||
		cfg.Sink != p.Status.IngestEndpoint || cfg.Probability != 0.0001 || cfg.PacketCap != 10 {
		t.Errorf("agent settings %+v vs status %+v", cfg, p.Status)
	}
	if p.Status.ClassifierEndpoint != "http://connscope-create-classifier.connscope-system.svc:8080" {
		t.Errorf("classifier endpoint %q", p.Status.ClassifierEndpoint)
	}
	// Nothing has run yet: not Ready, Progressing.
	wantConditions(t, "create", "False/AgentsRollingOut", "True/AgentsRollingOut", "False/Reconciled")
}

// A reconcile that finds everything as built writes nothing.
func TestReconcileWritesOnlyWhatDiffers(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "steady", nil)
	eventually(t, wait, "DaemonSet", func() error { _, err := getDS("steady"); return err })
	wantConditions(t, "steady", "False/AgentsRollingOut", "True/AgentsRollingOut", "False/Reconciled")
	versions := func() map[string]string {
		out := map[string]string{}
		for _, o := range childObjects("steady") {
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(o), o); err == nil {
				out[fmt.Sprintf("%T/%s", o, o.GetName())] = o.GetResourceVersion()
			}
		}
		return out
	}
	before := versions()
	ds, _ := getDS("steady")
	gen := ds.Generation
	// A status change of a child makes the controller reconcile again.
	setDaemonSetStatus(t, "steady", 2, 1, 2)
	eventually(t, wait, "nodes counted", func() error {
		if n := getPolicy(t, "steady").Status.Nodes; n.Desired != 2 || n.Ready != 1 {
			return fmt.Errorf("nodes %+v", n)
		}
		return nil
	})
	after := versions()
	for k, v := range before {
		if strings.Contains(k, "DaemonSet") {
			continue // its status was written by the test
		}
		if after[k] != v {
			t.Errorf("%s was written again: resourceVersion %s -> %s", k, v, after[k])
		}
	}
	if ds, _ := getDS("steady"); ds.Generation != gen {
		t.Errorf("DaemonSet generation %d -> %d", gen, ds.Generation)
	}
}

func TestSpecChangeUpdatesTheChildren(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "change", nil)
	var hash string
	eventually(t, wait, "DaemonSet", func() error {
		ds, err := getDS("change")
		if err == nil {
			hash = ds.Spec.Template.Annotations[AnnotationConfigHash]
		}
		return err
	})

	updatePolicy(t, "change", func(p *samplingv1alpha1.SamplingPolicy) {
		p.Spec.Probability = "0.01"
		p.Spec.PacketCap = 20
		p.Spec.ServerPorts = []int32{443}
		p.Spec.NodeSelector = map[string]string{"pool": "edge"}
		p.Spec.IdleTimeout = &metav1.Duration{Duration: 5 * time.Second}
		p.Spec.Agent.Image = "connscope/connscope:next"
		p.Spec.Sink.Classifier.Storage = &samplingv1alpha1.StorageSpec{Size: resourceQuantity("5Gi")}
	})
	eventually(t, wait, "children updated", func() error {
		cfg := agentSettings(t, "change")
		if cfg.Probability != 0.01 || cfg.PacketCap != 20 || !slices.Equal(cfg.Ports, []int{443}) {
			return fmt.Errorf("agent settings %+v", cfg)
		}
		ds, err := getDS("change")
		if err != nil {
			return err
		}
		pod := ds.Spec.Template.Spec
		if pod.Containers[0].Image != "connscope/connscope:next" || pod.NodeSelector["pool"] != "edge" {
			return fmt.Errorf("DaemonSet image %s, nodeSelector %v", pod.Containers[0].Image, pod.NodeSelector)
		}
		if ds.Spec.Template.Annotations[AnnotationConfigHash] == hash {
			return errors.New("the settings changed but the pod template's hash did not: agents would not restart")
		}
		d, err := getDeployment("change")
		if err != nil {
			return err
		}
		if !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--idle-timeout=5s") {
			return fmt.Errorf("classifier args %v", d.Spec.Template.Spec.Containers[0].Args)
		}
		if v := d.Spec.Template.Spec.Volumes[0]; v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != ClassifierDataName("change") {
			return fmt.Errorf("classifier data volume %+v", v)
		}
		var pvc corev1.PersistentVolumeClaim
		return k8s.Get(ctx, client.ObjectKey{Namespace: DefaultClassifierNamespace, Name: ClassifierDataName("change")}, &pvc)
	})
	wantConditions(t, "change", "False/AgentsRollingOut", "True/AgentsRollingOut", "False/Reconciled")

	// Someone edits a child by hand: the controller puts it back.
	ds, _ := getDS("change")
	ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add = []corev1.Capability{"SYS_ADMIN"}
	if err := k8s.Update(ctx, ds); err != nil {
		t.Fatal(err)
	}
	eventually(t, wait, "DaemonSet restored", func() error {
		ds, err := getDS("change")
		if err != nil {
			return err
		}
		if got := ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add; !slices.Equal(got, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
			return fmt.Errorf("capabilities %v", got)
		}
		return nil
	})
}

func TestStatusFollowsDaemonSetAndDeployment(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "health", nil)
	waitChildren(t, "health")

	// Agents rolled out but one node's agent is not ready: Degraded.
	setDaemonSetStatus(t, "health", 3, 2, 3)
	setDeploymentStatus(t, "health", true)
	p := wantConditions(t, "health", "False/AgentsNotReady", "False/Reconciled", "True/AgentsNotReady")
	if n := p.Status.Nodes; n != (samplingv1alpha1.NodeCounts{Desired: 3, Ready: 2, Updated: 3}) {
		t.Errorf("nodes %+v", n)
	}

	// Every node runs a ready agent and the classifier is available: Ready.
	setDaemonSetStatus(t, "health", 3, 3, 3)
	wantConditions(t, "health", "True/AllAgentsReady", "False/Reconciled", "False/Reconciled")

	// A rollout in progress: Progressing, not Ready.
	setDaemonSetStatus(t, "health", 3, 3, 1)
	wantConditions(t, "health", "False/AgentsRollingOut", "True/AgentsRollingOut", "False/Reconciled")

	// Agents fine, classifier unavailable: not Ready.
	setDaemonSetStatus(t, "health", 3, 3, 3)
	setDeploymentStatus(t, "health", false)
	wantConditions(t, "health", "False/ClassifierNotAvailable", "True/ClassifierNotAvailable", "False/Reconciled")

	// The DaemonSet controller has not seen the latest spec yet.
	setDeploymentStatus(t, "health", true)
	wantConditions(t, "health", "True/AllAgentsReady", "False/Reconciled", "False/Reconciled")
	updatePolicy(t, "health", func(p *samplingv1alpha1.SamplingPolicy) { p.Spec.PacketCap = 5 })
	wantConditions(t, "health", "False/AgentsRollingOut", "True/AgentsRollingOut", "False/Reconciled")

	// Events tell a user what happened.
	eventually(t, wait, "events", func() error {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs); err != nil {
			return err
		}
		reasons := map[string]bool{}
		for _, e := range evs.Items {
			if e.Regarding.Name == "health" && e.Regarding.Kind == "SamplingPolicy" {
				reasons[e.Reason] = true
			}
		}
		for _, r := range []string{"Allocated", ReasonReady, ReasonAgentsNotReady, ReasonAgentsRollingOut} {
			if !reasons[r] {
				return fmt.Errorf("no %s event among %v", r, reasons)
			}
		}
		return nil
	})
}

// An agent pod that cannot run (here crash-looping on an NFLOG group that
// another process holds, then unschedulable) makes the policy Degraded
// with the pod, its node and the agent's own error, both while agents are
// not ready and during a rollout, which a DaemonSet would otherwise show
// as progressing forever (it has no progress deadline).
func TestFailingAgentPodsDegradeWithTheirError(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "crashing", nil)
	waitChildren(t, "crashing")
	setDeploymentStatus(t, "crashing", true)
	setDaemonSetStatus(t, "crashing", 3, 2, 3)
	wantConditions(t, "crashing", "False/AgentsNotReady", "False/Reconciled", "True/AgentsNotReady")

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: AgentName("crashing") + "-b9x2q", Namespace: DefaultAgentNamespace,
			Labels: objectLabels("crashing", ComponentAgent),
		},
		Spec: corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "agent", Image: "connscope/connscope:test"}}},
	}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, pod, client.GracePeriodSeconds(0)) })
	const agentErr = "connscope: NFLOG group 5 is already bound by another process"
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "agent", Image: "connscope/connscope:test", RestartCount: 4,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 1m20s restarting failed container"}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 1, Reason: "Error", Message: `{"level":"INFO","msg":"starting"}` + "\n" + agentErr + "\n",
			}},
		}},
	}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	p := wantConditions(t, "crashing", "False/AgentPodsFailing", "False/Reconciled", "True/AgentPodsFailing")
	msg := meta.FindStatusCondition(p.Status.Conditions, "Degraded").Message
	for _, want := range []string{"1 agent pod(s) cannot run", pod.Name + " on node node-b", "CrashLoopBackOff", "last exit code 1: " + agentErr, "kubectl -n " + DefaultAgentNamespace + " describe pod"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Degraded message lacks %q: %s", want, msg)
		}
	}

	// During a rollout too: still Progressing, and Degraded with the reason.
	setDaemonSetStatus(t, "crashing", 3, 2, 1)
	wantConditions(t, "crashing", "False/AgentPodsFailing", "True/AgentsRollingOut", "True/AgentPodsFailing")

	// A pod the scheduler cannot place.
	pod.Status = corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		Message: "0/3 nodes are available: 3 Insufficient memory.",
	}}}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, wait, "unschedulable named", func() error {
		c := meta.FindStatusCondition(getPolicy(t, "crashing").Status.Conditions, "Degraded")
		if c == nil || !strings.Contains(c.Message, "unschedulable: 0/3 nodes are available: 3 Insufficient memory.") {
			return fmt.Errorf("Degraded %+v", c)
		}
		return nil
	})

	// Fixed: a pod that is starting is no problem; the agents become ready.
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	wantConditions(t, "crashing", "False/AgentsRollingOut", "True/AgentsRollingOut", "False/Reconciled")
	setDaemonSetStatus(t, "crashing", 3, 3, 3)
	wantConditions(t, "crashing", "True/AllAgentsReady", "False/Reconciled", "False/Reconciled")
}

// laggingCache is a client whose reads of the objects given to freeze
// return them as they were then, as an informer cache that has not yet
// seen the latest writes does; everything else goes to the API server.
type laggingCache struct {
	client.Client
	frozen map[string]client.Object
}

func frozenKey(obj client.Object, key client.ObjectKey) string {
	return fmt.Sprintf("%T %s", obj, key)
}

func (c *laggingCache) freeze(objs ...client.Object) {
	c.frozen = map[string]client.Object{}
	for _, o := range objs {
		c.frozen[frozenKey(o, client.ObjectKeyFromObject(o))] = o.DeepCopyObject().(client.Object)
	}
}

func (c *laggingCache) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if o, ok := c.frozen[frozenKey(obj, key)]; ok {
		reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(o.DeepCopyObject()).Elem())
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

// A spec change is not Ready before its agents run, even when the
// controller's cache still holds the DaemonSet and Deployment of the
// previous spec, fully rolled out (the cache lags the apply that just
// changed them): the policy's observedGeneration and conditions move to
// the new generation only as "rolling out". The reconciler runs here
// without a manager, over a client whose reads of the two children lag.
func TestReadyIsNotJudgedFromAStaleCache(t *testing.T) {
	envtestsuite.NeedEnv(t)
	opts := testOptions()
	lag := &laggingCache{Client: k8s}
	r := &SamplingPolicyReconciler{Client: lag, APIReader: k8s, Scheme: testScheme, Recorder: &events.FakeRecorder{}, Options: opts}
	r.alloc = newAllocator(opts.LabelBits, opts.NFLOGGroups)
	reconcileOnce := func() {
		t.Helper()
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: "lag"}}); err != nil {
			t.Fatal(err)
		}
	}
	p := &samplingv1alpha1.SamplingPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "lag"},
		Spec:       samplingv1alpha1.SamplingPolicySpec{Probability: "0.0001"},
	}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lag.freeze()
		_ = k8s.Delete(ctx, p)
		reconcileOnce() // the finalizer: no agent pods here
		for _, o := range childObjects("lag") {
			_ = k8s.Delete(ctx, o)
		}
	})
	ready := func() (*samplingv1alpha1.SamplingPolicy, *metav1.Condition) {
		p := getPolicy(t, "lag")
		return p, meta.FindStatusCondition(p.Status.Conditions, "Ready")
	}

	reconcileOnce()
	setDaemonSetStatus(t, "lag", 1, 1, 1)
	setDeploymentStatus(t, "lag", true)
	reconcileOnce()
	if p, c := ready(); c == nil || c.Status != metav1.ConditionTrue || p.Status.ObservedGeneration != p.Generation {
		t.Fatalf("rolled out: Ready %+v, observedGeneration %d of %d", c, p.Status.ObservedGeneration, p.Generation)
	}

	// The cache keeps the rolled-out children; the spec changes.
	ds, err := getDS("lag")
	if err != nil {
		t.Fatal(err)
	}
	dep, err := getDeployment("lag")
	if err != nil {
		t.Fatal(err)
	}
	lag.freeze(ds, dep)
	updatePolicy(t, "lag", func(p *samplingv1alpha1.SamplingPolicy) { p.Spec.PacketCap = 12 })
	reconcileOnce()
	p, c := ready()
	if p.Status.ObservedGeneration != p.Generation || c.ObservedGeneration != p.Generation {
		t.Fatalf("observedGeneration %d, Ready of generation %d, policy generation %d", p.Status.ObservedGeneration, c.ObservedGeneration, p.Generation)
	}
	if got := condition(p, "Ready") + " " + condition(p, "Progressing"); got != "False/AgentsRollingOut True/AgentsRollingOut" {
		t.Errorf("after a spec change no agent runs yet: Ready, Progressing = %s (%s), want False/AgentsRollingOut True/AgentsRollingOut", got, c.Message)
	}
	if cfg := agentSettings(t, "lag"); cfg.PacketCap != 12 {
		t.Errorf("agent settings not applied: packetCap %d", cfg.PacketCap)
	}
}

func TestAllocationAcrossPolicies(t *testing.T) {
	envtestsuite.NeedEnv(t)
	opts := testOptions() // three label bits, three groups
	c := startController(t, opts)
	names := []string{"alloc-a", "alloc-b", "alloc-c"}
	for _, n := range names {
		newPolicy(t, n, nil)
	}
	got := map[string]Allocation{}
	eventually(t, wait, "three allocations", func() error {
		bits, groups := map[int32]string{}, map[int32]string{}
		for _, n := range names {
			p := getPolicy(t, n)
			if p.Status.LabelBit == nil || p.Status.NFLOGGroup == nil {
				return fmt.Errorf("%s has none yet", n)
			}
			b, g := *p.Status.LabelBit, *p.Status.NFLOGGroup
			if o, dup := bits[b]; dup {
				return fmt.Errorf("%s and %s both hold label bit %d", o, n, b)
			}
			if o, dup := groups[g]; dup {
				return fmt.Errorf("%s and %s both hold group %d", o, n, g)
			}
			if !opts.LabelBits.Contains(b) || !opts.NFLOGGroups.Contains(g) {
				return fmt.Errorf("%s holds %d/%d, outside the ranges", n, b, g)
			}
			bits[b], groups[g] = n, n
			got[n] = Allocation{b, g}
		}
		return nil
	})

	// A fourth finds none free: Degraded, no children.
	newPolicy(t, "alloc-d", nil)
	p := wantConditions(t, "alloc-d", "False/NoLabelBitFree", "False/Reconciled", "True/NoLabelBitFree")
	if c := meta.FindStatusCondition(p.Status.Conditions, "Degraded"); !strings.Contains(c.Message, "every label bit of 16-18 is held by another SamplingPolicy") {
		t.Errorf("Degraded message %q", c.Message)
	}
	if _, err := getDS("alloc-d"); !apierrors.IsNotFound(err) {
		t.Errorf("alloc-d got a DaemonSet without a label bit: %v", err)
	}

	// A restarted controller gives every policy what it had.
	c.restart(t)
	for _, n := range names {
		updatePolicy(t, n, func(p *samplingv1alpha1.SamplingPolicy) { p.Spec.PacketCap = 11 }) // make it reconcile
	}
	for _, n := range names {
		eventually(t, wait, n+" reconciled after restart", func() error {
			if cfg := agentSettings(t, n); cfg.PacketCap != 11 {
				return fmt.Errorf("packetCap %d", cfg.PacketCap)
			}
			p := getPolicy(t, n)
			if (Allocation{*p.Status.LabelBit, *p.Status.NFLOGGroup}) != got[n] {
				return fmt.Errorf("allocation %d/%d, had %+v", *p.Status.LabelBit, *p.Status.NFLOGGroup, got[n])
			}
			return nil
		})
	}

	// Deleting one frees its values for the waiting policy at once.
	if err := k8s.Delete(ctx, getPolicy(t, "alloc-b")); err != nil {
		t.Fatal(err)
	}
	eventually(t, wait, "alloc-d allocated", func() error {
		p := getPolicy(t, "alloc-d")
		if p.Status.LabelBit == nil || p.Status.NFLOGGroup == nil {
			return errors.New("none yet")
		}
		if (Allocation{*p.Status.LabelBit, *p.Status.NFLOGGroup}) != got["alloc-b"] {
			return fmt.Errorf("got %d/%d, alloc-b had %+v", *p.Status.LabelBit, *p.Status.NFLOGGroup, got["alloc-b"])
		}
		return nil
	})
	wantConditions(t, "alloc-d", "False/AgentsRollingOut", "True/AgentsRollingOut", "False/Reconciled")
}

func TestDeletionWaitsForTheAgentsToGo(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "gone", nil)
	eventually(t, wait, "DaemonSet", func() error { _, err := getDS("gone"); return err })

	// An agent pod as the DaemonSet controller would create it.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: AgentName("gone") + "-x7k2p", Namespace: DefaultAgentNamespace,
			Labels: objectLabels("gone", ComponentAgent),
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "connscope/connscope:test"}}},
	}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, pod, client.GracePeriodSeconds(0)) })

	if err := k8s.Delete(ctx, getPolicy(t, "gone")); err != nil {
		t.Fatal(err)
	}
	eventually(t, wait, "DaemonSet deleted first", func() error {
		if _, err := getDS("gone"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("DaemonSet still there (%v)", err)
		}
		return nil
	})
	p := wantConditions(t, "gone", "False/Deleting", "True/Deleting", "False/Reconciled")
	if c := meta.FindStatusCondition(p.Status.Conditions, "Ready"); !strings.Contains(c.Message, "waiting for 1 agent pod(s) to stop and remove their iptables rules") {
		t.Errorf("Ready message %q", c.Message)
	}
	// The policy stays while the agent pod is there.
	time.Sleep(2 * time.Second)
	if p := getPolicy(t, "gone"); !slices.Contains(p.Finalizers, samplingv1alpha1.Finalizer) {
		t.Fatalf("finalizer removed while an agent pod remains: %v", p.Finalizers)
	}
	// The pod goes (its agent removed its rules): so does the policy.
	if err := k8s.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	waitPolicyGone(t, "gone")
}

// A deleted policy does not wait forever for agent pods that no kubelet
// will stop: once a pod's grace period is over and its node is gone or
// not Ready, it counts as gone. Meanwhile the conditions name the nodes
// the deletion waits for, and a pod on a Ready node keeps it waiting.
func TestDeletionDoesNotWaitForAgentsOnLostNodes(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "lost", nil)
	eventually(t, wait, "DaemonSet", func() error { _, err := getDS("lost"); return err })

	// node-ok's kubelet reports; node-silent's stopped reporting
	// (Unknown); node-deleted does not exist.
	for name, ready := range map[string]corev1.ConditionStatus{"node-ok": corev1.ConditionTrue, "node-silent": corev1.ConditionUnknown} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if err := k8s.Create(ctx, n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(ctx, n) })
		now := metav1.Now()
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready, Reason: "Test", LastHeartbeatTime: now, LastTransitionTime: now}}
		if err := k8s.Status().Update(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	var pods []*corev1.Pod
	for _, node := range []string{"node-ok", "node-silent", "node-deleted"} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: AgentName("lost") + "-" + node, Namespace: DefaultAgentNamespace, Labels: objectLabels("lost", ComponentAgent)},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "agent", Image: "connscope/connscope:test"}}},
		}
		if err := k8s.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(ctx, pod, client.GracePeriodSeconds(0)) })
		pods = append(pods, pod)
	}

	if err := k8s.Delete(ctx, getPolicy(t, "lost")); err != nil {
		t.Fatal(err)
	}
	// What the garbage collector does once the DaemonSet is gone: a
	// graceful delete, which only a kubelet completes.
	for _, pod := range pods {
		if err := k8s.Delete(ctx, pod, client.GracePeriodSeconds(2)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, wait, "waiting only for the pod on the Ready node", func() error {
		p := getPolicy(t, "lost")
		c := meta.FindStatusCondition(p.Status.Conditions, "Ready")
		if c == nil || c.Message != "waiting for 1 agent pod(s) to stop and remove their iptables rules, on node(s) node-ok" {
			return fmt.Errorf("Ready %+v", c)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	if p := getPolicy(t, "lost"); !slices.Contains(p.Finalizers, samplingv1alpha1.Finalizer) {
		t.Fatalf("finalizer removed while the agent pod on a Ready node remains: %v", p.Finalizers)
	}
	// node-ok's kubelet confirms: the policy goes, with a warning that
	// names the lost nodes.
	if err := k8s.Delete(ctx, pods[0], client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	waitPolicyGone(t, "lost")
	eventually(t, wait, "warning event", func() error {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == "lost" && e.Reason == "AgentsOnLostNodes" {
				if !strings.Contains(e.Note, "node(s) node-deleted, node-silent ") {
					return fmt.Errorf("event note %q", e.Note)
				}
				return nil
			}
		}
		return errors.New("no AgentsOnLostNodes event")
	})
}

// The ingest token: one per policy, the same in both namespaces, mounted
// into agents and classifier, and never replaced by a reconcile, a spec
// change or a controller restart.
func TestIngestTokenIsSharedMountedAndStable(t *testing.T) {
	envtestsuite.NeedEnv(t)
	c := startController(t, testOptions())
	newPolicy(t, "token", nil)
	var token string
	var versions [2]string
	eventually(t, wait, "token Secrets", func() error {
		a, cl, err := ingestSecrets("token")
		if err != nil {
			return err
		}
		token = string(cl.Data[IngestTokenKey])
		if string(a.Data[IngestTokenKey]) != token {
			return fmt.Errorf("agents' token %q, classifier's %q", a.Data[IngestTokenKey], token)
		}
		versions = [2]string{a.ResourceVersion, cl.ResourceVersion}
		return nil
	})
	if b, err := base64.RawURLEncoding.DecodeString(token); err != nil || len(b) != 32 {
		t.Fatalf("token %q: %d bytes, %v", token, len(b), err)
	}
	p := getPolicy(t, "token")
	a, cl, _ := ingestSecrets("token")
	for _, s := range []*corev1.Secret{a, cl} {
		if !metav1.IsControlledBy(s, p) || s.Type != corev1.SecretTypeOpaque {
			t.Errorf("Secret %s/%s: owners %+v, type %s", s.Namespace, s.Name, s.OwnerReferences, s.Type)
		}
	}
	// Both pods mount it; the agent's settings and the classifier's
	// command line point at it.
	eventually(t, wait, "token mounted", func() error {
		ds, err := getDS("token")
		if err != nil {
			return err
		}
		if err := tokenMount(ds.Spec.Template.Spec, "token", IngestTokenKey, IngestCACertKey); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		d, err := getDeployment("token")
		if err != nil {
			return err
		}
		if err := tokenMount(d.Spec.Template.Spec, "token", IngestTokenKey, IngestTLSCertKey, IngestTLSKeyKey); err != nil {
			return fmt.Errorf("classifier: %w", err)
		}
		if args := d.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--ingest-token-file="+IngestTokenPath) {
			return fmt.Errorf("classifier args %v", args)
		}
		if h := d.Spec.Template.Annotations[AnnotationIngestTokenHash]; h != IngestTokenHash(token) {
			return fmt.Errorf("classifier token hash %q", h)
		}
		return nil
	})
	if f := agentSettings(t, "token").SinkTokenFile; f != IngestTokenPath {
		t.Errorf("agent sinkTokenFile %q", f)
	}

	unchanged := func(when string) {
		t.Helper()
		a, cl, err := ingestSecrets("token")
		if err != nil {
			t.Fatal(err)
		}
		if string(a.Data[IngestTokenKey]) != token || string(cl.Data[IngestTokenKey]) != token {
			t.Fatalf("%s: the token changed", when)
		}
		if got := [2]string{a.ResourceVersion, cl.ResourceVersion}; got != versions {
			t.Errorf("%s: Secrets written again: resourceVersions %v -> %v", when, versions, got)
		}
	}
	setProbability := func(prob string, want float64) {
		t.Helper()
		updatePolicy(t, "token", func(p *samplingv1alpha1.SamplingPolicy) { p.Spec.Probability = prob })
		eventually(t, wait, "settings "+prob, func() error {
			if got := agentSettings(t, "token").Probability; got != want {
				return fmt.Errorf("probability %v", got)
			}
			return nil
		})
	}
	setProbability("0.01", 0.01)
	unchanged("after a spec change")
	c.restart(t)
	setProbability("0.02", 0.02)
	unchanged("after a controller restart")

	// A lost copy comes back with the same token at once: the controller
	// watches its Secrets. Nothing else changes to wake it (the
	// reconciles of the spec change have settled first).
	time.Sleep(2 * time.Second)
	if err := k8s.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: DefaultAgentNamespace, Name: IngestTokenName("token")}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, wait, "agents' Secret recreated", func() error {
		a, _, err := ingestSecrets("token")
		if err != nil {
			return err
		}
		if string(a.Data[IngestTokenKey]) != token {
			return errors.New("recreated with another token")
		}
		return nil
	})
	if d, _ := getDeployment("token"); d.Spec.Template.Annotations[AnnotationIngestTokenHash] != IngestTokenHash(token) {
		t.Error("the classifier's token hash changed")
	}
}

func resourceQuantity(s string) resource.Quantity { return resource.MustParse(s) }

// controllerUser is the controller's ServiceAccount as the API server
// names it.
const controllerUser = "system:serviceaccount:connscope-system:connscope-controller"

// installGeneratedRBAC creates config/rbac's roles, bindings and
// ServiceAccount (the roles generated from the markers) until the test
// ends.
func installGeneratedRBAC(t *testing.T) {
	t.Helper()
	var objs []client.Object
	for _, f := range []string{"role.yaml", "role_binding.yaml", "service_account.yaml"} {
		b, err := os.ReadFile(filepath.Join("..", "config", "rbac", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---") {
			var u unstructured.Unstructured
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			objs = append(objs, &u)
		}
	}
	for _, o := range objs {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatalf("%s %s: %v", o.GetObjectKind().GroupVersionKind().Kind, o.GetName(), err)
		}
		t.Cleanup(func() { _ = k8s.Delete(ctx, o) })
	}
}

// The controller works with nothing but the RBAC that config/rbac grants
// (generated from the markers): it runs here as its ServiceAccount, with
// leader election as `connscope controller --leader-elect` runs it.
func TestControllerRunsWithOnlyItsGeneratedRBAC(t *testing.T) {
	envtestsuite.NeedEnv(t)
	installGeneratedRBAC(t)
	cfg := rest.CopyConfig(testCfg)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: controllerUser}
	old := testCfg
	testCfg = cfg // startController uses it
	startController(t, testOptions(), func(o *ctrl.Options) {
		o.LeaderElection = true
		o.LeaderElectionID = "connscope-controller.sampling.connscope.dev"
		o.LeaderElectionNamespace = DefaultClassifierNamespace
		o.LeaderElectionReleaseOnCancel = true
	})
	testCfg = old
	newPolicy(t, "rbac", func(p *samplingv1alpha1.SamplingPolicy) {
		p.Spec.Sink.Classifier.Storage = &samplingv1alpha1.StorageSpec{Size: resourceQuantity("1Gi")}
	})
	eventually(t, wait, "children created as the ServiceAccount", func() error {
		for _, o := range childObjects("rbac") {
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
				return fmt.Errorf("%T %s: %w", o, o.GetName(), err)
			}
		}
		return nil
	})
	var lease coordinationv1.Lease
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: DefaultClassifierNamespace, Name: "connscope-controller.sampling.connscope.dev"}, &lease); err != nil {
		t.Errorf("leader election Lease: %v", err)
	}
	setDaemonSetStatus(t, "rbac", 1, 1, 1)
	setDeploymentStatus(t, "rbac", true)
	wantConditions(t, "rbac", "True/AllAgentsReady", "False/Reconciled", "False/Reconciled")
	// The deletion (DaemonSet delete, pod list, finalizer removal) runs in
	// newPolicy's cleanup, still as the ServiceAccount.
}

// The generated roles grant what the controller's code uses and nothing
// it does not (the other test proves that this much is enough): asked of
// the API server's authorizer for the controller's ServiceAccount.
func TestControllerRBACGrantsOnlyWhatItsCodeUses(t *testing.T) {
	envtestsuite.NeedEnv(t)
	installGeneratedRBAC(t)
	const (
		sp     = "sampling.connscope.dev"
		agents = DefaultAgentNamespace
		system = DefaultClassifierNamespace
	)
	type access struct{ ns, group, resource, sub, verb string }
	allowed := func(a access) bool {
		t.Helper()
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   controllerUser,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + system, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: a.ns, Group: a.group, Resource: a.resource, Subresource: a.sub, Verb: a.verb,
			},
		}}
		if err := k8s.Create(ctx, sar); err != nil {
			t.Fatal(err)
		}
		return sar.Status.Allowed
	}
	for _, a := range []access{
		{"", sp, "samplingpolicies", "", "get"},
		{"", sp, "samplingpolicies", "", "list"},
		{"", sp, "samplingpolicies", "", "watch"},
		{"", sp, "samplingpolicies", "", "patch"},
		{"", sp, "samplingpolicies", "status", "patch"},
		{"", sp, "samplingpolicies", "finalizers", "update"},
		{"default", "events.k8s.io", "events", "", "create"},
		{"default", "events.k8s.io", "events", "", "patch"},
		{agents, "apps", "daemonsets", "", "delete"},
		{agents, "", "pods", "", "list"},
		{"", "", "nodes", "", "get"},
		{system, "coordination.k8s.io", "leases", "", "get"},
		{system, "coordination.k8s.io", "leases", "", "create"},
		{system, "coordination.k8s.io", "leases", "", "update"},
		{system, "", "events", "", "create"},
		{system, "", "secrets", "", "update"},
		{system, "", "secrets", "", "watch"},
		{agents, "", "secrets", "", "list"},
	} {
		if !allowed(a) {
			t.Errorf("not granted, and the code needs it: %+v", a)
		}
	}
	for _, a := range []access{
		{"", sp, "samplingpolicies", "", "update"},
		{"", sp, "samplingpolicies", "", "create"},
		{"", sp, "samplingpolicies", "", "delete"},
		{"", sp, "samplingpolicies", "status", "get"},
		{"", sp, "samplingpolicies", "status", "update"},
		{system, "coordination.k8s.io", "leases", "", "list"},
		{system, "coordination.k8s.io", "leases", "", "watch"},
		{system, "coordination.k8s.io", "leases", "", "patch"},
		{system, "coordination.k8s.io", "leases", "", "delete"},
		{"", "", "nodes", "", "list"},
		{"", "", "nodes", "", "update"},
		{agents, "", "pods", "", "delete"},
		{system, "apps", "deployments", "", "delete"},
		{system, "", "secrets", "", "delete"},
		{"default", "", "secrets", "", "get"},
	} {
		if allowed(a) {
			t.Errorf("granted, and no code uses it: %+v", a)
		}
	}
}

// A child the API server refuses to change makes the policy Degraded with
// the server's reason, and a fix clears it.
func TestApplyFailureDegrades(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	newPolicy(t, "stuck", func(p *samplingv1alpha1.SamplingPolicy) {
		p.Spec.Sink.Classifier.Storage = &samplingv1alpha1.StorageSpec{Size: resourceQuantity("1Gi"), StorageClassName: ptr.To("slow")}
	})
	eventually(t, wait, "volume claim", func() error {
		return k8s.Get(ctx, client.ObjectKey{Namespace: DefaultClassifierNamespace, Name: ClassifierDataName("stuck")}, &corev1.PersistentVolumeClaim{})
	})
	updatePolicy(t, "stuck", func(p *samplingv1alpha1.SamplingPolicy) {
		p.Spec.Sink.Classifier.Storage.StorageClassName = ptr.To("fast") // immutable in a claim
	})
	p := wantConditions(t, "stuck", "False/ApplyFailed", "False/Reconciled", "True/ApplyFailed")
	if c := meta.FindStatusCondition(p.Status.Conditions, "Degraded"); !strings.Contains(c.Message, "cannot write PersistentVolumeClaim connscope-system/connscope-stuck-classifier-data") ||
		!strings.Contains(c.Message, "immutable") {
		t.Errorf("Degraded message %q", c.Message)
	}
	updatePolicy(t, "stuck", func(p *samplingv1alpha1.SamplingPolicy) {
		p.Spec.Sink.Classifier.Storage.StorageClassName = ptr.To("slow")
	})
	wantConditions(t, "stuck", "False/AgentsRollingOut", "True/AgentsRollingOut", "False/Reconciled")
}

// conditionSeries returns the policy's connscope_samplingpolicy_condition
// series as "condition/status" -> value, read from the controller's
// registry (what /metrics serves).
func conditionSeries(t *testing.T, policy string) map[string]float64 {
	t.Helper()
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "connscope_samplingpolicy_condition" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["policy"] == policy {
				got[l["condition"]+"/"+l["status"]] = m.GetGauge().GetValue()
			}
		}
	}
	return got
}

// The controller's metrics mirror each policy's conditions (1 for the
// status a condition has, 0 for the others), follow them, and go with the
// policy.
func TestConditionsMetric(t *testing.T) {
	envtestsuite.NeedEnv(t)
	startController(t, testOptions())
	p := newPolicy(t, "gauge", nil)
	waitChildren(t, "gauge")
	want := func(ready string) {
		t.Helper()
		eventually(t, wait, "Ready="+ready+" in the metric", func() error {
			got := conditionSeries(t, "gauge")
			for _, typ := range []string{"Ready", "Progressing", "Degraded"} {
				c := meta.FindStatusCondition(getPolicy(t, "gauge").Status.Conditions, typ)
				if c == nil {
					return fmt.Errorf("no %s condition yet", typ)
				}
				for _, s := range []string{"True", "False", "Unknown"} {
					v, ok := got[typ+"/"+s]
					if !ok {
						return fmt.Errorf("no series for %s/%s in %v", typ, s, got)
					}
					if w := map[bool]float64{true: 1, false: 0}[string(c.Status) == s]; v != w {
						return fmt.Errorf("%s/%s = %v, the policy has %s=%s", typ, s, v, typ, c.Status)
					}
				}
			}
			if got["Ready/"+ready] != 1 {
				return fmt.Errorf("Ready/%s = %v", ready, got["Ready/"+ready])
			}
			return nil
		})
	}
	setDaemonSetStatus(t, "gauge", 2, 2, 2)
	setDeploymentStatus(t, "gauge", true)
	want("True")
	setDaemonSetStatus(t, "gauge", 2, 1, 2)
	want("False")

	if err := k8s.Delete(ctx, p); err != nil {
		t.Fatal(err)
	}
	eventually(t, wait, "series gone with the policy", func() error {
		if got := conditionSeries(t, "gauge"); len(got) != 0 {
			return fmt.Errorf("still %v", got)
		}
		return nil
	})
}
