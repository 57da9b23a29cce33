package controllers

import (
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

// Reasons of the conditions.
const (
	ReasonReady              = "AllAgentsReady"
	ReasonNoNodes            = "NoNodesSelected"
	ReasonAgentsRollingOut   = "AgentsRollingOut"
	ReasonAgentsNotReady     = "AgentsNotReady"
	ReasonAgentPodsFailing   = "AgentPodsFailing"
	ReasonClassifierNotReady = "ClassifierNotAvailable"
	ReasonClassifierStalled  = "ClassifierRolloutStalled"
	ReasonLabelBitExhausted  = "NoLabelBitFree"
	ReasonGroupExhausted     = "NoNFLOGGroupFree"
	ReasonInvalidSettings    = "InvalidSettings"
	ReasonApplyFailed        = "ApplyFailed"
	ReasonDeleting           = "Deleting"
	ReasonReconciled         = "Reconciled"
	ReasonPending            = "Pending"
)

// health is the state of a policy's children, folded into conditions.
type health struct {
	ready, progressing, degraded bool
	readyReason, readyMsg        string
	progReason, progMsg          string
	degrReason, degrMsg          string
}

// daemonSetRolledOut reports whether the DaemonSet controller has seen the
// current spec and every selected node runs the current agent, as
// `kubectl rollout status` judges it.
func daemonSetRolledOut(ds *appsv1.DaemonSet) bool {
	s := ds.Status
	return s.ObservedGeneration >= ds.Generation &&
		s.UpdatedNumberScheduled >= s.DesiredNumberScheduled
}

// deploymentAvailable reports whether the Deployment controller has seen
// the current spec and at least the wanted replicas are available.
func deploymentAvailable(d *appsv1.Deployment) (available, rolledOut, stalled bool) {
	s := d.Status
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	observed := s.ObservedGeneration >= d.Generation
	rolledOut = observed && s.UpdatedReplicas >= want && s.Replicas == s.UpdatedReplicas
	for _, c := range s.Conditions {
		if c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue && s.AvailableReplicas >= want {
			available = observed
		}
		if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
			stalled = true
		}
	}
	return available, rolledOut, stalled
}

// childHealth judges the agents' DaemonSet and the classifier's
// Deployment (either may be nil when not found yet).
func childHealth(ds *appsv1.DaemonSet, dep *appsv1.Deployment) health {
	var h health
	switch {
	case ds == nil || ds.Status.ObservedGeneration < ds.Generation || ds.Status.ObservedGeneration == 0:
		h.progressing, h.progReason, h.progMsg = true, ReasonAgentsRollingOut, "waiting for the DaemonSet controller to schedule the agents"
	case !daemonSetRolledOut(ds):
		s := ds.Status
		h.progressing, h.progReason = true, ReasonAgentsRollingOut
		h.progMsg = fmt.Sprintf("%d of %d nodes run the current agent", s.UpdatedNumberScheduled, s.DesiredNumberScheduled)
	case ds.Status.NumberReady < ds.Status.DesiredNumberScheduled:
		s := ds.Status
		h.degraded, h.degrReason = true, ReasonAgentsNotReady
		h.degrMsg = fmt.Sprintf("%d of %d nodes have no ready agent; see the agent pods' events and logs in namespace %s", s.DesiredNumberScheduled-s.NumberReady, s.DesiredNumberScheduled, ds.Namespace)
	}
	clsReady := false
	switch {
	case dep == nil:
		h.progressing = true
		if h.progReason == "" {
			h.progReason, h.progMsg = ReasonPending, "waiting for the classifier Deployment"
		}
	default:
		available, rolledOut, stalled := deploymentAvailable(dep)
		clsReady = available
		if stalled {
			h.degraded, h.degrReason = true, ReasonClassifierStalled
			h.degrMsg = fmt.Sprintf("the classifier Deployment %s/%s exceeded its progress deadline", dep.Namespace, dep.Name)
		} else if !rolledOut || !available {
			h.progressing = true
			if h.progReason == "" {
				h.progReason = ReasonClassifierNotReady
				h.progMsg = fmt.Sprintf("%d of %d classifier replicas available", dep.Status.AvailableReplicas, ptrOr(dep.Spec.Replicas, 1))
			}
		}
	}

	agentsReady := ds != nil && ds.Status.ObservedGeneration >= ds.Generation && ds.Status.ObservedGeneration > 0 &&
		daemonSetRolledOut(ds) && ds.Status.NumberReady >= ds.Status.DesiredNumberScheduled
	switch {
	case agentsReady && clsReady:
		h.ready, h.readyReason = true, ReasonReady
		h.readyMsg = fmt.Sprintf("%d of %d nodes run a ready agent; the classifier is available", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
		if ds.Status.DesiredNumberScheduled == 0 {
			h.readyReason, h.readyMsg = ReasonNoNodes, "no node matches the policy's nodeSelector and tolerations; the classifier is available"
		}
	case !agentsReady:
		h.readyReason, h.readyMsg = ReasonAgentsNotReady, "not every selected node runs a ready agent of the current settings"
		if h.progressing && h.progReason == ReasonAgentsRollingOut {
			h.readyReason, h.readyMsg = ReasonAgentsRollingOut, h.progMsg
		}
	default:
		h.readyReason, h.readyMsg = ReasonClassifierNotReady, "the classifier is not available"
	}
	return h
}

// agentsPending reports whether some selected node does not yet run a
// ready agent of the current settings (a rollout in progress or agents
// not ready): then the agent pods are worth a look (agentPodsFailing).
func agentsPending(ds *appsv1.DaemonSet) bool {
	return ds != nil && (!daemonSetRolledOut(ds) || ds.Status.NumberReady < ds.Status.DesiredNumberScheduled)
}

// failingWaitReasons are the reasons of a waiting container that waiting
// does not cure: the kubelet backs off and tries again, and the pod stays
// unready until someone changes something (the image, the policy, the
// node).
var failingWaitReasons = map[string]bool{
	"CrashLoopBackOff": true, "ImagePullBackOff": true, "ErrImagePull": true, "InvalidImageName": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
}

// podProblem says why an agent pod cannot run (a container waiting for a
// reason in failingWaitReasons, with its last exit and the last line of
// its termination message, which holds the agent's error; a pod the
// scheduler cannot place; a failed pod), or "" when nothing says it cannot
// (it may be starting).
func podProblem(pod *corev1.Pod) string {
	where := fmt.Sprintf("pod %s", pod.Name)
	if pod.Spec.NodeName != "" {
		where += " on node " + pod.Spec.NodeName
	}
	if pod.DeletionTimestamp != nil {
		return ""
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return fmt.Sprintf("%s: unschedulable: %s", where, clip(c.Message))
		}
	}
	if pod.Status.Phase == corev1.PodFailed {
		return fmt.Sprintf("%s: failed: %s %s", where, pod.Status.Reason, clip(pod.Status.Message))
	}
	for _, cs := range append(slices.Clone(pod.Status.InitContainerStatuses), pod.Status.ContainerStatuses...) {
		w := cs.State.Waiting
		if w == nil || !failingWaitReasons[w.Reason] {
			continue
		}
		msg := fmt.Sprintf("%s: container %s: %s", where, cs.Name, w.Reason)
		if w.Message != "" && w.Reason != "CrashLoopBackOff" { // the back-off message only repeats the pod's name
			msg += ": " + clip(w.Message)
		}
		if t := cs.LastTerminationState.Terminated; t != nil {
			msg += fmt.Sprintf(" (last exit code %d", t.ExitCode)
			if line := lastLine(t.Message); line != "" {
				msg += ": " + clip(line)
			}
			msg += ")"
		}
		return msg
	}
	return ""
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// clip shortens s to a length a condition's message can carry for
// several pods.
func clip(s string) string {
	const max = 300
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// failingAgents folds the problems of agent pods (podProblem, at most the
// first two named) into h: Degraded, and not Ready, with
// ReasonAgentPodsFailing, instead of the bare counts of AgentsNotReady or
// a rollout that would otherwise seem to progress forever (a DaemonSet
// has no progress deadline).
func (h *health) failingAgents(problems []string, namespace string) {
	if len(problems) == 0 || h.ready || (h.degraded && h.degrReason != ReasonAgentsNotReady) {
		return
	}
	shown := problems[:min(2, len(problems))]
	msg := fmt.Sprintf("%d agent pod(s) cannot run: %s", len(problems), strings.Join(shown, "; "))
	if len(problems) > len(shown) {
		msg += "; …"
	}
	msg += fmt.Sprintf(" (kubectl -n %s describe pod, and the pod's logs)", namespace)
	h.degraded, h.degrReason, h.degrMsg = true, ReasonAgentPodsFailing, msg
	h.readyReason, h.readyMsg = ReasonAgentPodsFailing, msg
}

func ptrOr(p *int32, def int32) int32 {
	if p == nil {
		return def
	}
	return *p
}

// setConditions writes the three conditions for generation gen, and gen
// as the status's observedGeneration: the two move together, so that a
// reader of observedGeneration (kstatus, Flux, Argo CD) never takes
// conditions of an older spec for the current one's.
func setConditions(st *samplingv1alpha1.SamplingPolicyStatus, gen int64, h health) {
	st.ObservedGeneration = gen
	b := func(v bool) metav1.ConditionStatus {
		if v {
			return metav1.ConditionTrue
		}
		return metav1.ConditionFalse
	}
	orDefault := func(reason, def string) string {
		if reason == "" {
			return def
		}
		return reason
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: samplingv1alpha1.ConditionReady, Status: b(h.ready), ObservedGeneration: gen,
		Reason: orDefault(h.readyReason, ReasonPending), Message: h.readyMsg,
	})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: samplingv1alpha1.ConditionProgressing, Status: b(h.progressing), ObservedGeneration: gen,
		Reason: orDefault(h.progReason, ReasonReconciled), Message: orMsg(h.progMsg, h.progressing, "the agents and the classifier run the current settings"),
	})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: samplingv1alpha1.ConditionDegraded, Status: b(h.degraded), ObservedGeneration: gen,
		Reason: orDefault(h.degrReason, ReasonReconciled), Message: orMsg(h.degrMsg, h.degraded, "no problem found"),
	})
}

func orMsg(msg string, set bool, def string) string {
	if msg == "" && !set {
		return def
	}
	return msg
}
